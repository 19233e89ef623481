"""The regression suite: rows and identity of a run, the test-only slowdown knob, the sizing rule, and the
gate's verdicts on real suite runs (unchanged rerun, a deliberate slowdown, a 5% change in predicted memory)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from cmdbench.bench import regress_suite as suite
from cmdbench.bench.regression import compare, ratio_interval
from cmdbench.bench.results import decode_values, load_records

GEN = "pvdm-ucf101"


def test_slowdown_knob_parsing():
    assert suite.Slowdown.from_env({}) is None
    assert suite.Slowdown.from_env({suite.SLOWDOWN_ENV: "tiny-unet3d:1.2"}) == suite.Slowdown("tiny-unet3d", "denoiser", 1.2)
    assert suite.Slowdown.from_env({suite.SLOWDOWN_ENV: "cmd-tiny/content:1.5"}) == suite.Slowdown("cmd-tiny", "content", 1.5)
    for bad in ("tiny-unet3d", "tiny-unet3d:fast", "tiny-unet3d:0.5", ":1.2"):
        with pytest.raises(ValueError, match="GENERATOR\\[/STAGE\\]:FACTOR"):
            suite.Slowdown.from_env({suite.SLOWDOWN_ENV: bad})


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_stage_timer_stretches_only_the_named_stage_by_the_factor(monkeypatch):
    hook = suite.StageTimes(suite.Slowdown("g", "denoiser", 1.5))
    for stage in ("text_encoder", "denoiser"):
        hook(stage, "start")
        _busy(0.02)  # 20 ms of CPU work
        hook(stage, "end")
    assert 1.45 * 0.02 <= hook.cpu["denoiser"] < 1.8 * 0.02   # the busy wait adds half the stage's CPU work
    assert 0.02 <= hook.cpu["text_encoder"] < 1.3 * 0.02
    assert hook.wall["denoiser"] >= hook.cpu["denoiser"] * 0.95  # one thread: wall >= CPU
    # The extra CPU time asked for is exactly (factor - 1) x the stage's own CPU time, and only for that stage.
    asked: list[float] = []
    monkeypatch.setattr(suite, "_spin", asked.append)
    hook = suite.StageTimes(suite.Slowdown("g", "denoiser", 1.2))
    for stage in ("text_encoder", "denoiser"):
        hook(stage, "start")
        _busy(0.01)
        hook(stage, "end")
    assert len(asked) == 1 and asked[0] == pytest.approx(0.2 * hook.cpu["denoiser"], rel=0.01)


def test_rounds_needed_resolves_ten_percent():
    """Sizing rule vs the gate's own interval: at the recommended rounds the mean half-width of the 99%
    bootstrap interval of the ratio is about the band (10%)."""
    cv = 0.05
    n = suite.rounds_needed(cv)
    assert n == 6 and suite.rounds_needed(0.01) == 3 and suite.rounds_needed(0.10) == 21
    rng = np.random.default_rng(0)
    widths = []
    for _ in range(40):
        low, high = ratio_interval(1 + cv * rng.standard_normal(n), 1 + cv * rng.standard_normal(n),
                                   resamples=1000)
        widths.append((high - low) / 2)
    assert 0.06 < float(np.mean(widths)) < 0.14


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, plugins):
    """Two suite runs of one tiny generator (and the counts of another) on unchanged code, 6 and 5 rounds.
    (The timing verdicts on real runs, unchanged and deliberately slowed, are statistical and live in
    benchmarks/test_bench_regress_gate.py; here only what is deterministic is checked.)"""
    root = tmp_path_factory.mktemp("regress")
    kw = dict(generators=[GEN], counts=["cmd-tiny"], predictions=False, kernels=False, log=lambda _: None)
    a, _ = suite.run_suite(root / "a", rounds=6, **kw)
    b, _ = suite.run_suite(root / "b", rounds=5, **kw)  # the round count is not part of a timing's identity
    return {k: load_records(root / k / f"{rid}.csv") for k, rid in (("a", a), ("b", b))}


def test_a_run_records_wall_and_cpu_time_raw_repeats_and_exact_counts(two_runs):
    df = two_runs["a"].set_index("metric")
    for metric, unit in (("sampling_time", "s/video"), ("sampling_cpu_time", "CPU s/video"),
                         ("stage_time/denoiser", "s/video"), ("stage_cpu_time/denoiser", "CPU s/video"),
                         ("time_per_step", "s/step"), ("cpu_time_per_step", "CPU s/step"),
                         ("calibration_time", "s/call"), ("calibration_cpu_time", "CPU s/call")):
        vals = decode_values(df.loc[metric, "values"])
        assert len(vals) == 6 and df.loc[metric, "unit"] == unit, metric
        assert df.loc[metric, "value"] == pytest.approx(float(np.median(vals)))
    assert {"tmacs_paper", "tflops_true", "params"} <= set(df.index)
    assert df.loc["params", "device_name"] == "meta" and df.loc["sampling_time", "device_name"].startswith("cpu: ")
    assert df["config_hash"].is_unique


def test_unchanged_rerun_pairs_every_row_and_its_exact_figures_are_unchanged(two_runs):
    v = compare(two_runs["a"], two_runs["b"])
    assert len(v) == len(two_runs["a"])  # every row paired, 6 vs 5 rounds
    assert not set(v["verdict"]) & {"changed", "missing", "new", "incomparable"}, v[["metric", "verdict"]]
    assert (v.loc[v["kind"] == "exact", "verdict"] == "unchanged").all()


def test_a_five_percent_change_in_predicted_memory_is_flagged_exactly(tmp_path, plugins):
    pytest.importorskip("cmdbench.metrics.memory_prediction")
    rows = suite.prediction_rows(lambda _: None, names=["tiny-unet3d-class"])
    assert {r["metric"] for r in rows} >= {"predicted_peak_memory", "predicted_peak_memory/denoiser"}
    from cmdbench.bench.results import config_hash, make_row, validate

    env = {"device": "meta", "tf32_matmul": False, "tf32_cudnn": True, "float32_matmul_precision": "highest"}

    def frame(factor: float, run_id: str) -> pd.DataFrame:
        out = []
        for r in rows:
            full = {"run_id": run_id, "source": "measured", "device_name": "meta", "dtype": "float16", **r,
                    "value": r["value"] * (factor if r["metric"] == "predicted_peak_memory" else 1.0)}
            out.append(make_row(**full, config_hash=config_hash(full, env)))
        return validate(pd.DataFrame(out))

    v = compare(frame(1.0, "r"), frame(1.05, "s")).set_index("metric")
    assert v.loc["predicted_peak_memory", "verdict"] == "changed"
    assert v.loc["predicted_peak_memory", "change_pct"] == pytest.approx(5.0, abs=1e-9)
    assert (v.drop(index="predicted_peak_memory")["verdict"] == "unchanged").all()

