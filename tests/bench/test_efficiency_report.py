"""Efficiency tables from records: paper vs reproduced cells, ratios, newest row wins, deterministic output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from cmdbench.bench.efficiency_report import (
    predicted_ratios,
    prediction_breakdown,
    render,
    table8,
    table9_flops,
    table9_measured,
    table9_predicted,
    upgrade_legacy_names,
)
from cmdbench.bench.paper_numbers import DEFAULT_OUT
from cmdbench.bench.repro_efficiency import Recorder, Setting
from cmdbench.bench.results import read_csv

PAPER = Setting(16, 512, 1024, 50)


def _results(tmp_path: Path) -> Path:
    (tmp_path / "paper").mkdir()
    shutil.copy(DEFAULT_OUT, tmp_path / "paper" / "cmd_arxiv_v1.csv")
    return tmp_path


def _write(results: Path, values: dict[tuple[str, str, int], float], created: str | None = None) -> Recorder:
    rec = Recorder(results / "records")
    if created is not None:  # runs within one second would otherwise tie on created_utc
        rec.created = created
    for (gen, metric, steps), v in values.items():
        rec.add(generator=gen, metric=metric, value=v, unit="TMAC", setting=Setting(16, 512, 1024, steps))
    return rec


def test_table9_ratios_and_newest_row_wins(tmp_path):
    results = _results(tmp_path)
    _write(results, {("modelscope-t2v", "tmacs_paper", 50): 900.0}, created="2026-01-01T00:00:00Z")
    _write(results, {("modelscope-t2v", "tmacs_paper", 50): 939.0 * 1.01, ("cmd-webvid-512x1024", "tmacs_paper", 50): 46.8,
                     ("cmd-webvid-512x1024", "tmacs_paper", 100): 92.1 / 2})
    render(results)
    from cmdbench.bench.efficiency_report import load_efficiency_records

    rec = load_efficiency_records(results / "records")
    paper = read_csv(results / "paper" / "cmd_arxiv_v1.csv")
    t9 = table9_flops(rec, paper).set_index("Method")
    assert t9.loc["ModelScope", "TMAC 50 paper"] == "939.0"
    assert t9.loc["ModelScope", "ratio 50"] == "1.010"
    assert t9.loc["CMD", "ratio 50"] == "1.000" and t9.loc["CMD", "ratio 100"] == "0.500"
    assert t9.loc["LVDM", "TMAC 50 ours"] == "–" and t9.loc["LVDM", "ratio 50"] == "–"


def test_measured_table_marks_oom_and_unsupported(tmp_path):
    results = _results(tmp_path)
    rec = Recorder(results / "records")
    s = Setting(16, 64, 64, 1)
    rec.add(generator="modelscope-t2v", metric="sampling_time_excl_vae_decoder", value=10.0, unit="s/video", setting=s,
            device="cpu")
    rec.add(generator="lvdm-t2v", metric="out_of_memory", value=1.0, unit="flag", setting=s, device="cpu")
    rec.add(generator="cmd-webvid-512x1024", metric="unsupported", value=1.0, unit="flag", setting=s, device="cpu")
    from cmdbench.bench.efficiency_report import load_efficiency_records, measured_groups

    recs = load_efficiency_records(results / "records")
    (group,) = measured_groups(recs)
    t = table9_measured(recs, read_csv(results / "paper" / "cmd_arxiv_v1.csv"), group).set_index("Method")
    col = "time B=1 excl. SD dec. (s/video)"
    assert t.loc["ModelScope", col] == "10.00"
    assert t.loc["LVDM", col] == "OOM"
    assert t.loc["CMD", col] == "unsupported setting"
    assert t.loc["ModelScope", "time / CMD time (paper)"] == "11.21"


def test_table8_compares_one_forward_and_rendering_is_deterministic(tmp_path):
    results = _results(tmp_path)
    rec = Recorder(results / "records")
    s = Setting(16, 512, 512, 1)
    rec.add(generator="modelscope-t2v", metric="train_tmacs_forward/denoiser", value=9.41 * 0.9, unit="TMAC", setting=s)
    first = [p.read_bytes() for p in render(results) if p.suffix in (".md", ".tex")]
    second = [p.read_bytes() for p in render(results) if p.suffix in (".md", ".tex")]
    assert first == second
    from cmdbench.bench.efficiency_report import load_efficiency_records

    t8 = table8(load_efficiency_records(results / "records"), read_csv(results / "paper" / "cmd_arxiv_v1.csv"))
    row = t8.set_index("Component").loc["ModelScope diffusion"]
    assert row["ratio"] == "0.900" and row["TFLOPs paper"] == "9.41"
    assert t8.set_index("Component").loc["CMD autoencoder", "fwd TMAC ours (paper conv.)"] == "not counted"


def test_table8_cmd_rows_come_from_the_newest_training_generator(tmp_path):
    """An older run's SD1.5 decoder-only rows do not mix with a newer run's WebVid training stages."""
    results = _results(tmp_path)
    s = Setting(16, 512, 512, 1)
    old = Recorder(results / "records")
    old.created = "2026-01-01T00:00:00Z"
    for stage, v in (("decoder", 0.5), ("content", 0.33), ("motion", 0.23)):
        old.add(generator="cmd-sd15-512", metric=f"train_tmacs_forward/{stage}", value=v, unit="TMAC", setting=s)
    new = Recorder(results / "records")
    new.created = "2026-02-01T00:00:00Z"
    for stage, v in (("autoencoder", 1.0), ("content", 0.34), ("motion", 0.14)):
        new.add(generator="cmd-webvid-512x1024", metric=f"train_tmacs_forward/{stage}", value=v, unit="TMAC",
                setting=s)
    from cmdbench.bench.efficiency_report import load_efficiency_records

    t8 = table8(load_efficiency_records(results / "records"),
                read_csv(results / "paper" / "cmd_arxiv_v1.csv")).set_index("Component")
    cmd_rows = t8.loc[["CMD autoencoder", "CMD content-frame diffusion", "CMD motion diffusion"]]
    assert list(cmd_rows["Generator"]) == ["cmd-webvid-512x1024"] * 3
    assert list(cmd_rows["fwd TMAC ours (paper conv.)"]) == ["1.00", "0.34", "0.14"]
    assert "CMD autoencoder (decoder only)" not in t8.index


def test_measured_table_a_newer_time_replaces_an_older_unsupported_flag(tmp_path):
    results = _results(tmp_path)
    s = Setting(16, 64, 64, 1)
    old = Recorder(results / "records")
    old.created = "2026-01-01T00:00:00Z"
    old.add(generator="cmd-webvid-512x1024", metric="unsupported", value=1.0, unit="flag", setting=s, device="cpu")
    excl = "sampling_time_excl_vae_decoder"
    old.add(generator="modelscope-t2v", metric=excl, value=50.0, unit="s/video", setting=s, device="cpu")
    new = Recorder(results / "records")
    new.created = "2026-02-01T00:00:00Z"
    new.add(generator="cmd-webvid-512x1024", metric=excl, value=4.0, unit="s/video", setting=s, device="cpu")
    new.add(generator="modelscope-t2v", metric=excl, value=60.0, unit="s/video", setting=s, device="cpu")
    from cmdbench.bench.efficiency_report import load_efficiency_records, measured_groups

    recs = load_efficiency_records(results / "records")
    (group,) = measured_groups(recs)
    t = table9_measured(recs, read_csv(results / "paper" / "cmd_arxiv_v1.csv"), group).set_index("Method")
    assert t.loc["CMD", "time B=1 excl. SD dec. (s/video)"] == "4.00"
    assert t.loc["ModelScope", "time B=1 excl. SD dec. (s/video)"] == "60.00"
    assert t.loc["ModelScope", "time / CMD time (ours)"] == "15.00"


def test_results_root_without_paper_numbers_uses_the_committed_transcription(tmp_path):
    """`reproduce efficiency --results DIR` outside the checkout still shows the paper's numbers."""
    _write(tmp_path, {("modelscope-t2v", "tmacs_paper", 50): 939.0})
    paths = render(tmp_path)
    assert not (tmp_path / "paper").exists()
    table = (tmp_path / "tables" / "efficiency.md").read_text()
    assert tmp_path / "tables" / "efficiency.md" in paths
    row = next(line for line in table.splitlines() if line.startswith("| ModelScope"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["ModelScope", "modelscope-t2v", "939.0"]  # the paper's number, read from the fallback


def _predicted_rows(rec: Recorder, gen: str, *, mem: dict[int, dict[str, float]], times: dict[str, dict[str, float]]):
    for b, stages in mem.items():
        for stage, v in stages.items():
            rec.add(generator=gen, metric=f"predicted_peak_memory/{stage}", value=v, unit="GiB", setting=PAPER,
                    batch_size=b, protocol="fake-cuda sdpa=auto workspace=sm80", dtype="float16")
    for gpu, stages in times.items():
        for stage, v in stages.items():
            rec.add(generator=gen, metric=f"predicted_time/{gpu}/{stage}", value=v, unit="s/video", setting=PAPER,
                    protocol="roofline", dtype="float16", notes="100 ops per call x 50 calls, call batch 2")


def test_table9_predicted_reads_stage_rows_without_the_vae_decoder(tmp_path):
    results = _results(tmp_path)
    rec = Recorder(results / "records")
    _predicted_rows(rec, "modelscope-t2v", mem={1: {"text_encoder": 3.5, "denoiser": 8.5, "vae_decoder": 15.0},
                                                4: {"denoiser": 21.3 * 1.1, "vae_decoder": 50.0}},
                    times={"A100-40GB": {"text_encoder": 0.1, "denoiser": 17.45, "vae_decoder": 1.0},
                           "H200": {"denoiser": 5.0}})
    _predicted_rows(rec, "cmd-webvid-512x1024", mem={1: {"content": 4.0, "decoder": 4.2, "vae_decoder": 16.0}},
                    times={"A100-40GB": {"content": 1.0, "motion": 0.5, "decoder": 0.06, "vae_decoder": 1.0}})
    # a scaling-sweep row at another protocol must not leak into Table 9
    rec.add(generator="modelscope-t2v", metric="predicted_peak_memory/denoiser", value=99.0, unit="GiB",
            setting=PAPER, protocol="fake-cuda sdpa=auto workspace=sm80/scaling", dtype="float16")
    # nor the mixed-precision variant
    rec.add(generator="modelscope-t2v", metric="predicted_peak_memory/denoiser", value=12.3, unit="GiB",
            setting=PAPER, protocol="fake-cuda sdpa=auto workspace=sm80 amp=float16", dtype="float16")
    from cmdbench.bench.efficiency_report import load_efficiency_records

    recs = load_efficiency_records(results / "records")
    paper = read_csv(results / "paper" / "cmd_arxiv_v1.csv")
    t = table9_predicted(recs, paper).set_index("Method")
    assert t.loc["ModelScope", "pred. mem B=1 (GiB)"] == "8.50"  # max of the stages, vae_decoder left out
    assert t.loc["ModelScope", "pred./paper B=1"] == "1.000"
    assert t.loc["ModelScope", "pred./paper B=4"] == "1.100"
    assert t.loc["ModelScope", "pred. A100-40GB time (s/video)"] == "17.55"  # sum without vae_decoder
    assert t.loc["ModelScope", "pred. A100 / paper"] == f"{17.55 / 35.1:.3f}"
    assert t.loc["ModelScope", "measured time (s/video)"] == "no GPU run"
    assert t.loc["CMD", "pred. mem B=1 (GiB)"] == "4.20" and t.loc["CMD", "pred. mem B=4 (GiB)"] == "–"
    assert t.loc["LVDM", "pred. mem B=1 (GiB)"] == "–"
    r = predicted_ratios(recs, paper).set_index("Ratio")
    assert r.loc["ModelScope / CMD time", "paper (A100, measured)"] == "11.21"
    assert r.loc["ModelScope / CMD time", "predicted A100-40GB"] == f"{17.55 / 1.56:.2f}"
    assert r.loc["ModelScope / CMD time", "predicted H200"] == "–"  # CMD has no H200 row
    b = prediction_breakdown(recs).set_index(["Method", "stage"])
    assert b.loc[("ModelScope", "denoiser"), "ops/call x calls"] == "100 x 50"
    assert b.loc[("ModelScope", "denoiser"), "pred. peak B=4 (GiB)"] == f"{21.3 * 1.1:.2f}"
    assert b.loc[("ModelScope", "vae_decoder"), "pred. A100 time (s/video)"] == "1.000"
    md = (render(results)[0].parent / "efficiency.md").read_text()
    assert "paper vs predicted without a GPU" in md and "Per-stage breakdown" in md


def test_legacy_records_are_read_under_the_new_names():
    from tests.bench.records_factory import frame, record

    old = frame(
        record(run_id="old", metric="sampling_time", value=19.0, unit="s", std=0.5, batch_size=1),
        record(run_id="old", metric="sampling_time_total", value=103.0, unit="s", batch_size=1),
        record(run_id="old", metric="peak_memory", value=9.432, unit="GB", protocol="cpu_peak_rss", batch_size=1),
        record(run_id="old", metric="peak_memory_total", value=9.606, unit="GB", protocol="cpu_peak_rss"),
        record(run_id="old", metric="stage_time/content", value=8.0, unit="s", batch_size=4),
        record(run_id="new", metric="sampling_time", value=50.0, unit="s/video", batch_size=1),
        record(run_id="new", metric="stage_peak_memory/content", value=8.4, unit="GiB", batch_size=1),
    )
    up = upgrade_legacy_names(old).set_index(["run_id", "metric"])
    assert up.loc[("old", "sampling_time_excl_vae_decoder"), "value"] == 19.0
    assert pd.isna(up.loc[("old", "sampling_time_excl_vae_decoder"), "std"])  # an IQR is not a std
    assert up.loc[("old", "sampling_time"), "value"] == 103.0
    assert up.loc[("old", "peak_memory_excl_vae_decoder"), "value"] == pytest.approx(9.432e9 / 2**30)
    assert up.loc[("old", "peak_memory"), "unit"] == "GiB"
    assert up.loc[("old", "peak_memory"), "protocol"] == "cpu-rss"
    assert up.loc[("old", "stage_time/content"), "value"] == 2.0  # per video at batch 4
    assert up.loc[("new", "sampling_time"), "value"] == 50.0  # a new run is left alone
    assert up.loc[("new", "peak_memory/content"), "value"] == 8.4


def test_table8_shows_predicted_training_memory(tmp_path):
    results = _results(tmp_path)
    rec = Recorder(results / "records")
    s = Setting(16, 512, 512, 1)
    rec.add(generator="lvdm-t2v", metric="train_tmacs_forward/denoiser", value=6.2, unit="TMAC", setting=s)
    rec.add(generator="lvdm-t2v", metric="predicted_train_peak_memory/denoiser", value=38.9, unit="GiB", setting=s,
            protocol="fake-tensor training amp-fp16")
    from cmdbench.bench.efficiency_report import load_efficiency_records

    t8 = table8(load_efficiency_records(results / "records"), read_csv(results / "paper" / "cmd_arxiv_v1.csv"))
    row = t8.set_index("Component").loc["LVDM diffusion"]
    assert row["pred. mem (GiB)"] == "38.90" and row["paper mem (GB)"] == "44.20"
