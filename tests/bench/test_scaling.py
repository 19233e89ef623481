"""Cost-scaling sweep: grid, unsupported points with the generator's reason, exact costs of a toy
generator, records -> table and figure, and the ``cmdbench efficiency --scaling`` command."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cmdbench.bench.efficiency_report import load_efficiency_records
from cmdbench.bench.repro_efficiency import Recorder, record_scaling
from cmdbench.bench.scaling import point_values, render_scaling, scaling_frame, scaling_grid, sweep
from cmdbench.cli import main
from cmdbench.interfaces import CostStage, UnsupportedSettingError
from cmdbench.metrics.memory_prediction import GIB, cublas_workspace_bytes
from cmdbench.metrics.roofline import get_gpu
from cmdbench.registry import GENERATORS, load_plugins

WIDTH = 64
PATCH = 16


class ToyVideoGenerator:
    """Tokens = frames x (H/16) x (W/16); denoiser and SD-decoder stand-ins are bias-free linears; at most
    16 frames (else UnsupportedSettingError, like CMD's fixed clip length)."""

    conditioning = "none"

    def __init__(self, spec) -> None:
        with torch.device("meta"):
            self.den = nn.Linear(WIDTH, WIDTH, bias=False)
            self.dec = nn.Linear(WIDTH, 3 * WIDTH, bias=False)

    def cost_stages(self, *, num_frames, height, width, steps):
        if num_frames > 16:
            raise UnsupportedSettingError(f"toy-video: num_frames={num_frames}; allowed 1..16")
        p = next(self.den.parameters())
        tokens = num_frames * (height // PATCH) * (width // PATCH)

        def x(b):
            return {"input": torch.zeros(b, tokens, WIDTH, device=p.device, dtype=p.dtype)}

        return [CostStage("denoiser", self.den, x, calls=steps),
                CostStage("vae_decoder", self.dec, x, calls=1, paper_convention=False)]


@pytest.fixture
def toy_registered():
    load_plugins()
    state = GENERATORS.snapshot()
    GENERATORS.register("toy-video", ToyVideoGenerator, description="test toy")
    yield "toy-video"
    GENERATORS.restore(state)


def test_grid_has_both_axes_each_setting_once():
    assert scaling_grid((8, 16, 32), (256, 512)) == [(8, 512, 512), (16, 512, 512), (32, 512, 512), (16, 256, 256)]
    with pytest.raises(ValueError, match="positive integers"):
        scaling_grid((8, 0), (256,))
    with pytest.raises(ValueError, match="positive integers"):
        scaling_grid((), (256,))


def test_sweep_counts_exactly_and_marks_refused_settings(toy_registered):
    points = sweep([toy_registered], scaling_grid((8, 16, 32), (256,)), steps=50, log=lambda _: None)
    by = {(p.num_frames, p.height): p for p in points}
    refused = by[(32, 512)]
    assert refused.status == "unsupported" and "allowed 1..16" in refused.reason and refused.memory is None
    a100 = get_gpu("A100-40GB")
    v8, v16 = point_values(by[(8, 512)], a100), point_values(by[(16, 512)], a100)
    tokens16 = 16 * (512 // PATCH) ** 2
    assert v16["tmacs_paper"] == pytest.approx(tokens16 * WIDTH * WIDTH * 50 / 1e12)  # denoiser only, x steps
    act = tokens16 * WIDTH * 2  # one (tokens, 64) fp16 activation
    weights = (WIDTH * WIDTH + 3 * WIDTH * WIDTH) * 2
    # without the decoder stage: weights + input + output of the denoiser + cuBLAS workspaces
    assert v16["memory_gib"] * GIB == pytest.approx(weights + 2 * act + cublas_workspace_bytes(8.0), abs=1)
    assert (v16["memory_gib"] - v8["memory_gib"]) * GIB == pytest.approx(act, abs=1)  # linear in frames
    assert v16["time_s"] == pytest.approx(2 * v8["time_s"], rel=0.05)  # bandwidth-bound, ~linear


def test_records_render_a_table_and_a_figure(toy_registered, tmp_path):
    points = sweep([toy_registered], scaling_grid((8, 32), (128,)), log=lambda _: None)
    rec = Recorder(tmp_path / "records")
    gpus = [get_gpu("A100-40GB"), get_gpu("H200")]
    record_scaling(rec, points, gpus)
    df = scaling_frame(load_efficiency_records(tmp_path / "records")).set_index(["num_frames", "height"])
    assert df.loc[(32, 512), "status"] == "unsupported" and "allowed 1..16" in df.loc[(32, 512), "reason"]
    ok = next(p for p in points if p.num_frames == 8 and p.height == 512)
    want = point_values(ok, gpus[0])
    for key in ("tmacs_paper", "memory_gib", "time_s"):
        assert df.loc[(8, 512), key] == pytest.approx(want[key], rel=1e-12)
    paths, md = render_scaling(load_efficiency_records(tmp_path / "records"), tmp_path)
    assert {p.name for p in paths} == {"scaling.md", "scaling.png", "scaling.pdf"}
    assert "| toy-video" in md and "unsupported" in md and "pred. memory B=1 (GiB)" in md


def test_scaling_command_end_to_end(toy_registered, tmp_path, capsys):
    code = main(["efficiency", "--scaling", "--generators", toy_registered, "--scaling-frames", "8,32",
                 "--scaling-sizes", "128", "--gpus", "A100-40GB", "--results", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "2 counted, 1 unsupported points" in out
    assert (tmp_path / "tables" / "scaling.md").is_file() and (tmp_path / "figures" / "scaling.png").is_file()
    assert main(["efficiency", "--scaling", "--generators", toy_registered, "--scaling-frames", "8,x",
                 "--results", str(tmp_path)]) == 2
    assert "--scaling-frames" in capsys.readouterr().err
