"""The results schema (tidy: one row per measured value) and the append-only record store.

A run writes ``<records>/<run_id>.csv`` (rows) and ``<records>/<run_id>.json`` (resolved config and
environment). Rows are appended one whole line at a time with flush+fsync, so a crash never leaves
a half-written row; a torn last line from a killed writer is detected and repaired on the next open.
Paper numbers use the same schema with ``source = "paper"``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

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
}
COLUMNS = tuple(SCHEMA)
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
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ResultsSchemaError(f"{where}: missing columns {missing}; the schema is {list(COLUMNS)}")
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
    return out


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
    """A full schema row: given fields, the rest empty. Unknown fields raise."""
    unknown = set(fields) - set(SCHEMA)
    if unknown:
        raise ResultsSchemaError(f"unknown result fields {sorted(unknown)}; the schema is {list(COLUMNS)}")
    row = dict.fromkeys(COLUMNS)
    row.update(fields)
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
        """Drop a trailing partial line (a writer killed mid-write) so the file stays valid."""
        if not self.csv_path.exists():
            return
        data = self.csv_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            with open(self.csv_path, "wb") as f:
                f.write(keep)
                f.flush()
                os.fsync(f.fileno())

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
        validate(pd.DataFrame(rows, columns=list(COLUMNS)), where=f"rows for {self.csv_path}")
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
