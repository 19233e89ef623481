"""The command line end to end on tiny-unet3d: list, sample, bench, table, plot, compare, reproduce."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cmdbench.bench.results import load_records, write_table_csv
from cmdbench.cli import build_parser, main
from cmdbench.video import read_video

SMALL = ["--tiny", "--frames", "4", "--height", "8", "--width", "8", "--steps", "1"]


def test_help_lists_commands_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("list", "sample", "bench", "table", "plot", "compare", "reproduce"):
        assert cmd in out
    for name in ("sample", "bench", "table", "plot", "compare", "reproduce"):
        sub = build_parser()._subparsers._group_actions[0].choices[name]
        assert "examples:" in sub.format_help()


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-unet3d " in out and "reference miniature" in out
    assert "reproductions" in out and "demo" in out


def test_sample_writes_mp4s_and_grid(tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", "tiny-unet3d", "--seeds", "0-2", *SMALL, "--prompt", "a red car", "--out", str(out)]) == 0
    # the folder holds the videos only (so `evaluate --videos samples/` scores it under the strict policy)
    assert sorted(p.name for p in out.iterdir()) == ["seed-000000.mp4", "seed-000001.mp4", "seed-000002.mp4"]
    assert read_video(out / "seed-000001.mp4").shape == (4, 3, 8, 8)
    from PIL import Image

    grid = tmp_path / "samples-grid.png"  # beside the folder
    assert Image.open(grid).size == (4 * 10 + 2, 3 * 10 + 2)  # 4 frames x 3 seeds, 2 px padding
    assert str(grid) in capsys.readouterr().out


def test_bad_input_gives_one_clear_error(tmp_path, capsys):
    assert main(["sample", "tiny-unet", "--tiny", "--out", str(tmp_path)]) == 2
    assert "unknown generator 'tiny-unet'. Did you mean 'tiny-unet3d'" in capsys.readouterr().err
    assert main(["bench", "--generator", "tiny-unet3d", "--seeds", "5-1", "--records", str(tmp_path)]) == 2
    assert "reversed seed range '5-1'" in capsys.readouterr().err
    assert main(["table", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["reproduce", "dmeo"]) == 2
    assert "Did you mean 'demo'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bench_records(tmp_path_factory):
    """Two bench runs of tiny-unet3d (a reference and a current one) via the CLI."""
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "bench.json"
    cfg.write_text(json.dumps({"generator": "tiny-unet3d", "seeds": "0-3", "tiny": True,
                               "sampling": {"num_frames": 4, "height": 8, "width": 8, "steps": 1, "batch_size": 2}}))
    for name in ("reference", "current"):
        assert main(["bench", "--config", str(cfg), "--records", str(root / name), "--run-id", name,
                     "--no-progress"]) == 0
    return root


def test_bench_writes_records_and_meta(bench_records):
    df = load_records(bench_records / "current")
    assert set(df["metric"]) >= {"sampling_time", "peak_memory"}
    assert set(df["seeds"]) == {"0-3"} and set(df["batch_size"]) == {2}
    meta = json.loads((bench_records / "current" / "current.json").read_text())
    assert meta["complete"] and meta["environment"]["torch_version"]


def test_bench_resume_flag_finds_nothing_to_resume(bench_records, capsys):
    assert main(["bench", "--generator", "tiny-unet3d", *SMALL, "--seeds", "0", "--tracker", "time",
                 "--records", str(bench_records / "other"), "--resume", "--no-progress"]) == 0
    assert "starting a new run" in capsys.readouterr().out


def test_table_and_plot(bench_records, tmp_path, capsys):
    assert main(["table", str(bench_records / "current")]) == 0
    out = capsys.readouterr().out
    assert "| generator" in out and "sampling_time" in out and "tiny-unet3d" in out
    assert main(["table", str(bench_records / "current"), "--metric", "sampling_time", "--out",
                 str(tmp_path / "t")]) == 0
    assert (tmp_path / "t.md").exists() and r"\toprule" in (tmp_path / "t.tex").read_text()
    assert main(["table", str(bench_records / "current"), "--metric", "fvd"]) == 2
    assert "unknown metric ['fvd']" in capsys.readouterr().err
    assert main(["plot", str(bench_records), "--metric", "sampling_time", "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f.png").exists() and (tmp_path / "f.pdf").exists()
    assert main(["plot", str(bench_records), "--metric", "peak_memory", "--kind", "trend",
                 "--out", str(tmp_path / "trend")]) == 0


def test_compare_exit_codes(bench_records, tmp_path, capsys):
    ref, cur = bench_records / "reference", bench_records / "current"
    # Same config on the same machine: rows pair up; a loose tolerance makes them all unchanged.
    assert main(["compare", str(ref), str(cur), "--tolerance", "10"]) == 0
    out = capsys.readouterr().out
    assert "unchanged" in out and "0 regressed" in out
    # A doctored current record that is 3x slower must fail (timings are gated on >= 3 raw repeats per side).
    def repeats(df, factor):
        timed = df["metric"] == "sampling_time"
        v = df.loc[timed, "value"].iloc[0] * factor
        return df.assign(value=df["value"].where(~timed, v),
                         values=df["values"].where(~timed, f"[{v}, {v * 1.01}, {v * 0.99}]"))

    write_table_csv(pd.DataFrame(repeats(load_records(ref), 1)), tmp_path / "ref" / "ref.csv")
    slow = repeats(load_records(ref), 3).assign(created_utc="2099-01-01T00:00:00Z")
    write_table_csv(pd.DataFrame(slow), tmp_path / "slow" / "slow.csv")
    assert main(["compare", str(tmp_path / "ref"), str(tmp_path / "slow"), "--tolerance", "sampling_time=0.5",
                 "--tolerance", "1000"]) == 1
    assert "regressed" in capsys.readouterr().out


@pytest.mark.slow
def test_reproduce_demo_renders_table_and_figure(tmp_path, capsys):
    assert main(["reproduce", "demo", "--out-root", str(tmp_path), "--seeds", "0-1", "--steps", "1",
                 "--no-progress"]) == 0
    table = (tmp_path / "results" / "tables" / "demo.md").read_text()
    assert "tiny-unet3d-class" in table and "sampling_time" in table
    assert (tmp_path / "results" / "figures" / "demo_sampling_time.pdf").exists()
    from cmdbench.bench.render import render_all

    before = table
    render_all(tmp_path, only=["demo"])
    assert (tmp_path / "results" / "tables" / "demo.md").read_text() == before  # re-render is identical
