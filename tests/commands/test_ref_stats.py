"""`cmdbench ref-stats`: skipped files named with reasons (screen and .npz), rank-0 output, UCF-101's class
order, resume of real statistics with another chunk size, counts that never double (issue 11, points 2/6/7)."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
import torch

from cmdbench.bench import reference_sets
from cmdbench.bench.reference_sets import (
    ClassCoverageError,
    check_counts,
    class_coverage,
    open_real_dataset,
    real_statistics,
)
from cmdbench.bench.sharded import Shard
from cmdbench.bench.tiny_judges import TinyPoolExtractor, tiny_protocol
from cmdbench.commands import ref_stats
from cmdbench.data import synthetic
from cmdbench.metrics.frechet import FeatureStats
from cmdbench.metrics.fvd import FVD
from cmdbench.metrics.reference import ReferenceCache
from cmdbench.video import write_mp4


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cmdbench")
    ref_stats.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"cmdbench {args.command}: error: {err}", file=sys.stderr)
        return 2


def folder_with_bad_files(root):
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        write_mp4(root / f"good{i}.mp4", torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8))
    write_mp4(root / "short.mp4", torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    (root / "empty.mp4").write_bytes(b"")
    (root / "junk.mp4").write_bytes(b"definitely not a video" * 50)
    return root


def test_skip_policy_names_every_file_and_reason_on_screen_and_in_the_npz(tmp_path, capsys):
    real = folder_with_bad_files(tmp_path / "real")
    out = tmp_path / "real.npz"
    rc = run_cli(["ref-stats", "--videos", str(real), "--extractor", "i3d-random-tiny", "--protocol", "tats",
                  "--num-real", "0", "--policy", "skip", "--cache-dir", str(tmp_path / "c"), "--out", str(out),
                  "--num-workers", "0"])
    assert rc == 0
    captured = capsys.readouterr()
    screen = captured.out
    assert "computed: 3 real clips of folder" in screen and "skipped=3" in screen
    for name, reason in (("short.mp4", "has 4 frames"), ("empty.mp4", "empty"), ("junk.mp4", "cannot open")):
        line = next(ln for ln in screen.splitlines() if ln.strip().startswith("skipped") and name in ln)
        assert reason in line and "[probe]" in line
    assert "FVD tats: i3d-random-tiny sha256:" in screen and "unbiased (n-1) covariance" in screen
    assert "moov atom not found" not in captured.err  # FFmpeg's log lines are silenced (decord QUIET)
    meta = FeatureStats.load(out).metadata
    assert {(s["source"].rsplit("/", 1)[-1], s["stage"]) for s in meta["skipped"]} == {
        ("short.mp4", "probe"), ("empty.mp4", "probe"), ("junk.mp4", "probe")}
    assert all(s["reason"] for s in meta["skipped"])


def test_decode_failures_are_named_too(tmp_path, monkeypatch):
    # a clip that opens but fails to decode (stage "decode") is named in the metadata with its reason
    from cmdbench.data import clips

    real = folder_with_bad_files(tmp_path / "real")
    read = clips.read_frames

    def flaky(path, indices):
        if path.name == "good1.mp4":
            raise clips.UnreadableVideoError(f"cannot decode frames of {path}: corrupt slice")
        return read(path, indices)

    monkeypatch.setattr(clips, "read_frames", flaky)
    ex = TinyPoolExtractor(dim=2)
    fvd = FVD(tiny_protocol(0, 2, 4, ex), extractor=ex, strict=False)
    ds = open_real_dataset("folder", real, fvd.protocol, policy="skip")
    rs = real_statistics(ds, fvd, num_workers=0, chunk_size=2)
    decode = [s for s in rs.skipped if s["stage"] == "decode"]
    assert rs.stats.n == 3 and len(decode) == 1  # good0, good2 and short.mp4 (4 frames suffice here)
    assert decode[0]["source"].endswith("good1.mp4") and "corrupt slice" in decode[0]["reason"]


def test_only_rank_0_prints_and_writes_out(tmp_path, capsys, monkeypatch):
    real = folder_with_bad_files(tmp_path / "real")
    base = ["ref-stats", "--videos", str(real), "--extractor", "i3d-random-tiny", "--protocol", "tats", "--num-real",
            "0", "--policy", "skip", "--cache-dir", str(tmp_path / "c"), "--work-dir", str(tmp_path / "w"),
            "--num-workers", "0", "--chunk-size", "1"]
    assert run_cli([*base, "--force"]) == 0  # every unit on the shared work dir
    capsys.readouterr()
    monkeypatch.setattr(Shard, "current", staticmethod(lambda: Shard(1, 2)))  # the second torchrun process
    monkeypatch.setattr("cmdbench.bench.sharded.init_distributed_from_env", lambda: Shard(1, 2))
    assert run_cli([*base, "--force", "--out", str(tmp_path / "rank1.npz")]) == 0
    assert capsys.readouterr().out == "" and not (tmp_path / "rank1.npz").exists()


def test_ucf101_defaults_to_a_seeded_class_spread_and_refuses_a_few_class_listing(tmp_path):
    ucf = synthetic.write_fake_ucf101(tmp_path / "ucf", classes=(0, 1, 2, 3), train_per_class=3, test_per_class=0,
                                      num_frames=16, height=16, width=16)

    def protocol(argv):
        parser = argparse.ArgumentParser()
        ref_stats.add_protocol_arguments(parser)
        for opt in ("--dataset", "--num-real", "--order", "--seed"):
            parser.add_argument(opt, default=None, type=int if opt in ("--num-real", "--seed") else str)
        return ref_stats.resolve_protocol(parser.parse_args(argv))

    hashed = protocol(["--dataset", "ucf101", "--num-real", "4"])
    assert hashed.real_order == "hashed"  # UCF-101's lists are sorted by class: the default spreads them
    assert protocol(["--dataset", "folder"]).real_order == "listed"  # other sets keep the protocol's order
    listed = protocol(["--dataset", "ucf101", "--num-real", "4", "--order", "listed"])
    ds_listed = open_real_dataset("ucf101", ucf, listed, size=(16, 16))
    assert class_coverage(ds_listed) == (2, 4)  # the first 4 listed clips: classes 0 and 1 only
    ds_one = open_real_dataset("ucf101", ucf, protocol(["--dataset", "ucf101", "--num-real", "3", "--order",
                                                        "listed"]), size=(16, 16))
    assert class_coverage(ds_one) == (1, 4)
    ex = TinyPoolExtractor(dim=2)
    fvd = FVD(tiny_protocol(3, 3, 4, ex), extractor=ex)
    with pytest.raises(ClassCoverageError, match="cover 1 of 4 classes.*--order hashed"):
        real_statistics(ds_one, fvd, num_workers=0)
    rs = real_statistics(ds_one, fvd, num_workers=0, allow_few_classes=True)  # explicit, and recorded
    assert rs.stats.metadata["class_warning"].startswith("warning: ucf101: the 3 planned real clips (listed order)")
    assert rs.stats.metadata["allow_few_classes"] is True
    ds_hashed = open_real_dataset("ucf101", ucf, hashed, size=(16, 16))
    assert class_coverage(ds_hashed)[0] >= 3  # seeded hash order spreads 4 clips over the classes


def test_real_statistics_resume_with_another_chunk_size_and_num_real_0(tmp_path, monkeypatch):
    # num_real = 0 (Table 1's cond10k): no protocol count catches a doubled clip, so the counts are checked
    ucf = synthetic.write_fake_ucf101(tmp_path / "ucf", classes=(0, 1), train_per_class=6, test_per_class=0,
                                      num_frames=10, height=16, width=16)
    ex = TinyPoolExtractor(dim=2)
    fvd = FVD(tiny_protocol(0, 3, 4, ex), extractor=ex, strict=False)
    ds = open_real_dataset("ucf101", ucf, fvd.protocol, size=(16, 16))
    assert len(ds) == 12
    calls = []
    extract = ex.extract

    def killed_after_two_chunks(clips):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(clips))
        return extract(clips)

    monkeypatch.setattr(ex, "extract", killed_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        real_statistics(ds, fvd, work_dir=tmp_path / "w", chunk_size=4, batch_size=4, num_workers=0)
    monkeypatch.setattr(ex, "extract", extract)
    cache = ReferenceCache(tmp_path / "c")
    resumed = real_statistics(ds, fvd, cache=cache, work_dir=tmp_path / "w", chunk_size=3, batch_size=4,
                              num_workers=0)
    fresh = real_statistics(ds, fvd, chunk_size=12, batch_size=4, num_workers=0)
    assert resumed.stats.n == fresh.stats.n == 12  # was 14: chunks 0-1 of size 4 plus chunks 2-3 of size 3
    # the same clips (features equal up to the extractor's batch-size-dependent float rounding)
    np.testing.assert_allclose(resumed.stats.bank.array(), fresh.stats.bank.array(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(resumed.stats.outer, fresh.stats.outer, rtol=1e-12)
    assert resumed.path.is_file()
    # statistics whose count does not add up are refused before they reach the cache
    doubled = FeatureStats(2, metadata={"skipped": []})
    doubled.update(np.ones((14, 2)))
    with pytest.raises(RuntimeError, match="counted twice or lost"):
        check_counts(doubled, ds, list(range(12)) + [0, 1], fvd.protocol)


def test_one_clip_per_video_is_enforced(tmp_path):
    real = folder_with_bad_files(tmp_path / "real")
    ex = TinyPoolExtractor(dim=2)
    fvd = FVD(tiny_protocol(5, 5, 4, ex), extractor=ex)
    ds = open_real_dataset("folder", real, fvd.protocol, policy="skip")
    with pytest.raises(ValueError, match="4 usable videos.*num_real=5 clips, one per video"):
        reference_sets.real_statistics(ds, fvd, num_workers=0)
