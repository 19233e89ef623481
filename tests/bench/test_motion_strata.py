"""Motion-stratified evaluation: tercile edges and bucket assignment, per-bucket counts, every bucket value equal
to the judge computed on that bucket's videos alone, small buckets named, and the table + figure rendered
from the records of a run on synthetic videos with random-weight stand-in judges (labelled as such)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmdbench.bench import motion_strata as ms
from cmdbench.bench.tiny_judges import TinyPoolExtractor, tiny_protocol
from cmdbench.data.synthetic import moving_shape
from cmdbench.metrics.fvd import FVD
from cmdbench.metrics.motion import FarnebackFlow


class LookupFlow:
    """A flow double: a video's motion is its first pixel's red value / 10 (so tests choose the buckets)."""

    name, size, random_weights = "lookup", 256, False

    def describe(self):
        return {"flow": self.name}

    def pair_magnitudes(self, video: torch.Tensor) -> np.ndarray:
        return np.full(video.shape[0] - 1, float(video[0, 0, 0, 0]) / 10)


def tagged(magnitudes, seed: int) -> torch.Tensor:
    """Moving-shape videos (16 frames, 32 px) whose first pixel encodes the wanted motion for LookupFlow."""
    out = []
    for i, m in enumerate(magnitudes):
        v = moving_shape(seed + i, label=i % 8, num_frames=16, height=32, width=32)[0].clone()
        v[0, 0, 0, 0] = int(round(m * 10))
        out.append(v)
    return torch.stack(out)


def test_tercile_edges_and_assignment():
    real = np.arange(9.0)  # quantiles 1/3, 2/3 (linear): 2.667, 5.333
    s = ms.tercile_strata(real)
    assert (s.lo, s.hi) == pytest.approx((8 / 3, 16 / 3))
    assert np.bincount(s.assign(real), minlength=3).tolist() == [3, 3, 3]
    assert s.assign([s.lo, s.hi, s.lo - 1e-9]).tolist() == [1, 2, 0]  # an edge belongs to the faster bucket
    fixed = ms.fixed_strata(1.0, 4.0)
    assert fixed.assign([0.5, 1.0, 3.99, 4.0, 40]).tolist() == [0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="lo < hi"):
        ms.fixed_strata(4.0, 1.0)
    with pytest.raises(ValueError, match="at least 3"):
        ms.tercile_strata([1.0, 2.0])


def tiny_fvd() -> FVD:
    extractor = TinyPoolExtractor(dim=3)
    return FVD(tiny_protocol(0, 0, 16, extractor), extractor=extractor, strict=False, allow_singular=True)


def test_bucket_values_equal_the_judge_on_the_bucket_alone():
    """Routing check: each bucket's FVD equals a fresh FVD fed only that bucket's real and generated videos."""
    real = tagged([0.1, 0.2, 0.3, 1.1, 1.2, 1.3, 2.1, 2.2, 2.3], seed=0)
    fake = tagged([0.1, 0.2, 1.0, 1.2, 1.3, 1.4, 2.5, 2.6], seed=50)  # edges 0.833, 1.567: 2 slow, 4 medium, 2 fast
    judges = {"fvd-tiny": ms.SetJudge("fvd-tiny", tiny_fvd(), "tiny-pool-3")}
    result = ms.motion_strata(ms.tensor_set(real, "real"), ms.tensor_set(fake, "gen"), judges, flows=[LookupFlow()])
    rows = {r["metric"]: r for r in result.rows}
    assert [rows[f"motion_fraction/{b}"]["n"] for b in ms.BUCKETS] == [2, 4, 2]
    assert [rows[f"motion_fraction/{b}"]["notes"]["n_real"] for b in ms.BUCKETS] == [3, 3, 3]
    edges = (rows["motion_edge/lo"]["value"], rows["motion_edge/hi"]["value"])
    assert edges == pytest.approx(tuple(np.quantile([0.1, 0.2, 0.3, 1.1, 1.2, 1.3, 2.1, 2.2, 2.3], [1 / 3, 2 / 3])))
    for bucket, (ri, fi) in {"slow": ([0, 1, 2], [0, 1]), "medium": ([3, 4, 5], [2, 3, 4, 5]),
                             "fast": ([6, 7, 8], [6, 7]), "all": (list(range(9)), list(range(8)))}.items():
        alone = tiny_fvd()
        alone.update_real(real[ri])
        alone.update(fake[fi])
        row = rows[f"fvd-tiny/motion_{bucket}"]
        assert row["value"] == pytest.approx(alone.compute().value, rel=1e-6)  # float32 features, batch 1 vs 3
        assert (row["n"], row["notes"]["n_real"], row["notes"]["n_generated"]) == (len(fi), len(ri), len(fi))
    magnitudes = rows["motion_magnitude/generated"]["values"]
    assert magnitudes == pytest.approx([0.1, 0.2, 1.0, 1.2, 1.3, 1.4, 2.5, 2.6])


def test_small_buckets_are_named_not_dropped():
    real = tagged([0.1, 0.2, 0.3, 1.1, 1.2, 1.3, 2.1, 2.2, 2.3], seed=0)
    fake = tagged([0.1, 1.0, 1.2, 1.4], seed=60)  # one slow, none fast
    judges = {"fvd-tiny": ms.SetJudge("fvd-tiny", tiny_fvd(), "tiny-pool-3")}
    result = ms.motion_strata(ms.tensor_set(real, "real"), ms.tensor_set(fake, "gen"), judges, flows=[LookupFlow()])
    assert "1 generated" in result.skipped["fvd-tiny/motion_slow"]
    assert "0 generated" in result.skipped["fvd-tiny/motion_fast"]
    assert {r["metric"] for r in result.rows} >= {"fvd-tiny/motion_medium", "fvd-tiny/motion_all"}


def test_judges_without_weights_or_stand_in_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDBENCH_CACHE", str(tmp_path))
    judges, skipped = ms.build_judges(["fvd-videogpt", "clipsim", "no-such-judge"])
    assert not judges
    assert "i3d_pretrained_400" in skipped["fvd-videogpt"]  # real weights absent: named with how to get them
    assert "no-such-judge" in skipped and "clipsim" in skipped
    _, skipped = ms.build_judges(["clipsim"], stand_in=True)
    assert "no random-weight stand-in" in skipped["clipsim"]


def test_rendered_from_records_on_synthetic_videos(tmp_path):
    """The CI table: synthetic moving shapes, stand-in FVD and FVMD, Farneback at 64 px -> records ->
    markdown table + figure, labelled random-weight."""
    import pandas as pd

    from cmdbench.bench.results import load_records

    real = torch.stack([moving_shape(i, label=i % 6, num_frames=16, height=32, width=32)[0] for i in range(6)])
    fake = torch.stack([moving_shape(40 + i, label=(5 * i) % 6, num_frames=16, height=32, width=32)[0]
                        for i in range(6)])
    judges, skipped = ms.build_judges(["fvd-videogpt", "fvmd"], stand_in=True,
                                      options={"fvmd": {"iters": 2}})
    assert not skipped
    result = ms.motion_strata(ms.tensor_set(real, "synthetic-real"), ms.tensor_set(fake, "synthetic-gen"), judges,
                              flows=[FarnebackFlow(size=64)], strata=ms.fixed_strata(0.5, 1.0))
    csv = ms.write_records(result.rows, tmp_path / "records", "strata-test", generator="synthetic-gen",
                           dataset="synthetic-real", context={"stand_in": True})
    records = load_records(csv)
    assert set(records["metric"]) >= {"fvd-videogpt/motion_all", "fvmd/motion_all", "motion_ks",
                                      "motion_magnitude/real", "motion_wasserstein"}
    notes = json.loads(records.loc[records["metric"] == "fvmd/motion_all", "notes"].iloc[0])
    assert notes["stand_in"] == "pips-random-tiny" and notes["buckets"] == "fixed"
    paths = ms.render_motion_strata(records, tmp_path / "tables" / "motion_strata",
                                    tmp_path / "figures" / "motion_strata")
    md = paths[0].read_text()
    assert "random-weight stand-in" in md and "| judge" in md and "slow" in md and "KS D =" in md
    assert "fvmd [random weights: pips-random-tiny]" in md
    assert {p.suffix for p in paths[1:]} == {".png", ".pdf"} and all(p.stat().st_size > 0 for p in paths)
    assert isinstance(records, pd.DataFrame)


def test_folder_set_reads_and_names_skips(tmp_path):
    from cmdbench.video import write_mp4

    for i in range(3):
        write_mp4(tmp_path / f"v{i}.mp4", moving_shape(i, num_frames=16, height=32, width=32)[0])
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    videos = ms.folder_set(tmp_path, 16, policy="skip")
    assert len(videos) == 3 and videos[0].shape == (16, 3, 32, 32)
    assert [s["source"].endswith("broken.mp4") for s in videos.skipped] == [True]
    with pytest.raises(Exception, match="broken.mp4"):
        ms.folder_set(tmp_path, 16, policy="strict")


def test_command_hook_on_two_folders(tmp_path, capsys):
    """``add_strata_arguments`` + ``run_strata``: folders in, rows appended to the run, table + figure out;
    RAFT named as skipped when its weights are absent."""
    import argparse

    from cmdbench.bench.results import load_records
    from cmdbench.video import write_mp4

    for side, offset in (("real", 0), ("fake", 30)):
        for i in range(6):
            write_mp4(tmp_path / side / f"v{i}.mp4",
                      moving_shape(offset + i, label=i % 6, num_frames=16, height=32, width=32)[0])
    parser = argparse.ArgumentParser()
    ms.add_strata_arguments(parser)
    args = parser.parse_args(["--motion-strata", "--strata-stand-in", "--strata-flow", "farneback",
                              "--strata-flow", "raft_small"])
    args.real, args.videos, args.metrics = str(tmp_path / "real"), str(tmp_path / "fake"), ["fvd-videogpt"]
    args.records, args.device, args.policy = str(tmp_path / "runs"), "cpu", "strict"
    os_env = {"CMDBENCH_CACHE": str(tmp_path / "cache"), "CMDBENCH_WEIGHTS_RAFT_SMALL": str(tmp_path / "none.pth")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in os_env.items():
            mp.setenv(k, v)
        paths = ms.run_strata(args, run_id="strata-cli")
    assert "flow raft_small skipped" in capsys.readouterr().out
    records = load_records(tmp_path / "runs" / "strata-cli.csv")
    assert "fvd-videogpt/motion_all" in set(records["metric"])
    assert paths[0].name == "strata-cli_motion_strata.md" and "random-weight" in paths[0].read_text()
