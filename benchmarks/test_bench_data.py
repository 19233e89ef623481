"""Decoding throughput of the dataset loaders (clips/s) on synthetic mp4s, AVIs and frame directories.

Run: ``python -m pytest benchmarks/test_bench_data.py --benchmark-enable -o addopts=""``.
Each round reads every planned clip once through :func:`cmdbench.data.clips.make_loader` with 2
DataLoader workers (the machine has 2 cores): 16-frame clips, decoded with decord (mp4/avi) or Pillow
(frames), centre-cropped and resized to 64x64. ``extra_info`` holds clips/s and frames/s.
"""

from __future__ import annotations

import pytest

from cmdbench.data import synthetic
from cmdbench.data.clips import ClipSpec, iter_clips, make_loader
from cmdbench.data.datasets import folder, ucf101

NUM_VIDEOS = 32


@pytest.fixture(scope="module")
def mp4_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp4")
    synthetic.write_folder(root, NUM_VIDEOS, num_frames=48, height=240, width=320)  # UCF-101 frame size
    return root


@pytest.fixture(scope="module")
def ucf_tree(tmp_path_factory):
    return synthetic.write_fake_ucf101(tmp_path_factory.mktemp("ucf"), classes=tuple(range(8)), train_per_class=4,
                                       test_per_class=0, num_frames=48, height=240, width=320)


def _read_all(dataset, workers):
    n = 0
    for batch in iter_clips(dataset, make_loader(dataset, batch_size=8, num_workers=workers)):
        n += len(batch.ids)
    return n


@pytest.mark.parametrize("workers", [0, 2])
def test_bench_decode_mp4_folder(benchmark, mp4_folder, workers):
    ds = folder(mp4_folder, clip=ClipSpec(num_frames=16, size=(64, 64)))
    n = benchmark.pedantic(_read_all, args=(ds, workers), rounds=3, iterations=1, warmup_rounds=1)
    assert n == NUM_VIDEOS
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(workers=workers, clips_per_s=n / mean, frames_per_s=16 * n / mean,
                                source="mp4 h264 320x240 -> 64x64")


@pytest.mark.parametrize("workers", [2])
def test_bench_decode_ucf101_avi(benchmark, ucf_tree, workers):
    ds = ucf101(ucf_tree, clip=ClipSpec(num_frames=16, size=(64, 64)))
    n = benchmark.pedantic(_read_all, args=(ds, workers), rounds=3, iterations=1, warmup_rounds=1)
    assert n == 32
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(workers=workers, clips_per_s=n / mean, frames_per_s=16 * n / mean,
                                source="avi mpeg4 320x240 -> 64x64 (UCF-101 layout)")
