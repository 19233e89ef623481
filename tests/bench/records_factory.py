"""Hand-made records for table, plot and regression tests (no sampling)."""

from __future__ import annotations

import pandas as pd

from cmdbench.bench.results import make_row, validate


def record(**kw) -> dict:
    base = {"run_id": "r", "created_utc": "2026-01-01T00:00:00Z", "source": "measured", "git_sha": "a" * 40,
            "generator": "gen-a", "metric": "sampling_time", "value": 1.0, "unit": "s", "higher_is_better": False,
            "num_frames": 16, "height": 64, "width": 64, "dataset": "UCF-101", "config_hash": "h-a"}
    base.update(kw)
    return make_row(**base)


def frame(*rows: dict) -> pd.DataFrame:
    return validate(pd.DataFrame(list(rows)))
