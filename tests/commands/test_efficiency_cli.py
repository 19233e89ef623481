"""``cmdbench efficiency``: JSON shape, counts equal the metric module's, records, clear errors."""

from __future__ import annotations

import json

import pytest

from cmdbench.bench.results import load_records
from cmdbench.cli import main
from cmdbench.interfaces import GeneratorSpec
from cmdbench.metrics.efficiency import count_generator_cost
from cmdbench.registry import GENERATORS, load_plugins

SMALL = ["--generators", "tiny-unet3d", "--frames", "4", "--height", "32", "--width", "32", "--steps", "3"]


def test_count_only_json_matches_direct_count(capsys):
    assert main(["efficiency", *SMALL, "--count-only", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    e = out["tiny-unet3d"]
    assert e["sampling_time_s"] is None and e["peak_memory_gib"] is None and e["status"] == "ok"
    assert "predicted" not in e
    load_plugins()
    gen = GENERATORS.get("tiny-unet3d")(GeneratorSpec(device="meta"))
    direct = count_generator_cost(gen, 4, 32, 32, 3)
    assert e["tmacs_paper"] == pytest.approx(direct.paper_tmacs) and e["tmacs_paper"] > 0
    assert e["tflops_true"] == pytest.approx(direct.true_tflops) and e["params"] == direct.params


@pytest.mark.slow
def test_measured_run_writes_records(tmp_path, capsys):
    assert main(["efficiency", *SMALL, "--warmup", "0", "--records", str(tmp_path)]) == 0
    assert "TMAC paper convention" in capsys.readouterr().out
    df = load_records(tmp_path)
    metrics = set(df["metric"])
    assert {"tmacs_paper", "tflops_true", "params", "sampling_time", "sampling_time_excl_vae_decoder",
            "peak_memory", "peak_memory_excl_vae_decoder"} <= metrics
    assert any(m.startswith("stage_time/") for m in metrics)
    units = dict(zip(df["metric"], df["unit"], strict=True))
    assert units["sampling_time"] == "s/video" and units["peak_memory"] == "GiB"
    whole = df.set_index("metric").loc["sampling_time"]
    assert whole["protocol"].startswith("perf_counter") and whole["n"] == 1
    assert (df["generator"] == "tiny-unet3d").all() and (df["source"] == "measured").all()


def test_predict_adds_memory_and_roofline_times_equal_to_a_direct_prediction(capsys):
    from cmdbench.metrics.memory_prediction import GIB
    from cmdbench.metrics.roofline import get_gpu, predict_sampling_cost

    assert main(["efficiency", *SMALL, "--count-only", "--predict", "--batch-sizes", "1,2", "--gpus",
                 "A100-40GB,H200", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["tiny-unet3d"]["predicted"]
    load_plugins()
    mem, time = predict_sampling_cost(GENERATORS.get("tiny-unet3d")(GeneratorSpec(device="meta")), num_frames=4,
                                      height=32, width=32, steps=3)
    assert pred["memory_gib@b1"]["peak"] == pytest.approx(mem.peak / GIB, rel=1e-12)
    assert pred["memory_gib@b2"]["weights"] == pytest.approx(mem.weights / GIB, rel=1e-12)
    assert pred["memory_gib@b2"]["peak_excl_vae_decoder"] > pred["memory_gib@b1"]["peak_excl_vae_decoder"]
    assert set(pred["time_s"]) == {"A100-40GB", "H200"}
    assert pred["time_s"]["H200"]["total"] == pytest.approx(time.time(get_gpu("H200")), rel=1e-12)
    assert main(["efficiency", *SMALL, "--count-only", "--predict", "--mixed-precision", "--json"]) == 0
    amp = json.loads(capsys.readouterr().out)["tiny-unet3d"]["predicted"]
    # float32 weights: about twice the fp16 ones (integer buffers and 512-byte blocks do not double)
    assert amp["memory_gib@b1"]["weights"] == pytest.approx(2 * pred["memory_gib@b1"]["weights"], rel=0.03)
    assert "time_s" not in amp and amp["precision"].startswith("float32 weights")
    assert main(["efficiency", *SMALL, "--count-only", "--predict", "--gpus", "V100"]) == 2
    assert "unknown ['V100']" in capsys.readouterr().err


def test_unknown_generator_and_bad_values_are_clear_errors(capsys):
    assert main(["efficiency", "--generators", "tiny-unet3e", "--count-only"]) == 2
    err = capsys.readouterr().err
    assert "unknown generator 'tiny-unet3e'" in err and "tiny-unet3d" in err
    assert main(["efficiency", *SMALL, "--count-only", "--batch-sizes", "0"]) == 2
    assert "--batch-sizes=0" in capsys.readouterr().err
