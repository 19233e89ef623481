"""The committed paper numbers equal a fresh transcription of the reference CSV, row by row."""

from __future__ import annotations

import pandas as pd
import pytest

from cmdbench.bench.paper_numbers import DEFAULT_OUT, DEFAULT_SOURCE, transcribe, transcribe_row
from cmdbench.bench.results import read_csv


def test_committed_csv_is_valid_and_holds_the_cost_tables():
    df = read_csv(DEFAULT_OUT)
    assert (df["source"] == "paper").all()
    t9 = df[(df["protocol"] == "Table 9") & (df["metric"] == "tmacs_paper") & (df["steps"] == 50)]
    assert dict(zip(t9["generator"], t9["value"], strict=True)) == {"ModelScope": 939.0, "LVDM": 625.6, "CMD": 46.8}
    t10 = df[df["protocol"] == "Table 10"].set_index("generator")["value"]
    assert t10["CMD"] == 1.6 and t10["ModelScope"] == 1.7 and t10["LVDM"] == 0.96


@pytest.mark.skipif(not DEFAULT_SOURCE.is_file(), reason=f"reference source {DEFAULT_SOURCE} not present")
def test_committed_csv_is_not_stale():
    fresh, committed = transcribe(DEFAULT_SOURCE), read_csv(DEFAULT_OUT)
    assert len(fresh) == len(pd.read_csv(DEFAULT_SOURCE)) == len(committed)
    pd.testing.assert_frame_equal(fresh.reset_index(drop=True), committed.reset_index(drop=True))


def test_setting_fields_are_parsed():
    row = transcribe_row(pd.Series({
        "table": "Table 9", "method": "CMD", "metric": "tflops", "value": "92.1", "unit": "TFLOPs (fvcore MAC)",
        "higher_is_better": "False", "source_note": "n",
        "setting": "sampling, one 512x1024x16 video, A100 40GB, fp16, DDIM 100 steps, batch 4, cfg=9.0",
    }))
    assert (row["height"], row["width"], row["num_frames"], row["steps"], row["batch_size"]) == (512, 1024, 16, 100, 4)
    assert row["metric"] == "tmacs_paper" and row["guidance_scale"] == 9.0 and row["dtype"] == "float16"
    assert row["device_name"] == "NVIDIA A100 40GB" and row["higher_is_better"] is False
