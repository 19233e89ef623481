"""``cmdbench evaluate`` as a new user meets it (issue 12's "Why", one test per problem): stand-ins under the
default protocol, settings taken from --ref-stats, flag-worded errors, labelled printed lines and rows,
folder identity, resume without duplicates, metrics failing alone, bad input, captions, devices.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.commands.conftest import notes_of, records_of, write_videos

TINY = ["--extractor", "i3d-random-tiny"]
ANY_COUNT = ["--non-strict", "--allow-singular"]
PYTHON_WORDS = ("allow_singular=True", "strict=False", "num_real=", "protocol=", "aggfunc")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """real/ and fake/ (6 videos each, 16 frames, 32x32; fake/ with captions.csv) and real statistics built by
    `cmdbench ref-stats` with the stand-in extractor under the default protocol."""
    from cmdbench.cli import main

    root = tmp_path_factory.mktemp("eval")
    write_videos(root / "real", 6, seed=0, captions=False)
    write_videos(root / "fake", 6, seed=1, shift=40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMDBENCH_CACHE", str(root / "cache"))
        assert main(["ref-stats", "--videos", str(root / "real"), *TINY, "--num-real", "0", "--out",
                     str(root / "real.npz"), "--no-progress"]) == 0
    return root


def lines_of(out: str) -> dict[str, str]:
    return {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}


# --- stand-ins and protocols -----------------------------------------------------------------------------------
def test_stand_in_extractor_runs_under_the_default_protocol(data):
    from cmdbench.metrics.frechet import FeatureStats

    meta = FeatureStats.load(data / "real.npz").metadata
    assert meta["protocol"]["name"] == "videogpt" and meta["extractor"] == "i3d-random-tiny"


def test_stand_in_under_stylegan_v_names_the_presets_that_work(cli, data, capsys):
    rc = cli(["ref-stats", "--videos", str(data / "real"), *TINY, "--protocol", "stylegan-v", "--num-real", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--protocol videogpt" in err and "videogpt (default), tats or tf-reference" in err


def test_catalog_fvd_defaults_to_the_videogpt_preset():
    import cmdbench.metrics.catalog  # noqa: F401
    from cmdbench.metrics.fvd import DEFAULT_PRESET
    from cmdbench.registry import METRICS

    metric = METRICS.get("fvd2048_16f")(extractor="i3d-random-tiny")
    assert metric.protocol.name == DEFAULT_PRESET == "videogpt"
    assert "default videogpt" in next(e.description for e in METRICS.entries() if e.name == "fvd2048_16f")


def test_protocol_and_extractor_come_from_the_ref_stats_file(cli, data, tmp_path, capsys):
    # statistics under 'tats' with the stand-in; evaluate names neither: the file's are used
    from cmdbench.metrics.fvd import FVD, get_protocol

    stats = FVD(get_protocol("tats"), extractor="i3d-random-tiny").new_stats("real")
    stats.update(torch.randn(8, 400, generator=torch.Generator().manual_seed(0)).double())
    stats.save(tmp_path / "tats.npz")
    rc = cli(["evaluate", "--videos", str(data / "fake"), "--metric", "fvd2048_16f", "--ref-stats",
              str(tmp_path / "tats.npz"), *ANY_COUNT, "--records", str(tmp_path / "runs"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    row = records_of(tmp_path / "runs").iloc[0]
    assert row["protocol"].startswith("tats;") and notes_of(row)["extractor"] == "i3d-random-tiny"


def test_a_mismatch_names_the_differing_field_and_flag(cli, data, tmp_path, capsys):
    rc = cli(["evaluate", "--videos", str(data / "fake"), "--metric", "fvd2048_16f", "--ref-stats",
              str(data / "real.npz"), "--extractor", "i3d-random", *ANY_COUNT, "--records", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "extractor: 'i3d-random-tiny' in the file, 'i3d-random' here (from --extractor)" in err
    assert "which differs from" not in err


# --- counts, flags -------------------------------------------------------------------------------------------
def test_small_real_folder_under_the_protocol_names_the_flags(cli, data, tmp_path, capsys):
    base = ["evaluate", "--videos", str(data / "fake"), "--real", str(data / "real"), "--metric", "fvd2048_16f",
            *TINY, "--records", str(tmp_path / "runs"), "--no-progress"]
    assert cli(base) == 1
    err = capsys.readouterr().err
    assert "--real" in err and "6 usable videos" in err and "--non-strict" in err and "--num-real" in err
    assert cli([*base, "--non-strict"]) == 1  # counts allowed; 6 <= 400 dimensions: singular
    err = capsys.readouterr().err
    assert "the real side has 6 clips (--real" in err and "the generated side has 6 clips (--videos" in err
    assert "pass --allow-singular" in err
    assert cli([*base, "--num-real", "4", "--non-strict", "--allow-singular"]) == 0  # evaluate has --num-real
    notes = notes_of(records_of(tmp_path / "runs").iloc[0])
    assert notes["n_real"] == 4 and notes["conformance"].startswith("not conformant (4 real / 6 fake")
    assert not any(word in err for word in PYTHON_WORDS)


def test_counts_refused_under_strict_name_side_and_flag(cli, data, tmp_path, capsys):
    rc = cli(["evaluate", "--videos", str(data / "fake"), "--metric", "fvd2048_16f", "--ref-stats",
              str(data / "real.npz"), "--allow-singular", "--records", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "holds 6 real clips; fvd2048_16f under 'videogpt' takes 2048. Pass --non-strict" in err
    assert not any(word in err for word in PYTHON_WORDS)


def test_table_duplicates_name_the_aggfunc_flag(cli, data, tmp_path, capsys):
    runs = tmp_path / "runs"
    for run_id in ("a", "b"):
        assert cli(["evaluate", "--videos", str(data / "fake"), "--metric", "fvd2048_16f", "--ref-stats",
                    str(data / "real.npz"), *ANY_COUNT, "--records", str(runs), "--run-id", run_id]) == 0
    capsys.readouterr()
    assert cli(["table", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "pass --aggfunc" in err and "aggfunc (" not in err and "--index generator --index run_id" in err
    assert cli(["table", str(runs), "--aggfunc", "median"]) == 0


# --- what a printed line and a row say -----------------------------------------------------------------------
def test_lines_rows_and_tables_say_counts_frames_sizes_weights_and_conformance(cli, data, tmp_path, capsys):
    small = write_videos(tmp_path / "small", 6, seed=2, size=(24, 40), captions=False)
    rc = cli(["evaluate", "--videos", str(small), "--real", str(data / "real"), "--metric", "fvd2048_16f", *TINY,
              *ANY_COUNT, "--records", str(tmp_path / "runs"), "--cache-dir", str(data / "cache" / "ref_stats")])
    out = capsys.readouterr().out
    assert rc == 0
    line = lines_of(out)["fvd2048_16f"]
    for part in ("[videogpt: i3d-random-tiny sha256:", "unbiased (n-1) covariance",
                 "real 6 clips (32x32) vs fake 6 clips (24x40), 16 frames each",
                 "not conformant (6 real / 6 fake; the protocol takes 2048 / 2048)",
                 "frame sizes differ (real 32x32 vs fake 24x40)", "RANDOM WEIGHTS", "videos: mp4 libx264 crf=18"):
        assert part in line, part
    row = records_of(tmp_path / "runs").iloc[0]
    notes = notes_of(row)
    assert (row["num_frames"], row["height"], row["width"]) == (16, 24, 40)
    assert notes["size_mismatch"] == "real 32x32 vs fake 24x40" and notes["random_weights"] is True
    assert notes["fake_clips"] == "frames 0..15 at stride 1 of each video"
    assert notes["real_clips"].startswith("one seeded window per video (clip_seed 0")


def test_fvd_of_a_folder_against_itself_says_why_it_is_not_zero(cli, data, tmp_path, capsys):
    rc = cli(["evaluate", "--videos", str(data / "real"), "--real", str(data / "real"), "--metric", "fvd2048_16f",
              *TINY, *ANY_COUNT, "--records", str(tmp_path), "--cache-dir", str(data / "cache" / "ref_stats")])
    assert rc == 0
    assert "--real and --videos are the same folder; FVD is still not 0, because the real side takes one seeded " \
           "window per video" in capsys.readouterr().out


# --- identity, resume, failures ------------------------------------------------------------------------------
def test_two_samples_folders_never_merge_and_name_is_recorded(cli, data, tmp_path, capsys):
    runs = tmp_path / "runs"
    for model in ("model_a", "model_b"):
        shutil.copytree(data / "fake", tmp_path / model / "samples")
        assert cli(["evaluate", "--videos", str(tmp_path / model / "samples"), "--metric", "fvd2048_16f",
                    "--ref-stats", str(data / "real.npz"), *ANY_COUNT, "--records", str(runs)]) == 0
    assert cli(["evaluate", "--videos", str(tmp_path / "model_a" / "samples"), "--name", "cmd-ucf", "--metric",
                "fvd2048_16f", "--ref-stats", str(data / "real.npz"), *ANY_COUNT, "--records", str(runs)]) == 0
    df = records_of(runs)
    assert df["generator"].nunique() == 3 and df["config_hash"].nunique() == 3
    assert df["generator"].str.startswith("folder:samples@").sum() == 2
    assert df["generator"].str.startswith("folder:cmd-ucf@").sum() == 1
    assert df["checkpoint"].nunique() == 2  # two resolved paths
    capsys.readouterr()
    assert cli(["table", str(runs)]) == 0  # three rows, no duplicate cell
    assert capsys.readouterr().out.count("| folder:") == 3


def test_rerun_with_the_same_run_id_adds_no_duplicate_rows(cli, data, tmp_path, capsys):
    base = ["evaluate", "--videos", str(data / "fake"), "--ref-stats", str(data / "real.npz"), *ANY_COUNT,
            "--records", str(tmp_path), "--run-id", "r1"]
    assert cli([*base, "--metric", "fvd2048_16f"]) == 0
    assert cli([*base, "--metric", "fvd2048_16f"]) == 0
    assert "fvd2048_16f: already recorded in run r1" in capsys.readouterr().out
    assert cli([*base, "--metric", "fvd2048_16f", "--metric", "clipsim", "--clip-weights", "clip-random-tiny"]) == 0
    df = records_of(tmp_path)
    assert sorted(df["metric"]) == ["clipsim", "fvd2048_16f"]
    meta = json.loads((tmp_path / "r1.json").read_text())
    assert [a["computed"] for a in meta["attempts"]] == [["fvd2048_16f"], ["clipsim"]]  # nothing twice
    other = write_videos(tmp_path / "other", 2, seed=5)
    assert cli(["evaluate", "--videos", str(other), "--metric", "clipsim", "--records", str(tmp_path), "--run-id",
                "r1"]) == 2
    assert "pass a new --run-id" in capsys.readouterr().err


def test_one_failing_metric_keeps_the_others(cli, data, tmp_path, capsys):
    rc = cli(["evaluate", "--videos", str(data / "fake"), "--ref-stats", str(data / "real.npz"), *ANY_COUNT,
              "--metric", "fvd2048_16f", "--metric", "clipsim", "--clip-weights", str(tmp_path / "missing.pt"),
              "--records", str(tmp_path), "--run-id", "r"])
    captured = capsys.readouterr()
    assert rc == 1
    assert list(records_of(tmp_path)["metric"]) == ["fvd2048_16f"]
    assert "clipsim: cannot be computed: CLIP weight file" in captured.err and "fvd2048_16f = " in captured.out
    meta = json.loads((tmp_path / "r.json").read_text())
    assert "missing.pt" in meta["failures"]["clipsim"]


def test_sampled_videos_are_written_before_scoring(cli, data, tmp_path, capsys):
    # FVD of 2 generated clips (singular covariance, no --allow-singular) fails at compute time, after sampling:
    # the samples are on disk all the same
    rc = cli(["evaluate", "--generator", "tiny-unet3d-class", "--tiny", "--seeds", "0-1", "--frames", "16",
              "--metric", "fvd2048_16f", "--ref-stats", str(data / "real.npz"), "--non-strict", "--records",
              str(tmp_path), "--run-id", "g"])
    assert rc == 1
    assert sorted(p.name for p in (tmp_path / "g.videos").iterdir()) == ["seed-000000.mp4", "seed-000001.mp4"]
    assert "fvd2048_16f: cannot be computed" in capsys.readouterr().err


# --- bad input and captions ----------------------------------------------------------------------------------
def test_a_stray_file_stops_strict_and_is_named_under_skip(cli, data, tmp_path, capsys):
    folder = tmp_path / "fake"
    shutil.copytree(data / "fake", folder)
    (folder / "notes.txt").write_text("my notes")
    base = ["evaluate", "--videos", str(folder), "--metric", "fvd2048_16f", "--ref-stats", str(data / "real.npz"),
            *ANY_COUNT, "--records", str(tmp_path / "runs")]
    assert cli(base) == 2
    err = capsys.readouterr().err
    assert "notes.txt: not a video" in err and "--policy skip" in err
    assert cli([*base, "--policy", "skip"]) == 0
    assert f"skipped {folder / 'notes.txt'}: not a video" in capsys.readouterr().out
    assert records_of(tmp_path / "runs").iloc[0]["n"] == 6


def test_a_missing_caption_matters_to_text_metrics_only(cli, data, tmp_path, capsys):
    folder = tmp_path / "fake"
    shutil.copytree(data / "fake", folder)
    lines = (folder / "captions.csv").read_text().splitlines()
    (folder / "captions.csv").write_text("\n".join(lines[:-1]) + "\n")  # clip05 loses its caption
    common = ["--videos", str(folder), "--ref-stats", str(data / "real.npz"), *ANY_COUNT]
    assert cli(["evaluate", *common, "--metric", "fvd2048_16f", "--records", str(tmp_path / "a")]) == 0
    assert records_of(tmp_path / "a").iloc[0]["n"] == 6  # FVD-only: every video, captions not read
    with_clip = [*common, "--metric", "fvd2048_16f", "--metric", "clipsim", "--clip-weights", "clip-random-tiny"]
    assert cli(["evaluate", *with_clip, "--records", str(tmp_path / "b")]) == 2
    assert "clip05.mp4: no caption row for 'clip05.mp4'" in capsys.readouterr().err
    assert cli(["evaluate", *with_clip, "--policy", "skip", "--records", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert f"left out of the text metrics: {folder / 'clip05.mp4'}: no caption row" in out
    n = records_of(tmp_path / "c").set_index("metric")["n"]
    assert (n["fvd2048_16f"], n["clipsim"]) == (6, 5)


def test_paired_metrics_need_originals_and_name_unpaired_files(cli, data, tmp_path, capsys):
    folder = tmp_path / "fake"
    shutil.copytree(data / "fake", folder)
    write_videos(folder, 1, seed=9, prefix="extra", captions=False)
    base = ["evaluate", "--videos", str(folder), "--metric", "psnr", "--records", str(tmp_path / "runs")]
    assert cli(base) == 1
    assert "psnr compares each video with its original: pass --references DIR" in capsys.readouterr().err
    assert cli([*base, "--references", str(data / "real")]) == 2
    assert "extra00.mp4" in capsys.readouterr().err
    assert cli([*base, "--references", str(data / "real"), "--policy", "skip"]) == 0
    assert "left out of the paired metrics:" in capsys.readouterr().out
    assert records_of(tmp_path / "runs").iloc[0]["n"] == 6


# --- devices -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["evaluate", "--videos", "x", "--metric", "fvd2048_16f", "--records", "r"],
    ["ref-stats", "--videos", "x"],
    ["sample", "tiny-unet3d", "--tiny", "--out", "x"],
])
def test_unavailable_device_is_one_line(cli, monkeypatch, capsys, argv):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device='cuda': cuda is not available on this machine" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_library_messages_reach_the_user_as_flags():
    from cmdbench.commands.evaluate import fail
    from cmdbench.metrics.frechet import InsufficientSamplesError

    failures: dict[str, str] = {}
    fail("fvd2048_16f", InsufficientSamplesError("bootstrap round 3: singular; use more samples or "
                                                 "allow_singular=True"), failures)
    fail("kvd", ValueError("other counts are not comparable; pass strict=False to compute it anyway"), failures)
    assert failures["fvd2048_16f"].endswith("use more samples or --allow-singular")
    assert failures["kvd"].endswith("pass --non-strict to compute it anyway")


def test_conformance_labels():
    from types import SimpleNamespace

    from cmdbench.commands.evaluate import conformance
    from cmdbench.metrics.fvd import get_protocol

    def metric(n_real, n_fake, name="fvd2048_16f"):
        return SimpleNamespace(reference=SimpleNamespace(n=n_real), fake=SimpleNamespace(n=n_fake),
                               protocol=get_protocol("videogpt", name))

    assert conformance(metric(2048, 2048)) == (True, "conformant (2048 real / 2048 fake)")
    assert conformance(metric(2048, 2000))[1] == "not conformant (2048 real / 2000 fake; the protocol takes 2048 / 2048)"
    assert conformance(metric(None, 2048))[0] is False  # a peer file's unknown count is never conformant
    assert conformance(metric(13320, 10_000, "fvd10k_16f")) == (True, "conformant (13320 real / 10000 fake)")
