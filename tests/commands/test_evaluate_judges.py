"""``cmdbench evaluate`` / ``ref-stats`` with the judges beyond FVD (JEDi, KVD, content-debiased FVD, FVMD),
offline with their random-weight stand-ins.

Each value written by the command is compared with the judge computed directly (the metric class fed the
decoded real and generated clips, its options spelled out here, not taken from the command's stand-in table),
so a wrong extractor, option, clip or reference on the command's path changes the number.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.commands.conftest import notes_of, records_of

JUDGES = ("jedi", "kvd", "fvd-videomae", "fvmd")
# What each judge is expected to run with under --stand-ins (written out: the command's table must agree).
DIRECT = {
    "jedi": {"extractor": "vjepa-random-tiny"},
    "kvd": {"extractor": "i3d-random-tiny"},
    "fvd-videomae": {"extractor": "videomae-random-tiny", "allow_singular": True},
    "fvmd": {"extractor": "pips-random-tiny", "num_points": 25, "iters": 4, "size": 128, "allow_singular": True},
}
PROTOCOLS = {"jedi": "jedi", "kvd": "videogpt", "fvd-videomae": "videomae",
             "fvmd": "fvmd[num_points=25,iters=4,size=128]"}
N = 4  # videos per folder: 16 frames of 32x32 (FVMD resizes them to a 128-px short side)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from cmdbench.data.synthetic import write_folder

    root = tmp_path_factory.mktemp("judges")
    write_folder(root / "real", N, seed=0)
    write_folder(root / "fake", N, seed=100)
    return root / "real", root / "fake"


def decoded(folder) -> torch.Tensor:
    """uint8 (N, 16, 3, 32, 32): every video of a folder, in listed order."""
    from cmdbench.data.readers import read_frames

    return torch.stack([read_frames(p, range(16)) for p in sorted(folder.glob("*.mp4"))])


def direct_value(name: str, real: torch.Tensor, fake: torch.Tensor) -> float:
    import cmdbench.metrics.catalog  # noqa: F401
    from cmdbench.registry import METRICS

    metric = METRICS.get(name)(strict=False, **DIRECT[name])
    metric.update_real(real)  # as the command: the real clips in one extractor batch, the videos one by one
    for video in fake:
        metric.update(video[None])
    return metric.compute().value


def rows_by_metric(records) -> dict:
    df = records_of(records)
    assert df["metric"].is_unique
    return {r["metric"]: r for _, r in df.iterrows()}


def test_documented_command_with_stand_ins_writes_one_labelled_row_per_judge(cli, folders, tmp_path, capsys):
    real, fake = folders
    records = tmp_path / "runs"
    argv = ["evaluate", "--metric", "jedi", "--metric", "kvd", "--metric", "fvd-videomae", "--metric", "fvmd",
            "--real", str(real), "--videos", str(fake), "--stand-ins", "--non-strict", "--allow-singular",
            "--records", str(records), "--no-progress"]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    rows = rows_by_metric(records)
    assert sorted(rows) == sorted(JUDGES)
    real_videos, fake_videos = decoded(real), decoded(fake)
    for name in JUDGES:
        row, notes = rows[name], notes_of(rows[name])
        assert row["protocol"].split(";")[0] == PROTOCOLS[name]
        assert notes["random_weights"] is True and notes["extractor"] == DIRECT[name]["extractor"]
        assert (notes["n_real"], notes["n_fake"]) == (N, N)
        assert notes["reference_key"]  # statistics cached under the judge's own key
        assert math.isclose(row["value"], direct_value(name, real_videos, fake_videos), rel_tol=1e-7, abs_tol=1e-12)
        line = next(x for x in out.splitlines() if x.startswith(f"{name} = "))
        assert "RANDOM WEIGHTS" in line and f"[{PROTOCOLS[name]}: {DIRECT[name]['extractor']}" in line
    keys = {notes_of(rows[n])["reference_key"] for n in JUDGES}
    assert len(keys) == len(JUDGES)  # four protocols, four real-statistics keys
    # flags a judge does not take are named in one line, not passed on
    assert "jedi: --allow-singular not used (jedi has no allow_singular option)" in out


@pytest.mark.parametrize("name", ["jedi", "fvmd"])
def test_ref_stats_file_gives_the_value_of_real_and_serves_only_its_judge(name, cli, folders, tmp_path, capsys):
    real, fake = folders
    stats = tmp_path / f"{name}_real.npz"
    assert cli(["ref-stats", "--videos", str(real), "--metric", name, "--stand-ins", "--num-real", "0",
                "--out", str(stats), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"statistics for {name}: {PROTOCOLS[name]}: {DIRECT[name]['extractor']}" in out and "RANDOM WEIGHTS" in out
    common = ["--videos", str(fake), "--metric", name, "--non-strict", "--allow-singular", "--no-progress"]
    # no --stand-ins here: the file's protocol, extractor (and FVMD's grid, iterations, size) are taken;
    # kvd's statistics are not in it
    assert cli(["evaluate", *common, "--metric", "kvd", "--ref-stats", str(stats),
                "--records", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert f"kvd: cannot be computed: --ref-stats {stats} holds statistics of protocol {PROTOCOLS[name]!r}" in err
    assert "not kvd's (I3D); pass kvd's own with --metric-option kvd:ref_stats=FILE" in err
    assert cli(["evaluate", *common, "--real", str(real), "--stand-ins", "--records", str(tmp_path / "b")]) == 0
    from_file, from_real = rows_by_metric(tmp_path / "a"), rows_by_metric(tmp_path / "b")
    assert sorted(from_file) == [name]
    assert from_file[name]["value"] == pytest.approx(from_real[name]["value"], rel=1e-12)
    assert from_file[name]["protocol"] == from_real[name]["protocol"]
    assert notes_of(from_file[name])["extractor"] == DIRECT[name]["extractor"]
    assert notes_of(from_file[name])["random_weights"] is True


def test_fvmd_settings_are_read_back_from_the_protocol_name():
    from dataclasses import replace

    from cmdbench.commands.evaluate import settings_in_name
    from cmdbench.metrics.fvmd import DEFAULT_FEATURES, protocol_name

    settings = replace(DEFAULT_FEATURES, num_points=25, iters=4, acceleration="second-difference")
    assert settings_in_name(protocol_name(settings, 128)) == {"num_points": 25, "iters": 4,
                                                              "acceleration": "second-difference", "size": 128}
    assert settings_in_name(protocol_name(DEFAULT_FEATURES, 256)) == {}


def test_ref_stats_refuses_an_extractor_of_another_judge(cli, folders, tmp_path, capsys):
    real, _ = folders
    assert cli(["ref-stats", "--videos", str(real), "--metric", "jedi", "--extractor", "i3d-random-tiny",
                "--num-real", "0", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--extractor i3d-random-tiny is not an extractor of jedi" in capsys.readouterr().err


def test_kvd_statistics_are_the_i3d_preset_statistics(cli, folders, tmp_path, capsys):
    real, _ = folders
    base = ["ref-stats", "--videos", str(real), "--extractor", "i3d-random-tiny", "--num-real", "0", "--no-progress"]
    assert cli([*base, "--metric", "fvd2048_16f"]) == 0
    assert capsys.readouterr().out.startswith("computed:")
    assert cli([*base, "--metric", "kvd"]) == 0
    assert capsys.readouterr().out.startswith("cached:")  # one cache key: the same I3D features


def test_global_extractor_does_not_leak_into_jedi(cli, folders, tmp_path, capsys):
    real, fake = folders
    records = tmp_path / "runs"
    argv = ["evaluate", "--real", str(real), "--videos", str(fake), "--metric", "fvd2048_16f", "--metric", "jedi",
            "--extractor", "i3d-random-tiny", "--metric-option", "jedi:extractor=vjepa-random-tiny",
            "--bootstrap", "3", "--non-strict", "--allow-singular", "--records", str(records), "--no-progress"]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    rows = rows_by_metric(records)
    assert notes_of(rows["fvd2048_16f"])["extractor"] == "i3d-random-tiny"
    assert notes_of(rows["jedi"])["extractor"] == "vjepa-random-tiny"
    assert rows["fvd2048_16f"]["std"] > 0 and math.isnan(rows["jedi"]["std"])  # --bootstrap reached FVD only
    assert "jedi: --extractor i3d-random-tiny is not one of its extractors" in out
    assert "jedi: --bootstrap not used (jedi has no bootstrap_rounds option)" in out


def test_judge_options_route_each_flag_to_the_judges_that_take_it():
    import argparse

    import cmdbench.metrics.catalog  # noqa: F401
    from cmdbench.commands import evaluate
    from cmdbench.commands.ref_stats import judge_options
    from cmdbench.registry import METRICS

    parser = argparse.ArgumentParser()
    evaluate.add_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--videos", "v", "--metric", "jedi", "--records", "r", "--protocol", "tats",
                              "--extractor", "i3d-random-tiny", "--allow-singular", "--stand-ins"])
    fvd = judge_options("fvd2048_16f", METRICS.get("fvd2048_16f"), args)
    assert fvd.values["extractor"] == "i3d-random-tiny" and fvd.sources["extractor"] == "--extractor"
    assert fvd.values["protocol"] == "tats" and fvd.values["allow_singular"] is True and not fvd.notes
    jedi = judge_options("jedi", METRICS.get("jedi"), args, {"jedi": {"num_real": 8}})
    assert jedi.values["extractor"] == "vjepa-random-tiny" and jedi.sources["extractor"] == "--stand-ins"
    assert "protocol" not in jedi.values and "allow_singular" not in jedi.values
    assert jedi.values["num_real"] == 8 and set(jedi.values) <= set(METRICS.get("jedi").options)
    assert any("--protocol tats is an FVD preset" in n for n in jedi.notes)
    fvmd = judge_options("fvmd", METRICS.get("fvmd"), args)
    assert (fvmd.values["extractor"], fvmd.values["size"]) == ("pips-random-tiny", 128)
    with pytest.raises(ValueError, match="jedi has no option 'size'; allowed"):
        judge_options("jedi", METRICS.get("jedi"), args, {"jedi": {"size": 128}})


def test_a_judge_failing_alone_keeps_the_others(cli, folders, tmp_path, capsys):
    real, fake = folders
    records = tmp_path / "runs"
    argv = ["evaluate", "--real", str(real), "--videos", str(fake), "--metric", "jedi", "--metric", "fvmd",
            "--metric", "fvd-videomae", "--stand-ins", "--metric-option", "fvmd:size=64", "--non-strict",
            "--records", str(records), "--no-progress"]
    assert cli(argv) == 1
    err = capsys.readouterr().err
    # FVMD's size rule is named; fvd-videomae (a covariance) needs --allow-singular; jedi (none) does not
    assert "fvmd: cannot be computed:" in err and "PIPs++ needs frames of at least 128x128 pixels" in err
    assert "fvd-videomae: cannot be computed:" in err and "--allow-singular" in err
    assert sorted(rows_by_metric(records)) == ["jedi"]


def test_metric_option_for_a_metric_not_requested_is_refused(cli, folders, tmp_path, capsys):
    _, fake = folders
    assert cli(["evaluate", "--videos", str(fake), "--metric", "jedi", "--metric-option", "kvd:subsets=3",
                "--records", str(tmp_path / "r")]) == 2
    assert "--metric-option for kvd: not among the metrics of this run (jedi)" in capsys.readouterr().err
