"""The regression gate on real suite runs (statistical, so a benchmark, not a test): an unchanged rerun raises
no alarm, and the generator's denoiser made 1.5x slower through the test-only knob is flagged.

Run: ``python -m pytest benchmarks/test_bench_regress_gate.py --benchmark-enable -o addopts=""``. The gate's
rules themselves are tested on synthetic timings in ``tests/bench/test_regression.py``.
"""

from __future__ import annotations

import pytest

from cmdbench.bench import regress_suite as suite
from cmdbench.bench.regression import compare, exit_code
from cmdbench.bench.results import load_records
from cmdbench.registry import load_plugins

GEN = "pvdm-ucf101"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    load_plugins()
    root = tmp_path_factory.mktemp("regress")
    kw = dict(generators=[GEN], counts=[], predictions=False, kernels=False, log=lambda _: None)
    a, _ = suite.run_suite(root / "a", rounds=6, **kw)
    b, _ = suite.run_suite(root / "b", rounds=6, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(suite.SLOWDOWN_ENV, f"{GEN}:1.5")
        c, _ = suite.run_suite(root / "c", rounds=6, **kw)
    return {k: load_records(root / k / f"{rid}.csv") for k, rid in (("a", a), ("b", b), ("c", c))}


@pytest.mark.benchmark
def test_bench_gate_on_real_runs(benchmark, runs):
    unchanged = compare(runs["a"], runs["b"])
    slowed = benchmark.pedantic(compare, args=(runs["a"], runs["c"]), rounds=1, iterations=1)
    v = slowed.set_index("metric")
    benchmark.extra_info.update(
        unchanged_verdicts=unchanged["verdict"].value_counts().to_dict(),
        slowed_denoiser_cpu=f"{v.loc['stage_cpu_time/denoiser', 'verdict']} "
                            f"{v.loc['stage_cpu_time/denoiser', 'change_pct']:+.1f}%")
    assert exit_code(unchanged) == 0, unchanged[["metric", "verdict"]]
    assert v.loc["stage_cpu_time/denoiser", "verdict"] == "regressed"
    assert v.loc["stage_cpu_time/denoiser", "change_pct"] == pytest.approx(50, abs=15)
    assert exit_code(slowed) == 1
