"""The efficiency reproduction end to end on the reference miniature: records, tables, figures, missing names."""

from __future__ import annotations

import json
import shutil

import pytest

from cmdbench.bench.paper_numbers import DEFAULT_OUT
from cmdbench.bench.repro_efficiency import (
    Recorder,
    Setting,
    parse_ints,
    parse_setting,
    record_measurement,
    run,
    select_gpus,
)
from cmdbench.bench.results import load_records
from cmdbench.config import TimingConfig


@pytest.mark.slow
def test_reproduction_on_the_miniature(tmp_path, capsys):
    (tmp_path / "paper").mkdir()
    shutil.copy(DEFAULT_OUT, tmp_path / "paper" / "cmd_arxiv_v1.csv")
    code = run(["--generators", "tiny-unet3d,no-such-model", "--extra", "", "--skip-training",
                "--measure-setting", "32x32x4:2", "--warmup", "0", "--results", str(tmp_path),
                "--scaling-generators", "tiny-unet3d", "--scaling-frames", "4,8", "--scaling-sizes", "32"])
    assert code == 0
    out = capsys.readouterr().out
    assert "not registered (skipped): no-such-model" in out
    df = load_records(tmp_path / "records")
    counted = df[(df["metric"] == "tmacs_paper") & (df["device_name"] == "meta")
                 & (df["protocol"] == "flopcounter-meta")]
    assert set(counted["steps"]) == {50, 100}
    per_step = counted.set_index("steps")["value"]
    assert per_step[100] == pytest.approx(2 * per_step[50])  # denoiser calls scale with steps
    measured = df[df["metric"] == "sampling_time"]
    assert len(measured) == 1 and measured["height"].iloc[0] == 32 and measured["steps"].iloc[0] == 2
    assert measured["unit"].iloc[0] == "s/video"
    predicted = df[df["metric"].str.startswith("predicted_")]
    at_paper = predicted[(predicted["height"] == 512) & (predicted["width"] == 1024)]
    assert set(at_paper["batch_size"]) == {1, 4}
    assert {"predicted_peak_memory", "predicted_peak_memory/denoiser", "predicted_time/A100-40GB",
            "predicted_time/H200/denoiser"} <= set(at_paper["metric"])
    assert (at_paper["unit"].isin(["GiB", "s/video"])).all() and (at_paper["device_name"] == "meta").all()
    scaling = df[df["protocol"].str.endswith("scaling")]
    assert set(zip(scaling["num_frames"], scaling["height"], strict=True)) == {(4, 512), (8, 512), (16, 32)}
    meta = json.loads(next((tmp_path / "records").glob("efficiency-*.json")).read_text())
    assert {"counts", "predictions", "scaling", "measurements", "render"} <= set(meta["phase_seconds"])
    md = (tmp_path / "tables" / "efficiency.md").read_text()
    assert "tiny-unet3d" in md and "939.0" in md
    assert (tmp_path / "figures" / "efficiency_fig1.png").is_file()
    assert (tmp_path / "figures" / "efficiency_fig6.pdf").is_file()
    assert (tmp_path / "figures" / "scaling.png").is_file() and "Cost scaling" in md
    assert "paper vs predicted without a GPU" in md


def test_setting_parser_errors_are_clear():
    assert parse_setting("64x128x16:2").width == 128
    with pytest.raises(ValueError, match="write HxWxT:steps"):
        parse_setting("64x128")
    assert parse_ints("8, 16", "--scaling-frames") == [8, 16]
    with pytest.raises(ValueError, match="--scaling-sizes"):
        parse_ints("0", "--scaling-sizes")
    assert [g.name for g in select_gpus("H200,A100-40GB")] == ["H200", "A100-40GB"]
    with pytest.raises(ValueError, match="unknown"):
        select_gpus("A100")


def test_measurement_rows_use_the_shared_names_per_video(tmp_path):
    """Per-video times (a call / batch), sample std over repeats, raw values kept; GiB memory."""
    from cmdbench.metrics.efficiency import SamplingMeasurement, Timing

    m = SamplingMeasurement(status="ok", time=Timing(raw=(8.0, 10.0, 12.0), warmup=1, method="perf_counter"),
                            stage_times={"denoiser": 6.0, "vae_decoder": 2.0}, stage_peaks={"denoiser": 2**30,
                                                                                            "vae_decoder": 3 * 2**30},
                            peak_memory=3 * 2**30, memory_label="cpu_peak_rss", excluded_stages=("vae_decoder",))
    rec = Recorder(tmp_path)
    record_measurement(rec, "g", m, Setting(16, 64, 64, 2), batch_size=2, device="cpu", dtype="float32",
                       timing=TimingConfig(warmup=1, min_repeats=3), guidance=None, conditioning=None)
    rows = {r["metric"]: r for r in rec.rows}
    whole = rows["sampling_time"]
    assert whole["value"] == 5.0 and whole["std"] == pytest.approx(1.0) and whole["n"] == 3
    assert whole["values"] == "[4.0, 5.0, 6.0]" and whole["unit"] == "s/video"
    assert rows["sampling_time_excl_vae_decoder"]["value"] == 4.0
    assert rows["stage_time/denoiser"]["value"] == 3.0
    assert rows["time_per_step"]["value"] == 3.0 and rows["time_per_step"]["unit"] == "s/step"
    assert rows["peak_memory"]["value"] == 3.0 and rows["peak_memory"]["protocol"] == "cpu-rss"
    assert rows["peak_memory_excl_vae_decoder"]["value"] == 1.0
    assert rows["peak_memory/vae_decoder"]["value"] == 3.0 and rows["peak_memory/vae_decoder"]["unit"] == "GiB"


def test_cmd_is_timed_with_the_settings_steps_in_both_stages(monkeypatch, tmp_path):
    """Table 9 reads "steps" as every stage's steps; CMD's quality default (100 motion steps at 50) must not
    leak into the timed setting, or the time would cover 50 + 100 calls while the counts say 50 + 50."""
    from cmdbench.bench import repro_efficiency as re_

    class FakeCMD:
        motion_steps = None
        conditioning = "text"

        def motion_steps_for(self, steps):
            return self.motion_steps or (100 if steps == 50 else steps)

    seen = []

    def measure(gen, **kw):
        seen.append(gen.motion_steps_for(kw["steps"]))
        return type("OOM", (), {"status": "oom", "error": "stand-in"})()

    monkeypatch.setattr(re_, "build", lambda name, **kw: FakeCMD())
    monkeypatch.setattr(re_, "measure_sampling", measure)
    monkeypatch.setattr(re_, "record_measurement", lambda *a, **kw: None)
    re_.measure_generator(Recorder(tmp_path), "cmd-webvid-512x1024", Setting(16, 512, 1024, 50), batch_sizes=[1],
                          device="cpu", dtype="float32", timing=TimingConfig(warmup=0, min_repeats=1),
                          log=lambda *a: None)
    assert seen == [50]
