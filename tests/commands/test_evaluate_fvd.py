"""`cmdbench ref-stats` and `cmdbench evaluate` end to end with the tiny random I3D (no weights)."""

from __future__ import annotations

import argparse
import os
import sys

import pytest
import torch

from cmdbench.bench.results import load_records
from cmdbench.cli import main
from cmdbench.commands import evaluate, ref_stats
from cmdbench.metrics.frechet import FeatureStats
from cmdbench.video import write_mp4

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = ["--extractor", "i3d-random-tiny", "--protocol", "tats"]


def run_cli(argv: list[str]) -> int:
    """Like ``cmdbench.cli.main`` with only these two subcommands (main imports every subcommand's
    dependencies, ~20-30 s on a loaded 2-core machine); same error handling: message, exit code 2."""
    parser = argparse.ArgumentParser(prog="cmdbench")
    sub = parser.add_subparsers(dest="command")
    evaluate.add_parser(sub)
    ref_stats.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"cmdbench {args.command}: error: {err}", file=sys.stderr)
        return 2


def make_folder(root, n: int, seed: int, frames: int = 16, shift: int = 0):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        v = (torch.rand(frames, 3, 32, 32, generator=g) * 120 + shift).to(torch.uint8)
        write_mp4(root / f"v{i:02d}.mp4", v)
    return root


@pytest.mark.slow
def test_ref_stats_then_evaluate_folder(tmp_path, capsys):
    real = make_folder(tmp_path / "real", 2, seed=0)
    fake = make_folder(tmp_path / "fake", 2, seed=1, shift=100)
    cache, out = tmp_path / "cache", tmp_path / "real.npz"
    args = ["ref-stats", "--videos", str(real), *TINY, "--num-real", "0", "--out", str(out), "--cache-dir", str(cache)]
    assert main(args) == 0
    stats = FeatureStats.load(out)
    assert stats.n == 2 and stats.metadata["protocol"]["name"] == "tats"
    assert stats.metadata["extractor"] == "i3d-random-tiny" and len(list(cache.glob("*.npz"))) == 1
    assert main(args) == 0
    assert "cached: 2 real clips" in capsys.readouterr().out

    records = tmp_path / "records"
    rc = main(["evaluate", "--videos", str(fake), "--metric", "fvd2048_16f", *TINY, "--ref-stats", str(out),
               "--records", str(records), "--non-strict", "--allow-singular", "--run-id", "r1"])
    assert rc == 0
    df = load_records(records)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["metric"] == "fvd2048_16f" and row["n"] == 2
    assert row["protocol"] == "tats; not conformant (2 real / 2 fake; the protocol takes 2048 / 2048)"
    assert row["value"] > 0 and '"n_real": 2' in row["notes"] and '"conformant": false' in row["notes"]


def test_evaluate_refuses_stats_of_another_protocol(tmp_path, capsys):
    # statistics saved under 'tats' with the tiny extractor, evaluated under 'videogpt': refused
    from cmdbench.metrics.fvd import FVD, get_protocol

    m = FVD(get_protocol("tats"), extractor="i3d-random-tiny")
    stats = m.new_stats("real")
    stats.update(torch.randn(3, 400).double())
    stats.save(tmp_path / "tats.npz")
    fake = make_folder(tmp_path / "fake", 1, seed=1)
    rc = run_cli(["evaluate", "--videos", str(fake), "--metric", "fvd2048_16f", "--extractor", "i3d-random-tiny",
               "--protocol", "videogpt", "--ref-stats", str(tmp_path / "tats.npz"), "--records", str(tmp_path / "r")])
    assert rc == 1  # the metric fails (alone), named with its reason
    err = capsys.readouterr().err
    assert "was built under preset 'tats'" in err and "resize: 'whole' in the file, 'short_side_crop' here " \
        "(from --protocol)" in err
    assert "differs from 'videogpt'" not in err


