"""The calibration workload: fixed (same work every call, whatever the global RNG), timed with both clocks."""

from __future__ import annotations

import time

import pytest
import torch

from cmdbench.bench import calibration


def test_workload_is_fixed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = calibration.workload()(), calibration.workload()()
    assert torch.equal(a, b) and torch.isfinite(a)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert calibration.workload(steps=2)() != a  # the step count is part of the work


def test_time_call_reports_wall_and_cpu_time():
    wall, cpu = calibration.time_call(lambda: time.sleep(0.05))
    assert wall >= 0.05 and cpu < 0.02            # sleeping costs wall time, not CPU time

    def spin():
        end = time.process_time() + 0.03
        while time.process_time() < end:
            pass

    wall, cpu = calibration.time_call(spin)
    assert cpu >= 0.03 and wall >= 0.95 * cpu       # busy work costs both


def test_measure_returns_each_repeat():
    out = calibration.measure(3, warmup=0)
    assert len(out) == 3 and all(w > 0 and c > 0 for w, c in out)


@pytest.mark.parametrize("name", ["METRIC", "CPU_METRIC"])
def test_calibration_metrics_are_timed_figures(name):
    from cmdbench.bench.results import metric_kind

    assert metric_kind(getattr(calibration, name)) == "timed"
