"""Quality reproductions end to end on synthetic data (--tiny), the missing-input check, and resume."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from cmdbench.bench.repro_quality import MissingInputsError, paper_number, reproduce
from cmdbench.bench.reproduce import load_reproductions
from cmdbench.bench.results import load_records

ENV = ("CMDBENCH_UCF101_ROOT", "CMDBENCH_WEBVID_ROOT", "CMDBENCH_WEBVID_CSV", "CMDBENCH_MSRVTT_ROOT",
       "CMDBENCH_CMD_CHECKPOINT", "CMDBENCH_CMD_T2V_CHECKPOINT", "CMDBENCH_CMD_WEBVID_CHECKPOINT")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(table, tmp_path, *extra):
    args = ["--tiny", "--records", str(tmp_path / "rec"), "--tables", str(tmp_path / "tab"),
            "--work-dir", str(tmp_path / "work"), "--num-workers", "0", *extra]
    assert reproduce(table, args) == 0
    return load_records(tmp_path / "rec")


def test_registered():
    assert {"ucf101", "msrvtt", "webvid", "ablations"} <= set(load_reproductions().names())


def test_missing_inputs_are_listed_together_before_any_work(tmp_path, monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CMDBENCH_CACHE", str(tmp_path / "empty-cache"))  # no weight files there
    with pytest.raises(MissingInputsError) as err:
        reproduce("webvid", ["--records", str(tmp_path / "rec"), "--work-dir", str(tmp_path / "w")])
    msg = str(err.value)
    for needle in ("--webvid-root", "CMDBENCH_WEBVID_ROOT", "--checkpoint", "CMDBENCH_CMD_WEBVID_CHECKPOINT",
                   "i3d_pretrained_400", "--i3d-weights", "clip_vit_b32", "cmdbench weights fetch", "--tiny"):
        assert needle in msg, needle
    assert not (tmp_path / "rec").exists() and not (tmp_path / "w").exists()
    with pytest.raises(MissingInputsError, match="does not exist"):
        reproduce("ucf101", ["--parts", "cond2048", "--ucf101-root", str(tmp_path / "nope"), "--checkpoint", "x.pt"])


def test_ablations_needs_the_lpips_backbone_and_frames_lpips_can_score(tmp_path, monkeypatch):
    from cmdbench.perceptual import check_frame_size as _check_lpips_size
    from cmdbench.perceptual import load_lpips

    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CMDBENCH_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingInputsError) as err:
        reproduce("ablations", ["--records", str(tmp_path / "rec")])
    msg = str(err.value)
    assert "cmdbench weights fetch torchvision_alexnet_imagenet1k_v1" in msg
    assert "CMDBENCH_WEIGHTS_TORCHVISION_ALEXNET_IMAGENET1K_V1" in msg
    model = load_lpips("alex", backbone="random")
    _check_lpips_size(model, 31, 40)  # AlexNet's smallest frames
    with pytest.raises(ValueError, match="LPIPS cannot score 16x16 frames"):
        _check_lpips_size(model, 16, 16)


def test_paper_numbers_are_found():
    assert paper_number("Table 1", "cond2048", "fvd") == (107.0, 9.0)
    assert paper_number("Table 1", "cond10k", "fvd") == (73.0, 2.0)
    assert paper_number("Table 1", "zeroshot", "fvd") == (504.0, None)
    assert paper_number("Table 2", "msrvtt", "clipsim") == (0.2894, None)
    assert paper_number("Table 11", "cfg 10.0", "fvd") == (245.2, None)
    assert paper_number("Table 4a", "reconstruction", "fvd") == (7.72, None)


@pytest.mark.slow
def test_ucf101_tiny_end_to_end_and_resume(tmp_path, capsys):
    df = _tiny("ucf101", tmp_path)
    assert sorted(df["notes"].str.split(";").str[0]) == ["Table 1 cond10k", "Table 1 cond2048", "Table 1 zeroshot"]
    assert df["value"].map(math.isfinite).all() and (df["value"] >= 0).all() and df["std"].notna().all()
    n = dict(zip(df["notes"].str.split(";").str[0], df["n"], strict=True))
    assert n == {"Table 1 cond2048": 6, "Table 1 cond10k": 8, "Table 1 zeroshot": 7}
    assert df["notes"].str.contains("TINY").all() and df["notes"].str.contains("n_real=").all()
    table = (tmp_path / "tab" / "quality_ucf101_tiny.md").read_text()
    assert "107.0 ± 9.0" in table and "TINY" in table
    meta = json.loads(next((tmp_path / "rec").glob("*.json")).read_text())
    assert any(r["clips_planned"] == 9 for r in meta["data_reports"].values())
    # a second run reuses the cached real statistics and the sampled chunks: same numbers, no sampling
    capsys.readouterr()
    df2 = _tiny("ucf101", tmp_path)
    out = capsys.readouterr().out
    assert "computed;" not in out and out.count("(cached;") == 3
    again = df2[df2["run_id"] != df["run_id"].iloc[0]].sort_values("notes")["value"].tolist()
    assert again == df.sort_values("notes")["value"].tolist()


@pytest.mark.slow
def test_msrvtt_webvid_ablations_tiny(tmp_path):
    df = _tiny("msrvtt", tmp_path)
    assert df["metric"].tolist() == ["clipsim"] and -1 <= df["value"].iloc[0] <= 1 and df["n"].iloc[0] == 6
    df = _tiny("webvid", tmp_path)
    web = df[df["dataset"] == "WebVid-10M"]
    assert sorted(set(web["guidance_scale"])) == [7.0, 9.0]
    assert len(web) == 6  # cfg 7 (Table 11) + cfg 9 (Tables 3 and 11), FVD and CLIPSIM each
    t3 = web[web["notes"].str.startswith("Table 3")]
    assert sorted(t3["metric"]) == ["clipsim", "fvd"]
    df = _tiny("ablations", tmp_path)
    row = df[df["notes"].str.startswith("Table 4a")].iloc[0]
    assert row["generator"] == "cmd-tiny autoencoder" and row["n"] == 6 and math.isfinite(row["value"])
    tables = sorted(p.name for p in (tmp_path / "tab").iterdir())
    assert tables == ["quality_ablations_tiny.md", "quality_msrvtt_tiny.md", "quality_webvid_tiny.md"]
    assert isinstance(pd.read_csv(next((tmp_path / "rec").glob("*.csv"))), pd.DataFrame)


@pytest.mark.slow
def test_bad_input_policy_reaches_the_run_record(tmp_path):
    _tiny("ucf101", tmp_path, "--parts", "cond2048")
    ucf = tmp_path / "work" / "synthetic" / "ucf101"
    bad = ucf / "UCF-101" / "Archery" / "v_Archery_g20_c01.avi"
    bad.write_bytes(b"")
    with open(ucf / "ucfTrainTestlist" / "trainlist01.txt", "a") as f:
        f.write("Archery/v_Archery_g20_c01.avi 3\r\n")
    with pytest.raises(ValueError, match=r"v_Archery_g20_c01\.avi.*empty"):
        _tiny("ucf101", tmp_path, "--parts", "cond2048")
    df = _tiny("ucf101", tmp_path, "--parts", "cond2048", "--on-bad-input", "skip")
    newest = max((tmp_path / "rec").glob("*.json"), key=lambda p: p.stat().st_mtime)
    reports = json.loads(newest.read_text())["data_reports"]
    (report,) = reports.values()
    assert report["num_skipped"] == 1 and report["skipped"][0]["source"].endswith("v_Archery_g20_c01.avi")
    assert report["listed"] == 10 and report["usable"] == 9
    assert (tmp_path / "tab" / "quality_ucf101_tiny.md").read_text().count("Skipped inputs") == 1
    assert len(df) == 2


def test_reproduction_defaults_to_the_preset_of_cmds_release():
    from cmdbench.bench.repro_quality import build_parser

    for table in ("ucf101", "webvid", "ablations"):
        assert build_parser(table).parse_args([]).fvd_preset == "videogpt"
    assert build_parser("ucf101").parse_args(["--fvd-preset", "stylegan-v"]).fvd_preset == "stylegan-v"


def test_clipsim_rows_count_truncated_prompts(tmp_path):
    # the streaming CLIPSIM counts prompts CLIP cut to 77 tokens; the reproduction path used to drop the count
    from types import SimpleNamespace

    from cmdbench.bench.repro_quality import FakeItem, Run, _clipsim_note, build_parser
    from cmdbench.bench.sharded import Shard

    class NoiseT2V:  # a stand-in text-to-video generator: seeded noise, so the test needs no model
        name, conditioning = "noise-t2v", "text"
        defaults = SimpleNamespace(num_frames=2, height=16, width=16, steps=1, guidance_scale=None)

        def sample(self, *, prompts, num_frames, height, width, steps, generator, guidance_scale):
            return torch.stack([torch.randint(0, 256, (num_frames, 3, height, width), generator=g,
                                              dtype=torch.uint8) for g in generator])

    args = build_parser("msrvtt").parse_args(["--tiny", "--work-dir", str(tmp_path), "--batch-size", "2"])
    run = Run("msrvtt", args, Shard(), tmp_path, "r")
    gen = NoiseT2V()
    long_prompt = " ".join(["a very long caption"] * 40)  # far beyond 77 tokens
    items = [FakeItem(0, prompt="fireworks"), FakeItem(1, prompt=long_prompt), FakeItem(2, prompt="a dog")]
    fake = run.fake_statistics(gen, items, clip=run.clip(), label="t")
    assert fake["stats"]["prompt_truncated"].bank.array()[:, 0].tolist() == [0.0, 1.0, 0.0]
    assert _clipsim_note(fake).startswith("prompts_truncated=1 of 3")


def test_ablations_reconstruction_rows_equal_the_pair_scores_and_survive_a_preemption(tmp_path, monkeypatch):
    """Table 4a's psnr/ssim/lpips rows: the mean and sample std over clips of each reconstruction's scores
    against its own input clip, recomputed here from the very pairs the run scored (PSNR by a float64
    formula of its own); a run stopped after its first chunk resumes without losing or repeating a clip."""
    import numpy as np

    from cmdbench.metrics import reconstruction
    from cmdbench.perceptual import load_lpips

    original, pairs, state = reconstruction.reconstruction_scores, [], {"calls": 0, "fail_at": 2}

    def spy(videos, references, *, lpips_model=None):
        state["calls"] += 1
        if state["calls"] == state["fail_at"]:
            raise RuntimeError("preempted")
        pairs.append((videos.clone(), references.clone()))
        return original(videos, references, lpips_model=lpips_model)

    monkeypatch.setattr(reconstruction, "reconstruction_scores", spy)
    small = ("--chunk-size", "2", "--extract-batch-size", "2")  # 6 clips: 3 units of 2
    with pytest.raises(RuntimeError, match="preempted"):
        _tiny("ablations", tmp_path, *small)
    assert len(pairs) == 1  # the first unit is on disk
    state["fail_at"] = None
    df = _tiny("ablations", tmp_path, *small)
    assert state["calls"] == 4 and len(pairs) == 3  # only the two missing units were computed
    rows = df.set_index("metric")
    assert list(rows.index) == ["fvd", "psnr", "ssim", "lpips"] and (rows["n"] == 6).all()
    assert rows.loc["psnr", "unit"] == "dB" and rows["higher_is_better"].tolist() == [False, True, True, False]
    assert rows.loc["lpips", "protocol"] == "lpips-v0.1-alex-RANDOM-backbone/frame-mean"
    assert rows.loc["psnr", "protocol"] == reconstruction.PSNR.protocol

    rec = torch.cat([r for r, _ in pairs])  # (6, 8, 3, 32, 32) uint8, every clip once
    ref = torch.cat([x for _, x in pairs])
    assert rec.shape == (6, 8, 3, 32, 32) and not torch.equal(rec, ref)
    assert len({x.numpy().tobytes() for x in ref}) == 6  # six distinct input clips: none lost or repeated
    mse = ((rec.double() - ref.double()) ** 2).flatten(2).mean(2).numpy()  # (6, 8) per frame, in levels^2
    expected = {"psnr": (10 * np.log10(255.0**2 / mse)).mean(1)}
    fresh = original(rec, ref, lpips_model=load_lpips("alex", backbone="random"))  # a separately loaded model
    expected |= {"ssim": fresh["ssim"], "lpips": fresh["lpips"]}
    for name, per_clip in expected.items():
        rel = 1e-6 if name == "lpips" else 1e-9  # LPIPS runs in float32, here on 48 frames per call, there on 16
        assert rows.loc[name, "value"] == pytest.approx(per_clip.mean(), rel=rel), name
        assert rows.loc[name, "std"] == pytest.approx(per_clip.std(ddof=1), rel=rel), name
    table = (tmp_path / "tab" / "quality_ablations_tiny.md").read_text()
    psnr_line = next(line for line in table.splitlines() if "psnr [dB]" in line)
    assert psnr_line.split("|")[4].strip() == "-"  # the paper reports no PSNR

    # a third run finds every unit on disk: nothing is scored again, and every row (FVD too) is unchanged
    df3 = _tiny("ablations", tmp_path, *small)
    assert state["calls"] == 4
    newest = df3[df3["run_id"] != df["run_id"].iloc[0]]
    newest = newest[newest["run_id"] == newest["run_id"].iloc[-1]].set_index("metric")
    assert newest["value"].tolist() == rows["value"].tolist() and newest["std"].tolist() == rows["std"].tolist()
