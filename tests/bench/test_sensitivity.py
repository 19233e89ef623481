"""Temporal-sensitivity check: each distortion does what it says (reverse twice = identity, freeze has zero flow,
shuffle moves exactly the chosen frames, jitter stays within its offset, blur has its sigma, noise its sd),
the split, the table + figure rendered from the records of a run on synthetic videos with random-weight
stand-ins (labelled), and ``cmdbench sensitivity`` end to end on a folder of mp4s."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmdbench.bench import sensitivity as sens
from cmdbench.data.synthetic import moving_shape
from cmdbench.metrics.motion import FarnebackFlow, video_motion


def video(seed: int = 0, frames: int = 16, size: int = 32) -> torch.Tensor:
    """A moving shape whose frames all differ (uint8 (T, 3, H, W))."""
    v = moving_shape(seed, label=2, num_frames=frames, height=size, width=size)[0].clone()
    v[:, 0, 0, 0] = torch.arange(frames, dtype=torch.uint8)  # a frame counter in one pixel
    return v


def frame_ids(v: torch.Tensor) -> list[int]:
    return v[:, 0, 0, 0].tolist()


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.8, 1.0])
def test_reverse_twice_is_identity(strength):
    v = video()
    once = sens.reverse(v, strength)
    assert torch.equal(sens.reverse(once, strength), v)
    k = round(strength * 16)
    assert sum(a != b for a, b in zip(frame_ids(once), range(16), strict=True)) == k - (k % 2)  # centre stays if odd
    assert frame_ids(sens.reverse(v, 1.0)) == list(range(15, -1, -1))


def test_freeze_stops_the_video():
    v = video(size=64)
    frozen = sens.freeze(v, 0.5)  # round(0.5 * 15) = 8 frames repeat frame 7
    assert frame_ids(frozen) == list(range(8)) + [7] * 8
    assert torch.equal(frozen[8:], v[7].expand(8, -1, -1, -1))
    still = sens.freeze(v, 1.0)
    assert torch.equal(still, v[:1].expand(16, -1, -1, -1))
    flow = FarnebackFlow(size=64)
    assert video_motion(still[None], flow)[0] < 0.01  # zero flow
    assert video_motion(v[None], flow)[0] > 0.3


@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
def test_shuffle_moves_exactly_the_chosen_frames(strength):
    v = video()
    out = sens.distort(v, "shuffle", strength, seed=3, index=1)
    ids = frame_ids(out)
    assert sorted(ids) == list(range(16))  # the same frames, reordered
    assert sum(a != b for a, b in zip(ids, range(16), strict=True)) == round(strength * 16)
    assert torch.equal(out, sens.distort(v, "shuffle", strength, seed=3, index=1))  # seeded
    assert not torch.equal(out, sens.distort(v, "shuffle", strength, seed=4, index=1))


def test_jitter_stays_within_its_offset():
    v = video()
    for r in (1, 2, 4):
        ids = np.array(frame_ids(sens.distort(v, "jitter", r, seed=0, index=r)))
        assert np.abs(ids - np.arange(16)).max() <= r
        assert (ids != np.arange(16)).any()
    assert torch.equal(sens.distort(v, "jitter", 0, seed=0), v)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_blur_has_its_sigma(sigma):
    line = torch.zeros(1, 3, 41, 41, dtype=torch.uint8)
    line[0, :, :, 20] = 255  # a vertical line: its horizontal profile after the blur is the kernel
    profile = sens.blur(line, sigma)[0, 0, 20].double()
    w = profile / profile.sum()
    x = torch.arange(41, dtype=torch.float64) - 20
    assert float((w * x**2).sum()) == pytest.approx(sigma**2, rel=0.1)  # uint8 rounding of the tails
    assert float((w * x).sum()) == pytest.approx(0.0, abs=1e-9)
    flat = torch.full((2, 3, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(sens.blur(flat, sigma), flat)


def test_noise_has_its_sd():
    grey = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)
    for sd in (4.0, 16.0):
        diff = sens.distort(grey, "noise", sd, seed=1).double() - 128
        assert float(diff.std()) == pytest.approx(sd, rel=0.05)
        assert abs(float(diff.mean())) < 0.2


def test_bad_distortions_and_splits():
    with pytest.raises(ValueError, match="unknown distortion"):
        sens.distort(video(), "melt", 1.0)
    with pytest.raises(ValueError, match="< 0"):
        sens.distort(video(), "blur", -1)
    ref, test = sens.split_sets(7)
    assert ref.tolist() == [0, 2, 4, 6] and test.tolist() == [1, 3, 5]
    assert sens.split_sets(3, "same")[0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="at least 4"):
        sens.split_sets(3)
    from cmdbench.commands.sensitivity import parse_distortions

    assert parse_distortions(["shuffle=0.5,1", "blur"]) == {"shuffle": (0.5, 1.0), "blur": (0.5, 1.0, 2.0)}
    with pytest.raises(ValueError, match="unknown distortion"):
        parse_distortions(["wobble=1"])


def test_table_and_figure_from_records_with_stand_ins(tmp_path):
    """The CI table: synthetic videos, stand-in FVD and FVMD plus Farneback motion -> records -> markdown +
    figure labelled random-weight; freezing everything drives the motion judge to ~0."""
    from cmdbench.bench.motion_strata import build_judges, tensor_set
    from cmdbench.bench.results import load_records

    videos = tensor_set([moving_shape(i, label=i % 6, num_frames=16, height=32, width=32)[0] for i in range(6)],
                        "synthetic")
    judges, skipped = build_judges(["fvd-videogpt", "fvmd", "motion-farneback"], stand_in=True,
                                   options={"fvmd": {"iters": 2}, "motion-farneback": {"size": 64}})
    assert not skipped
    rows, failed = sens.sensitivity(videos, judges, levels={"freeze": [1.0], "shuffle": [1.0], "noise": [16.0]})
    assert not failed
    cell = {(r["metric"], r["notes"]["distortion"]): r for r in rows}
    assert cell[("motion-farneback", "freeze")]["value"] < 0.01
    assert cell[("motion-farneback", "none")]["value"] > 0.3
    assert cell[("motion-farneback", "freeze")]["notes"]["relative_change"] == pytest.approx(-1, abs=0.02)
    assert cell[("fvd-videogpt", "none")]["notes"]["relative_change"] == 0.0
    csv = sens.write_sensitivity_records(rows, tmp_path / "records", "sens-test", real_name="synthetic",
                                         context={"stand_in": True})
    records = load_records(csv)
    assert set(records["generator"]) == {"synthetic+none@0", "synthetic+freeze@1", "synthetic+shuffle@1",
                                         "synthetic+noise@16"}
    assert json.loads(records["notes"].iloc[0])["split"] == "half"
    paths = sens.render_sensitivity(records, tmp_path / "t" / "sensitivity", tmp_path / "f" / "sensitivity")
    md = paths[0].read_text()
    assert "random-weight stand-in" in md and "fvmd [random: pips-random-tiny]" in md
    assert "| freeze" in md and "| none" in md and "%)" in md
    assert {p.suffix for p in paths[1:]} == {".png", ".pdf"}


def test_command_end_to_end(tmp_path, capsys):
    from cmdbench.cli import main
    from cmdbench.video import write_mp4

    real = tmp_path / "real"
    for i in range(4):
        write_mp4(real / f"v{i}.mp4", moving_shape(i, label=i, num_frames=16, height=32, width=32)[0])
    rc = main(["sensitivity", "--real", str(real), "--stand-in", "--metric", "fvd-videogpt", "--metric", "clipsim",
               "--distortion", "reverse=1", "--out-root", str(tmp_path / "out"), "--run-id", "cli-sens"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "judge clipsim skipped: no random-weight stand-in" in out
    assert (tmp_path / "out/results/records/sensitivity/cli-sens.csv").is_file()
    assert (tmp_path / "out/results/records/sensitivity/cli-sens.json").is_file()
    md = (tmp_path / "out/results/tables/sensitivity.md").read_text()
    assert "fvd-videogpt [random: i3d-random-tiny]" in md and "| reverse" in md
    assert (tmp_path / "out/results/figures/sensitivity.png").is_file()
    assert main(["sensitivity", "--real", str(real), "--distortion", "melt"]) == 2
