"""Transcribe the CMD paper's reported numbers into the results schema (``results/paper/cmd_arxiv_v1.csv``).

Source: ``../shared/reference/paper_numbers.csv`` (columns ``table, setting, method, metric, value, unit,
higher_is_better, source_note``; one row per printed number of arXiv:2403.14148 v1). The output is
committed, so nothing reads the source at run time; re-run after the source changes::

    python -m cmdbench.bench.paper_numbers [--source PATH] [--out PATH]

Mapping, row by row (nothing dropped or merged):

* ``generator`` = the method as printed (``"CMD"``, ``"ModelScope"``, ``"CMD autoencoder"``...);
  ``protocol`` = the table (``"Table 9"``); ``notes`` = ``setting: ...; <source note>``.
* ``metric`` keeps the source name, except ``tflops`` -> ``tmacs_paper``: CMD's "TFLOPs" are fvcore
  multiply-accumulates (``reference/baselines.md`` §4.1), the quantity cmdbench measures under that name.
* frames/height/width from ``HxWxT`` in the setting, ``steps`` from ``DDIM N steps``, ``batch_size``
  from ``batch N``, ``guidance_scale`` from ``cfg=X``, ``device_name`` from ``A100 40GB/80GB``,
  ``dtype`` float16 where the setting says fp16, ``dataset`` from the dataset named in the setting.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from cmdbench.bench.results import COLUMNS, validate, write_table_csv

RUN_ID = "paper-cmd-arxiv-v1"
CREATED_UTC = "2024-03-21T00:00:00Z"  # arXiv v1 submission date
DEFAULT_SOURCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "paper_numbers.csv"
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "results" / "paper" / "cmd_arxiv_v1.csv"
METRIC_RENAMES = {"tflops": "tmacs_paper"}
SOURCE_COLUMNS = ("table", "setting", "method", "metric", "value", "unit", "higher_is_better", "source_note")
DATASETS = (("UCF-101", "UCF-101"), ("MSR-VTT", "MSR-VTT"), ("WebVid-10M", "WebVid-10M"))


def _search_int(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


def transcribe_row(src: pd.Series) -> dict:
    """One source row -> one schema row."""
    setting = str(src["setting"])
    size = re.search(r"(\d+)x(\d+)x(\d+)", setting)
    cfg = re.search(r"cfg=([\d.]+)", setting)
    device = re.search(r"A100 \d+GB", setting)
    hib = src["higher_is_better"]
    return {
        "run_id": RUN_ID, "created_utc": CREATED_UTC, "source": "paper", "generator": src["method"],
        "dataset": next((name for key, name in DATASETS if key in setting), None),
        "protocol": src["table"], "metric": METRIC_RENAMES.get(src["metric"], src["metric"]),
        "value": float(src["value"]), "unit": None if pd.isna(src["unit"]) else src["unit"],
        "higher_is_better": None if pd.isna(hib) or str(hib).strip() == "" else str(hib).strip().lower() == "true",
        "height": int(size.group(1)) if size else None, "width": int(size.group(2)) if size else None,
        "num_frames": int(size.group(3)) if size else None,
        "steps": _search_int(r"DDIM (\d+) steps", setting), "batch_size": _search_int(r"batch (\d+)", setting),
        "guidance_scale": float(cfg.group(1)) if cfg else None,
        "dtype": "float16" if "fp16" in setting else None,
        "device_name": f"NVIDIA {device.group(0)}" if device else None,
        "notes": f"setting: {setting}; {src['source_note']}",
    }


def transcribe(source: str | Path = DEFAULT_SOURCE) -> pd.DataFrame:
    """Read the reference CSV and return the validated schema frame (same row order)."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"paper numbers source {source} does not exist; pass --source PATH")
    src = pd.read_csv(source, dtype=str, keep_default_na=False, na_values=[""])
    missing = [c for c in SOURCE_COLUMNS if c not in src.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; expected {list(SOURCE_COLUMNS)}")
    rows = [transcribe_row(r) for _, r in src.iterrows()]
    return validate(pd.DataFrame(rows).reindex(columns=list(COLUMNS)), where=str(source))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    df = transcribe(args.source)
    write_table_csv(df, args.out)
    print(f"wrote {len(df)} paper rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
