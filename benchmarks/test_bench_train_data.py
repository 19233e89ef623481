"""The training data path (issue 9): index sampling, start-up, loader throughput (pytest-benchmark).

Run: ``python3 -m pytest benchmarks/test_bench_train_data.py --benchmark-enable -o addopts="--import-mode=importlib" -q``.

* index sampling at n = 10.7M (WebVid-10M): :class:`EpochOrder` (what the loader uses) vs the old
  ``torch.randperm(n)[offset]`` per sample, a few calls of the latter, side by side;
* start-up with 100k listed videos: an official-layout UCF-style tree whose 100k entries are hard links
  to a few real AVIs; construction to the first index, and to the first decoded batch (2 workers);
* loader throughput at 64x64 from 320x240 UCF-style AVIs: the old serial loop (one
  ``ClipDataset[i]`` per clip in the main process, as ``cmdbench.cmd.training``'s ``fetch`` did) and
  ``make_train_loader`` with 2 workers, alternating in the same rounds; wall clips/s, CPU ms per clip
  (main process + workers), and the ratio;
* clips/s per worker at 512x1024 from 576x1024 h264 (marked ``slow``; a few videos).

Sources are a textured scene panning 2 px per frame (smoothed noise), so the codecs do real motion
compensation; flat moving shapes would decode unrealistically fast. ``extra_info`` holds the numbers;
the device is named in it (CPU model and core count): ratios are only meaningful within one run.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cmdbench.data import synthetic
from cmdbench.data.clips import ClipSpec
from cmdbench.data.datasets import ucf101
from cmdbench.data.epoch_order import EpochOrder
from cmdbench.data.prompts import ucf101_class_prompts
from cmdbench.data.readers import count_frames
from cmdbench.data.train_clips import TrainClipSpec, build_train_clips, make_train_loader
from cmdbench.video import write_mp4

WEBVID_N = 10_700_000


def _device() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch threads " \
           f"{torch.get_num_threads()}"


def panning_video(seed: int, num_frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)``: a smoothed random RGB scene seen through a window panning 2 px/frame."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, size=(height // 4 + 8, (width + 2 * num_frames) // 4 + 8, 3)).astype(np.float32)
    big = big.repeat(4, 0).repeat(4, 1)  # blocky detail at 4 px
    k = np.ones(5, np.float32) / 5  # separable box blur: edges soft enough to look like footage
    big = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 0, big)
    big = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, big)
    frames = np.stack([big[:height, 2 * t : 2 * t + width] for t in range(num_frames)]).round().astype(np.uint8)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()


def write_ucf_style(root: Path, num_videos: int, *, num_frames: int, height: int = 240, width: int = 320) -> Path:
    """An official-layout UCF-101 tree (classInd, trainlist01) with ``num_videos`` textured AVIs."""
    names = [p.class_name for p in ucf101_class_prompts()]
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    lines = []
    for i in range(num_videos):
        c = names[i % len(names)]
        rel = f"{c}/v_{c}_g{8 + i // len(names):02d}_c01.avi"
        synthetic.write_avi(root / "UCF-101" / rel, panning_video(i, num_frames, height, width))
        lines.append(f"{rel} {i % len(names) + 1}\n")
    (lists / "trainlist01.txt").write_text("".join(lines))
    return root


# --- index sampling -----------------------------------------------------------------------------------------


def _old_sample_index(seed: int, global_position: int, n: int) -> int:
    """The sampling of ``cmdbench.cmd.training`` before issue 9 (a full randperm per sample), for comparison."""
    epoch, offset = divmod(global_position, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return int(perm[offset])


@pytest.mark.benchmark(group="train-data-index")
def test_bench_index_sampling_10_7m(benchmark):
    positions = range(0, WEBVID_N, WEBVID_N // 20_000)  # 20,000 positions spread over the epoch

    def sample():
        order = EpochOrder(WEBVID_N, 0, 3)  # built once per epoch by the dataset; included here
        return [order(p) for p in positions]

    benchmark.pedantic(sample, rounds=7, iterations=1, warmup_rounds=1)
    per_index = [t / len(positions) * 1e6 for t in benchmark.stats.stats.data]
    old = []
    for p in (0, 1, 2):
        t = time.perf_counter()
        _old_sample_index(0, p, WEBVID_N)
        old.append(time.perf_counter() - t)
    benchmark.extra_info.update(
        n=WEBVID_N, us_per_index_median=statistics.median(per_index), us_per_index_min=min(per_index),
        us_per_index_max=max(per_index), old_randperm_s_per_index=old,
        speedup=statistics.median(old) / (statistics.median(per_index) * 1e-6), target_us=10,
        meets_target=statistics.median(per_index) <= 10, device=_device())


# --- start-up with 100k listed videos -------------------------------------------------------------------------

LISTED = 100_000


@pytest.fixture(scope="module")
def ucf_100k(tmp_path_factory) -> Path:
    """A UCF-style tree listing 100k videos: hard links to 8 real AVIs, ~1,000 per class folder."""
    root = tmp_path_factory.mktemp("ucf100k")
    real = write_ucf_style(root / "real", 8, num_frames=48, height=120, width=160)
    names = [p.class_name for p in ucf101_class_prompts()]
    originals = sorted((real / "UCF-101").rglob("*.avi"))
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text((real / "ucfTrainTestlist" / "classInd.txt").read_text())
    lines = []
    for c in names:
        (root / "UCF-101" / c).mkdir(parents=True)
    for i in range(LISTED):
        c = names[i % len(names)]
        rel = f"{c}/v_{c}_g{i // len(names):04d}_c01.avi"
        os.link(originals[i % len(originals)], root / "UCF-101" / rel)
        lines.append(f"{rel} {i % len(names) + 1}\n")
    (lists / "trainlist01.txt").write_text("".join(lines))
    return root


@pytest.mark.benchmark(group="train-data-startup")
def test_bench_startup_100k_listed(benchmark, ucf_100k):
    spec = TrainClipSpec(num_frames=16, size=(64, 64), clips_per_video=1, seed=0)
    to_index, first_batch = [], []

    def start():
        t = time.perf_counter()
        ds = build_train_clips("ucf101", ucf_100k, spec)
        loader = make_train_loader(ds, batch_size=8, seed=0, rank=0, world_size=1, num_workers=2)
        index = ds.video_at(0, 0)  # what the first clip will read
        to_index.append(time.perf_counter() - t)
        batch = next(iter(loader))
        first_batch.append(time.perf_counter() - t)
        assert len(ds) == LISTED and batch.videos.shape == (8, 16, 3, 64, 64) and 0 <= index < LISTED

    benchmark.pedantic(start, rounds=3, iterations=1)
    # the old path probed every listed file before step 0: time that per file on 200 of them
    files = sorted((ucf_100k / "UCF-101").rglob("*.avi"))[:200]
    t = time.perf_counter()
    for f in files:
        count_frames(f)
    probe_s = (time.perf_counter() - t) / len(files)
    benchmark.extra_info.update(
        listed=LISTED, construction_to_first_index_s=to_index, construction_to_first_batch_2_workers_s=first_batch,
        old_probe_s_per_video=probe_s, old_probe_extrapolated_s=probe_s * LISTED, target_s=30,
        meets_target=max(to_index) <= 30, device=_device())


# --- loader throughput at 64x64: the old serial loop vs 2 workers ---------------------------------------------


@pytest.fixture(scope="module")
def ucf_textured(tmp_path_factory) -> Path:
    return write_ucf_style(tmp_path_factory.mktemp("ucf_tex"), 32, num_frames=100)  # 4 s at 25 fps, 320x240


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@pytest.mark.benchmark(group="train-data-loader-64")
def test_bench_loader_vs_serial_64(benchmark, ucf_textured):
    clips, batch = 128, 8
    old = ucf101(ucf_textured, clip=ClipSpec(num_frames=16, size=(64, 64)))  # probes (not timed)
    ds = build_train_clips("ucf101", ucf_textured, TrainClipSpec(num_frames=16, size=(64, 64), clips_per_video=8))
    times: dict[str, list[float]] = {"serial": [], "loader": []}
    cpu: dict[str, list[float]] = {"serial": [], "loader": []}
    rounds = iter(range(1000))

    def serial(r: int) -> None:  # the old fetch(): sample_index per clip, ClipDataset[i], stack, per step
        n = len(old)
        for step in range(clips // batch):
            idx = [_old_sample_index(r, step * batch + j, n) for j in range(batch)]
            videos = torch.stack([old[i].video for i in idx])
            assert videos.shape == (batch, 16, 3, 64, 64)

    def loader(r: int) -> None:  # a fresh loader per round: worker start-up is included in its time
        it = iter(make_train_loader(ds, batch_size=batch, seed=0, rank=0, world_size=1,
                                    start_step=r * clips // batch, num_workers=2))
        for _ in range(clips // batch):
            assert next(it).videos.shape == (batch, 16, 3, 64, 64)
        del it  # joins the workers, so their CPU time is counted

    def one_round() -> None:
        r = next(rounds)
        for name, fn in (("serial", serial), ("loader", loader)):
            t, c, k = time.perf_counter(), time.process_time(), _children_cpu_s()
            fn(r)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c + _children_cpu_s() - k)

    benchmark.pedantic(one_round, rounds=5, iterations=1, warmup_rounds=1)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}  # [0] is the warm-up round
    info = {"clips_per_round": clips, "device": _device(), "source": "avi mpeg4 320x240 -> 16x64x64"}
    for k in times:
        info[f"{k}_clips_per_s"] = [round(clips / t, 1) for t in times[k][1:]]
        info[f"{k}_cpu_ms_per_clip"] = [round(1000 * c / clips, 2) for c in cpu[k][1:]]
    info["ratio_median"] = med["serial"] / med["loader"]
    info["ratio_per_round"] = [round(s / lo, 2) for s, lo in zip(times["serial"][1:], times["loader"][1:], strict=True)]
    benchmark.extra_info.update(info)


# --- 512x1024: clips/s per worker ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webvid_like(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hd")
    for i in range(4):
        write_mp4(root / f"clip_{i}.mp4", panning_video(100 + i, 40, 576, 1024), fps=25)
    return root


@pytest.mark.slow
@pytest.mark.benchmark(group="train-data-loader-512x1024")
@pytest.mark.parametrize("workers", [1, 2])
def test_bench_loader_512x1024(benchmark, webvid_like, workers):
    clips = 16
    ds = build_train_clips("folder", webvid_like, TrainClipSpec(num_frames=16, size=(512, 1024), clips_per_video=4))
    rounds = iter(range(1000))
    cpu = []

    def run() -> None:
        c, k = time.process_time(), _children_cpu_s()
        it = iter(make_train_loader(ds, batch_size=2, seed=0, rank=0, world_size=1,
                                    start_step=next(rounds) * clips // 2, num_workers=workers))
        for _ in range(clips // 2):
            assert next(it).videos.shape == (2, 16, 3, 512, 1024)
        del it
        cpu.append(time.process_time() - c + _children_cpu_s() - k)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    data = benchmark.stats.stats.data
    benchmark.extra_info.update(
        workers=workers, clips_per_s=[round(clips / t, 2) for t in data],
        clips_per_s_per_worker=[round(clips / t / workers, 2) for t in data],
        cpu_ms_per_clip=[round(1000 * c / clips, 1) for c in cpu[1:]],
        source="mp4 h264 576x1024 textured pan -> 16x512x1024", device=_device())
