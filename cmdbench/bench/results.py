"""The results schema (tidy: one row per measured value) and the append-only record store.

A run writes ``<records>/<run_id>.csv`` (rows) and ``<records>/<run_id>.json`` (resolved config and
environment). Rows are appended one whole line at a time with flush+fsync, so a crash never leaves
a half-written row; a torn last line from a killed writer is detected and repaired on the next open.
Paper numbers use the same schema with ``source = "paper"``.

Raw repeats. A repeated measurement keeps every raw value in the ``values`` column (a JSON list of
numbers in the row's unit, e.g. ``[0.512, 0.498, 0.507]``): ``value`` is their median, ``std`` their sample
standard deviation and ``n`` their count. The regression gate (:mod:`cmdbench.bench.regression`) needs the
raw values to judge whether two timings differ; ``values`` is the last column, so files written before it
existed still read (the column is then empty).

Identity. :func:`config_hash` is the one function that builds a row's ``config_hash``: every producer
(``cmdbench bench``, ``cmdbench evaluate``, the regression suite) calls it, so two rows with the same hash
measured the same thing under the same protocol and may be compared.

pandas is needed to read and validate tables, not to write rows: on an interpreter without it (the GPU
check's bare machine) :class:`RecordWriter` checks each row's required fields and numbers by hand.
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import io
import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

try:
    import pandas as pd
except ModuleNotFoundError:  # the GPU check's bare interpreter: rows are written, not read (module docstring)
    pd = None

# column -> pandas dtype. Order is the CSV column order.
SCHEMA: dict[str, str] = {
    "run_id": "string",
    "created_utc": "string",
    "source": "string",            # measured | paper
    "git_sha": "string",
    "git_dirty": "boolean",
    "generator": "string",
    "checkpoint": "string",
    "checkpoint_sha": "string",
    "conditioning": "string",
    "dataset": "string",
    "protocol": "string",
    "metric": "string",
    "value": "float64",
    "std": "float64",
    "n": "Int64",
    "unit": "string",
    "higher_is_better": "boolean",
    "num_frames": "Int64",
    "height": "Int64",
    "width": "Int64",
    "steps": "Int64",
    "guidance_scale": "float64",
    "batch_size": "Int64",
    "dtype": "string",
    "seeds": "string",
    "device_name": "string",
    "torch_version": "string",
    "cuda_version": "string",
    "config_hash": "string",
    "notes": "string",
    "values": "string",            # JSON list of the raw repeats (row's unit); empty for single values
}
COLUMNS = tuple(SCHEMA)
# Columns a file written before they existed may lack (read as empty).
OPTIONAL = ("values",)
REQUIRED = ("run_id", "source", "generator", "metric", "value")
SOURCES = ("measured", "paper")
# Columns that, with the metric, define whether two rows measured the same thing.
COMPARABLE_FIELDS = ("source", "generator", "checkpoint", "checkpoint_sha", "dataset", "protocol",
                     "num_frames", "height", "width", "steps", "guidance_scale", "batch_size", "dtype",
                     "seeds", "device_name")


class ResultsSchemaError(ValueError):
    """A results table or file that does not follow :data:`SCHEMA`."""


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def validate(df: pd.DataFrame, *, where: str = "results") -> pd.DataFrame:
    """Check columns and types; return a copy with :data:`SCHEMA` dtypes and column order.

    Missing columns, unknown columns, empty required fields, values that do not convert to the column's
    type and unknown ``source`` values raise :class:`ResultsSchemaError` naming the column and row.
    """
    missing = [c for c in COLUMNS if c not in df.columns and c not in OPTIONAL]
    if missing:
        raise ResultsSchemaError(f"{where}: missing columns {missing}; the schema is {list(COLUMNS)}")
    df = df.assign(**{c: pd.NA for c in OPTIONAL if c not in df.columns})
    extra = [c for c in df.columns if c not in SCHEMA]
    if extra:
        raise ResultsSchemaError(f"{where}: unknown columns {extra}; the schema is {list(COLUMNS)}")
    out = pd.DataFrame(index=df.index)
    for col, dtype in SCHEMA.items():
        s = df[col]
        try:
            if dtype == "boolean":
                s = s.map(_to_bool, na_action="ignore").astype("boolean")
            elif dtype in ("float64", "Int64"):
                num = pd.to_numeric(s, errors="coerce")
                bad = num.isna() & s.notna() & (s.astype("string").str.strip() != "")
                if bad.any():
                    i = bad.idxmax()
                    raise ResultsSchemaError(
                        f"{where}: column {col!r} row {i} holds {s[i]!r}, which is not a number"
                    )
                if dtype == "Int64":
                    frac = num.notna() & (num != num.round())
                    if frac.any():
                        i = frac.idxmax()
                        raise ResultsSchemaError(f"{where}: column {col!r} row {i} holds {s[i]!r}, not an integer")
                s = num.astype(dtype)
            else:
                s = s.astype("string")
        except (TypeError, ValueError) as err:
            if isinstance(err, ResultsSchemaError):
                raise
            raise ResultsSchemaError(f"{where}: column {col!r} cannot be read as {dtype}: {err}") from None
        out[col] = s
    for col in REQUIRED:
        empty = out[col].isna()
        if col != "value":
            empty |= out[col].astype("string").str.strip().eq("").fillna(False)
        if empty.any():
            raise ResultsSchemaError(f"{where}: required column {col!r} is empty in row {empty.idxmax()}")
    bad_src = ~out["source"].isin(SOURCES)
    if bad_src.any():
        i = bad_src.idxmax()
        raise ResultsSchemaError(f"{where}: source {out['source'][i]!r} in row {i}; allowed {SOURCES}")
    for i, text in out["values"].items():
        if pd.notna(text):
            try:
                decode_values(text)
            except ValueError as err:
                raise ResultsSchemaError(f"{where}: column 'values' row {i}: {err}") from None
    return out


# --- Raw repeats ------------------------------------------------------------------------------------------


def encode_values(values: Any) -> str | None:
    """Raw repeats -> the ``values`` cell: a JSON list of floats (exact repr), ``None`` for no values."""
    if values is None:
        return None
    if isinstance(values, str):
        decode_values(values)  # already encoded: check it
        return values
    floats = [float(v) for v in values]
    if not floats:
        return None
    if not all(math.isfinite(v) for v in floats):
        raise ResultsSchemaError(f"raw values {floats} hold NaN or inf; record a failure as its own row")
    return "[" + ", ".join(repr(v) for v in floats) + "]"


def decode_values(text: Any) -> tuple[float, ...]:
    """The ``values`` cell -> a tuple of floats (empty for an empty cell); malformed text raises ValueError."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or (pd is not None and text is pd.NA):
        return ()
    text = str(text).strip()
    if not text:
        return ()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{text[:60]!r} is not a JSON list of numbers") from None
    if not isinstance(data, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in data):
        raise ValueError(f"{text[:60]!r} is not a JSON list of numbers")
    return tuple(float(v) for v in data)


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{v!r} is not a boolean (true/false)")


