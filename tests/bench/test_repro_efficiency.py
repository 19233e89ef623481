"""The efficiency reproduction end to end on the reference miniature: records, tables, figures, missing names."""

from __future__ import annotations

import shutil

import pytest

from cmdbench.bench.paper_numbers import DEFAULT_OUT
from cmdbench.bench.repro_efficiency import parse_setting, run
from cmdbench.bench.results import load_records


@pytest.mark.slow
def test_reproduction_on_the_miniature(tmp_path, capsys):
    (tmp_path / "paper").mkdir()
    shutil.copy(DEFAULT_OUT, tmp_path / "paper" / "cmd_arxiv_v1.csv")
    code = run(["--generators", "tiny-unet3d,no-such-model", "--extra", "", "--skip-training",
                "--measure-setting", "32x32x4:2", "--warmup", "0", "--results", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "not registered (skipped): no-such-model" in out
    df = load_records(tmp_path / "records")
    counted = df[(df["metric"] == "tmacs_paper") & (df["device_name"] == "meta")]
    assert set(counted["steps"]) == {50, 100}
    per_step = counted.set_index("steps")["value"]
    assert per_step[100] == pytest.approx(2 * per_step[50])  # denoiser calls scale with steps
    measured = df[df["metric"] == "sampling_time"]
    assert len(measured) == 1 and measured["height"].iloc[0] == 32 and measured["steps"].iloc[0] == 2
    md = (tmp_path / "tables" / "efficiency.md").read_text()
    assert "tiny-unet3d" in md and "939.0" in md
    assert (tmp_path / "figures" / "efficiency_fig1.png").is_file()
    assert (tmp_path / "figures" / "efficiency_fig6.pdf").is_file()


def test_setting_parser_errors_are_clear():
    assert parse_setting("64x128x16:2").width == 128
    with pytest.raises(ValueError, match="write HxWxT:steps"):
        parse_setting("64x128")