def test_evaluate_needs_reference(tmp_path, capsys):
    fake = make_folder(tmp_path / "fake", 1, seed=1)
    rc = run_cli(["evaluate", "--videos", str(fake), "--metric", "fvd2048_16f", *TINY, "--records", str(tmp_path / "r")])
    assert rc == 1 and "needs real statistics: pass --ref-stats FILE or --real DIR" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_generator_writes_rows(tmp_path):
    from cmdbench.metrics.fvd import FVD, get_protocol

    m = FVD(get_protocol("tats"), extractor="i3d-random-tiny")
    stats = m.new_stats("real")  # reference metadata for (tats, the tiny extractor); features made up
    stats.update(torch.randn(3, 400, generator=torch.Generator().manual_seed(0)).double() * 0.1)
    stats.save(tmp_path / "ref.npz")
    records = tmp_path / "records"
    rc = run_cli(["evaluate", "--generator", "tiny-unet3d-class", "--tiny", "--seeds", "0-1", "--frames", "16",
               "--metric", "fvd2048_16f", *TINY, "--ref-stats", str(tmp_path / "ref.npz"), "--records", str(records),
               "--non-strict", "--allow-singular"])
    assert rc == 0
    row = load_records(records).iloc[0]
    assert (row["generator"], row["seeds"], row["num_frames"], row["n"]) == ("tiny-unet3d-class", "0-1", 16, 2)
    assert row["value"] > 0 and row["conditioning"] == "class"


def test_rows_and_printed_lines_name_preset_weights_estimator_and_storage(tmp_path, capsys):
    # files written by `cmdbench sample` (write_mp4: libx264 crf 18 yuv420p) are scored as stored, and say so
    from cmdbench.metrics.fvd import FVD, get_protocol

    m = FVD(get_protocol("tats"), extractor="i3d-random-tiny")
    stats = m.new_stats("real")
    stats.update(torch.randn(3, 400, generator=torch.Generator().manual_seed(0)).double())
    stats.save(tmp_path / "ref.npz")
    fake = make_folder(tmp_path / "fake", 2, seed=1)
    records = tmp_path / "records"
    rc = run_cli(["evaluate", "--videos", str(fake), "--metric", "fvd2048_16f", *TINY, "--ref-stats",
                  str(tmp_path / "ref.npz"), "--records", str(records), "--non-strict", "--allow-singular"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "fvd2048_16f = " in out and "[tats: i3d-random-tiny sha256:" in out and "unbiased (n-1) covariance" in out
    assert "videos: mp4 libx264 crf=18 yuv420p" in out
    notes = load_records(records).iloc[0]["notes"]
    assert '"storage": "mp4 libx264 crf=18 yuv420p"' in notes and '"estimator": "unbiased (n-1)"' in notes
    assert '"preset": "tats"' in notes and '"extractor_checksum"' in notes
    assert run_cli(["evaluate", "--videos", str(fake), "--metric", "fvd2048_16f", *TINY, "--ref-stats",
                    str(tmp_path / "ref.npz"), "--records", str(records), "--through-codec"]) == 2
    assert "--through-codec applies to --generator" in capsys.readouterr().err


@pytest.mark.slow
def test_through_codec_makes_the_generator_path_equal_to_sample_then_evaluate(tmp_path):
    # same seeds, two storage paths: in memory and sample -> mp4 -> evaluate --videos differ; --through-codec
    # puts the in-memory videos through the same round trip, so the two FVDs become identical
    from cmdbench.metrics.fvd import FVD, get_protocol

    m = FVD(get_protocol("tats"), extractor="i3d-random-tiny")
    stats = m.new_stats("real")
    stats.update(torch.randn(4, 400, generator=torch.Generator().manual_seed(0)).double() * 0.1)
    stats.save(tmp_path / "ref.npz")
    # one video per sample() call, as the folder path scores them: the extractor sees the same batches
    gen = ["--generator", "tiny-unet3d-class", "--tiny", "--seeds", "0-2", "--frames", "16", "--sample-batch-size", "1"]
    common = ["--metric", "fvd2048_16f", *TINY, "--ref-stats", str(tmp_path / "ref.npz"), "--non-strict",
              "--allow-singular"]
    assert main(["sample", "tiny-unet3d-class", "--tiny", "--seeds", "0-2", "--frames", "16",
                 "--out", str(tmp_path / "samples")]) == 0
    values = {}
    # (sample writes its grid beside the folder, so the folder is scored as it is under the strict policy)
    for name, argv in (("memory", gen), ("codec", [*gen, "--through-codec"]),
                       ("files", ["--videos", str(tmp_path / "samples")])):
        assert run_cli(["evaluate", *argv, *common, "--records", str(tmp_path / name)]) == 0
        row = load_records(tmp_path / name).iloc[0]
        values[name] = (row["value"], row["notes"])
    # the same pixels up to the rare run-to-run codec noise of this x264 stack (cmdbench.video.codec_round_trip)
    assert values["codec"][0] == pytest.approx(values["files"][0], rel=1e-3)
    assert values["codec"][0] != pytest.approx(values["memory"][0], rel=1e-2)
    assert '"storage": "mp4 libx264 crf=18 yuv420p"' in values["codec"][1]
    assert '"storage": "in-memory uint8 (no codec)"' in values["memory"][1]
