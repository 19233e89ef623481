"""Metric options in the bench runner: FVD against `cmdbench ref-stats` statistics, end to end on CPU.

Real videos: synthetic moving shapes; extractor: the random-weight ``i3d-random-tiny`` under the ``tats``
preset (no weights needed); generator: the random miniature ``tiny-unet3d``.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import pytest

from cmdbench.bench.results import read_csv
from cmdbench.bench.runner import conditions_for, resolve, run_bench
from cmdbench.commands import bench, ref_stats
from cmdbench.config import BenchConfig, SamplingConfig, to_jsonable
from cmdbench.data.synthetic import write_folder
from cmdbench.interfaces import GeneratorSpec
from cmdbench.metrics.fvd import FVD
from cmdbench.registry import GENERATORS, load_plugins
from cmdbench.seeding import make_generators, parse_seeds

os.environ.setdefault("HF_HUB_OFFLINE", "1")
METRIC = "fvd2048_16f"
TINY_FVD = {"protocol": "tats", "extractor": "i3d-random-tiny", "strict": False, "allow_singular": True}


def parse(argv: list[str]) -> argparse.Namespace:
    """Only the two subcommands used here (``cmdbench.cli.main`` imports every subcommand)."""
    parser = argparse.ArgumentParser(prog="cmdbench")
    sub = parser.add_subparsers(dest="command")
    bench.add_parser(sub)
    ref_stats.add_parser(sub)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def real_npz(tmp_path_factory):
    """Statistics of 3 synthetic real videos by ``cmdbench ref-stats`` (tats preset, tiny extractor)."""
    root = tmp_path_factory.mktemp("fvd")
    write_folder(root / "real", 3, num_frames=16, height=16, width=16)
    out = root / "real.npz"
    args = parse(["ref-stats", "--videos", str(root / "real"), "--protocol", "tats", "--extractor",
                  "i3d-random-tiny", "--num-real", "0", "--out", str(out), "--cache-dir", str(root / "cache")])
    assert args.func(args) in (0, None)
    assert out.is_file()
    return out


def fvd_config(ref: str, **kw) -> BenchConfig:
    return BenchConfig(generator="tiny-unet3d", tiny=True, seeds="0-2",
                       sampling=SamplingConfig(num_frames=16, height=16, width=16, steps=1, batch_size=2),
                       metrics=(METRIC,), metric_options={METRIC: {**TINY_FVD, "ref_stats": ref}},
                       trackers=(), **kw)


@pytest.mark.slow
def test_bench_fvd_with_reference_statistics_then_resume(tmp_path, real_npz):
    records = tmp_path / "records"
    argv = ["bench", "--generator", "tiny-unet3d", "--tiny", "--seeds", "0-2", "--frames", "16", "--height", "16",
            "--width", "16", "--steps", "1", "--batch-size", "2", "--metric", METRIC, "--tracker", "time",
            "--records", str(records), "--run-id", "r1", "--no-progress",
            f"--metric-option={METRIC}:ref_stats={real_npz}"]
    argv += [f"--metric-option={METRIC}:{k}={str(v).lower()}" for k, v in TINY_FVD.items()]
    args = parse(argv)
    cfg = bench.config_from_args(args)
    assert cfg.options_for(METRIC) == {**TINY_FVD, "ref_stats": str(real_npz)}  # "false" -> False etc.
    assert args.func(args) == 0

    rows = read_csv(records / "r1.csv")
    fvd = rows[rows["metric"] == METRIC]
    assert len(fvd) == 1
    row = fvd.iloc[0]
    assert math.isfinite(row["value"]) and row["value"] > 0
    assert row["n"] == 3 and row["protocol"] == "tats"
    assert '"n_real": 3' in row["notes"] and '"conformant": false' in row["notes"]

    # parity: the same FVD computed directly on the same videos (same seeds, prompts, settings)
    load_plugins()
    gen = GENERATORS.get("tiny-unet3d")(GeneratorSpec(tiny=True))
    res = resolve(cfg, gen)
    seeds = parse_seeds(cfg.seeds)
    videos = gen.sample(**conditions_for(res, seeds, range(len(seeds))), num_frames=16, height=16, width=16,
                        steps=1, guidance_scale=res.guidance_scale, generator=make_generators(seeds))
    direct = FVD("tats", metric=METRIC, reference=real_npz, extractor="i3d-random-tiny", strict=False,
                 allow_singular=True)
    direct.update(videos)
    assert row["value"] == pytest.approx(direct.compute().value, rel=1e-6)

    # resume the finished run: the FVD row is kept, not duplicated, not changed
    run_bench(cfg, records, run_id="r1", progress=False)
    again = read_csv(records / "r1.csv")
    assert len(again) == len(rows)
    kept = again[again["metric"] == METRIC].iloc[0]
    assert (kept["value"], kept["config_hash"]) == (row["value"], row["config_hash"])


def test_metric_options_round_trip_and_enter_the_hash(tmp_path):
    cfg = fvd_config("real.npz")
    assert cfg.metric_options == ((METRIC, tuple(sorted({**TINY_FVD, "ref_stats": "real.npz"}.items()))),)
    hash(cfg)  # frozen and hashable
    back = BenchConfig.from_dict(to_jsonable(cfg))
    assert back == cfg
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"generator": "tiny-unet3d", "metrics": [METRIC],
                                "metric_options": {METRIC: {"ref_stats": "real.npz", "strict": False}}}))
    assert BenchConfig.load(path).options_for(METRIC) == {"ref_stats": "real.npz", "strict": False}
    from cmdbench.bench.runner import run_key

    assert run_key(fvd_config("real.npz")) != run_key(fvd_config("other.npz"))


def test_bad_metric_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not in metrics"):
        BenchConfig(generator="tiny-unet3d", metrics=(), metric_options={METRIC: {"strict": False}})
    with pytest.raises(ValueError, match="allowed a str, number, bool or null"):
        BenchConfig(generator="tiny-unet3d", metrics=(METRIC,), metric_options={METRIC: {"x": [1, 2]}})
    with pytest.raises(ValueError, match="METRIC:KEY=VALUE"):
        bench.parse_metric_option("fvd2048_16f=ref_stats")
    cfg = BenchConfig(generator="tiny-unet3d", tiny=True, seeds="0", metrics=(METRIC,),
                      metric_options={METRIC: {"ref_stat": "real.npz"}})
    with pytest.raises(ValueError, match=r"no option\(s\) \['ref_stat'\].*accepts .*'ref_stats'"):
        run_bench(cfg, tmp_path / "records", progress=False)
    assert not list((tmp_path / "records").glob("*.json"))  # refused before anything was written


def test_bench_through_codec_scores_the_decoded_mp4_pixels_and_records_the_storage(tmp_path, real_npz):
    """--through-codec: the FVD equals the one of the H.264 round-tripped videos, the storage is in the row,
    and in-memory and mp4 rows never share a config_hash (they are different numbers)."""
    from cmdbench.video import codec_round_trip

    mem = run_bench(fvd_config(str(real_npz)), tmp_path / "records", run_id="mem", progress=False)
    mp4 = run_bench(fvd_config(str(real_npz), through_codec=True), tmp_path / "records", run_id="mp4",
                    progress=False)
    mem_row, mp4_row = (df[df["metric"] == METRIC].iloc[0] for df in (mem, mp4))
    assert "mp4 libx264 crf=18 yuv420p" in mp4_row["notes"] and "in-memory uint8" in mem_row["notes"]
    assert mem_row["config_hash"] != mp4_row["config_hash"]
    cfg = fvd_config(str(real_npz))
    load_plugins()
    gen = GENERATORS.get("tiny-unet3d")(GeneratorSpec(tiny=True))
    res = resolve(cfg, gen)
    seeds = parse_seeds(cfg.seeds)
    direct = FVD("tats", metric=METRIC, reference=real_npz, extractor="i3d-random-tiny", strict=False,
                 allow_singular=True)
    for batch in ([0, 1], [2]):  # the runner's batches (batch size 2)
        videos = gen.sample(**conditions_for(res, seeds, batch), num_frames=16, height=16, width=16, steps=1,
                            guidance_scale=res.guidance_scale, generator=make_generators([seeds[i] for i in batch]))
        direct.update(codec_round_trip(videos))
    # equal up to the rare run-to-run codec noise of this x264 stack (cmdbench.video.codec_round_trip)
    assert mp4_row["value"] == pytest.approx(direct.compute().value, rel=1e-3)
    assert mp4_row["value"] != pytest.approx(mem_row["value"], rel=1e-2)


def test_bench_refuses_paired_metrics_before_writing_anything(tmp_path):
    cfg = BenchConfig(generator="tiny-unet3d", tiny=True, seeds="0-1", metrics=("psnr",), trackers=())
    with pytest.raises(ValueError, match="evaluate --videos DIR --references DIR"):
        run_bench(cfg, tmp_path / "records", progress=False)
    assert not (tmp_path / "records").exists() or not any((tmp_path / "records").iterdir())