def make_row(**fields: Any) -> dict[str, Any]:
    """A full schema row: given fields, the rest empty. Unknown fields raise.

    ``values`` may be given as a sequence of numbers (the raw repeats); it is stored as JSON text.
    """
    unknown = set(fields) - set(SCHEMA)
    if unknown:
        raise ResultsSchemaError(f"unknown result fields {sorted(unknown)}; the schema is {list(COLUMNS)}")
    row = dict.fromkeys(COLUMNS)
    row.update(fields)
    row["values"] = encode_values(row["values"])
    return row


def _format(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


class RecordWriter:
    """Append-only CSV of one run: ``<dir>/<run_id>.csv`` plus ``<dir>/<run_id>.json`` (config + env)."""

    def __init__(self, directory: str | Path, run_id: str) -> None:
        self.directory = Path(directory)
        self.run_id = run_id
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PermissionError(f"record directory {self.directory} cannot be created: {err}") from None
        if not os.access(self.directory, os.W_OK):
            raise PermissionError(
                f"record directory {self.directory} is not writable; pass a writable --records directory"
            )
        self.csv_path = self.directory / f"{run_id}.csv"
        self.meta_path = self.directory / f"{run_id}.json"
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        """Drop a trailing partial line (a writer killed mid-write) so the file stays valid; a file
        written before the optional columns existed gets them (empty) so appended rows line up."""
        if not self.csv_path.exists():
            return
        data = self.csv_path.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            _atomic_bytes(self.csv_path, data)
        header = data.split(b"\n", 1)[0].decode().split(",") if data else []
        short = [c for c in COLUMNS if c not in header]
        if header and short:
            if header + short != list(COLUMNS):
                raise ResultsSchemaError(f"{self.csv_path}: header {header} is not a prefix of the schema "
                                         f"{list(COLUMNS)}; cannot append to it")
            pad = "," * len(short)
            lines = data.decode().splitlines()
            text = "\n".join([",".join(COLUMNS)] + [line + pad for line in lines[1:]]) + "\n"
            _atomic_bytes(self.csv_path, text.encode())

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        """Write the resolved config + environment JSON atomically (temp file, then rename)."""
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        tmp.replace(self.meta_path)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Validate and append rows; each row is written as one line, flushed and fsynced."""
        rows = [make_row(**dict(r)) for r in rows]
        if not rows:
            return 0
        if pd is not None:
            validate(pd.DataFrame(rows, columns=list(COLUMNS)), where=f"rows for {self.csv_path}")
        else:
            _check_rows_without_pandas(rows, where=f"rows for {self.csv_path}")
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if new:
            writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([_format(r[c]) for c in COLUMNS])
        with open(self.csv_path, "a", encoding="utf-8") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        return len(rows)

    def existing(self) -> pd.DataFrame:
        """Rows already recorded by this run (empty frame if none)."""
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return pd.DataFrame(columns=list(COLUMNS))
        return read_csv(self.csv_path)


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _check_rows_without_pandas(rows: list[dict[str, Any]], *, where: str) -> None:
    """Required fields present, numbers numeric, ``source`` known: what :func:`validate` checks first."""
    for i, r in enumerate(rows):
        for col in REQUIRED:
            if r[col] is None or (col != "value" and not str(r[col]).strip()):
                raise ResultsSchemaError(f"{where}: required column {col!r} is empty in row {i}")
        for col, dtype in SCHEMA.items():
            if dtype in ("float64", "Int64") and r[col] is not None and r[col] != "":
                try:
                    float(r[col])
                except (TypeError, ValueError):
                    raise ResultsSchemaError(f"{where}: column {col!r} row {i} holds {r[col]!r}, "
                                             "which is not a number") from None
        if r["source"] not in SOURCES:
            raise ResultsSchemaError(f"{where}: source {r['source']!r} in row {i}; allowed {SOURCES}")


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read and validate one records CSV."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise ResultsSchemaError(f"{path}: empty results file (no header)") from None
    except pd.errors.ParserError as err:
        raise ResultsSchemaError(f"{path}: not a valid CSV: {err}") from None
    return validate(df, where=str(path))


def load_records(*paths: str | Path) -> pd.DataFrame:
    """Load every ``*.csv`` under the given files/directories (recursively) into one validated frame."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(p.rglob("*.csv")))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"results path {p} does not exist")
    frames = [read_csv(f) for f in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return validate(pd.DataFrame(columns=list(COLUMNS)))
    return pd.concat(frames, ignore_index=True)


def write_table_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a whole validated frame to ``path`` atomically (for ``results/paper`` and references)."""
    df = validate(df, where=str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    out = df.copy()
    for col in ("git_dirty", "higher_is_better"):
        out[col] = out[col].map(lambda v: "" if pd.isna(v) else ("true" if v else "false")).astype("string")
    out.to_csv(tmp, index=False, float_format=None)
    tmp.replace(path)
    return path


# --- What a metric is, by name ------------------------------------------------------------------------------

# First matching glob wins. "timed": wall-clock seconds, noisy, gated statistically on raw repeats;
# "memory": a measured peak (allocator or RSS), noisy, gated like timings; "exact": deterministic figures
# (FLOP/MAC counts, parameters, predicted memory and time, flags), gated exactly; anything else is a
# "quality" figure (FVD, CLIPSIM, ...) computed on a set of generated videos.
METRIC_KINDS: tuple[tuple[str, str], ...] = (
    ("predicted_*", "exact"),
    ("sampling_time*", "timed"),
    ("stage_time/*", "timed"),
    ("time_per_step*", "timed"),
    ("kernel_time/*", "timed"),
    ("calibration_time*", "timed"),
    ("*cpu_time*", "timed"),          # CPU-time twins of the timed figures (regression suite)
    ("throughput/*", "timed"),        # items per second (higher is better, from the row)
    ("latency*", "timed"),
    ("peak_memory*", "memory"),
    ("*macs*", "exact"),
    ("*flops*", "exact"),
    ("params*", "exact"),
    ("train_params/*", "exact"),
    ("out_of_memory", "exact"),
    ("unsupported", "exact"),
)
COST_KINDS = ("timed", "memory", "exact")


def metric_kind(metric: str) -> str:
    """``"timed"``, ``"memory"``, ``"exact"`` or ``"quality"`` for a metric name (:data:`METRIC_KINDS`)."""
    for pattern, kind in METRIC_KINDS:
        if fnmatch.fnmatchcase(metric, pattern):
            return kind
    return "quality"


# --- Identity: what makes two numbers comparable ------------------------------------------------------------

# Row fields that fix the measured setting, whatever the metric.
SETTING_FIELDS = ("generator", "checkpoint", "checkpoint_sha", "conditioning", "dataset", "num_frames", "height",
                  "width", "steps", "guidance_scale", "batch_size", "dtype")
# Keys of ``MetricValue.extra`` that say what a value was computed with or against: the FVD protocol's hash,
# the real-set statistics key and the feature extractor's checksum; CLIP's weight checksum.
PROVENANCE_KEYS = ("protocol_hash", "reference_key", "extractor_checksum", "weights_sha256", "storage")
# Environment flags that change numerics on the same device (capture_environment's keys).
NUMERIC_FLAGS = ("tf32_matmul", "tf32_cudnn", "float32_matmul_precision")


def device_class(device: str) -> str:
    """``"cuda:1"`` -> ``"cuda"``; ``"cpu"``, ``"meta"`` unchanged."""
    return str(device).split(":", 1)[0].strip().lower() or "cpu"


def config_hash(row: Mapping[str, Any], environment: Mapping[str, Any], *,
                extra: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None,
                samples: Mapping[str, Any] | None = None) -> str:
    """The ``config_hash`` of a result row: a hash of everything that makes two numbers comparable.

    In the hash:
      * the setting (:data:`SETTING_FIELDS` of ``row``), ``row["metric"]`` and ``row["protocol"]``;
      * the provenance of the value, from ``extra`` (a ``MetricValue.extra``): extractor checksum,
        reference-statistics key, protocol hash, CLIP weights checksum (:data:`PROVENANCE_KEYS`);
      * from ``environment`` (:func:`cmdbench.env.capture_environment`): the device class (cpu, cuda,
        meta) and the numeric flags (TF32 for matmul and cuDNN, float32 matmul precision);
      * ``context``: anything else the producer knows changes the number (e.g. ``tiny``, metric options);
      * for quality metrics only, which videos were scored: ``row["seeds"]`` and ``samples`` (prompts,
        labels). A cost figure (time, memory, counts; :func:`metric_kind`) does not depend on the seeds,
        so two timings of the same setting pair whatever seed range each run drew.

    Not in the hash: the concrete device (CPU model, GPU, threads, torch and BLAS build) -- that is the
    device key (:func:`cmdbench.env.device_key`), compared apart so a number from another machine reads
    "incomparable" instead of vanishing as "missing"/"new"; run ids, dates, git state, values.
    """
    metric = str(row["metric"])
    identity: dict[str, Any] = {k: row.get(k) for k in SETTING_FIELDS}
    identity.update(metric=metric, protocol=row.get("protocol") or "",
                    device_class=device_class(environment.get("device", "cpu")),
                    flags={k: environment.get(k) for k in NUMERIC_FLAGS})
    provenance = {k: extra[k] for k in PROVENANCE_KEYS if extra and extra.get(k) is not None}
    if provenance:
        identity["provenance"] = provenance
    if context:
        identity["context"] = dict(context)
    if metric_kind(metric) not in COST_KINDS:
        identity["seeds"] = row.get("seeds")
        if samples:
            identity["samples"] = dict(samples)
    from cmdbench.config import stable_hash

    return stable_hash(identity)
