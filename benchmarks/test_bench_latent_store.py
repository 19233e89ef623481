"""Latent precompute: peak RSS of building the sharded latent store and of one reading pass, at 1k and 10k clips.

Run: ``python -m pytest benchmarks/test_bench_latent_store.py --benchmark-enable -o addopts="" -s``.

Each (phase, size) runs in its own child process (``python benchmarks/test_bench_latent_store.py PHASE N DIR``)
so the peaks are separate; the child reports ``ru_maxrss`` after its imports and at the end. Samples have
the UCF-101 pixel setting's size: content 3x64x64 + motion 8x16x64, stored fp16 (~46 KB each with tar and
npy headers, 250 per shard), from 16x64x64 uint8 clips. The build runs the whole :func:`cmdbench.cmd.latents.build_latent_store`
path (pixels -> model space -> ``encode`` -> fp16 shards); ``encode`` is a stand-in with CMD's output
shapes and structure (softmax-over-time content frame, axis-mean motion planes + 1x1 conv + tanh), because
the real autoencoder at this geometry costs ~65 ms/clip on one core, which would make 10k clips a
10-minute run while measuring nothing about the store. The read pass is one epoch on one rank, batch 64.
Flat in dataset size means: the 10k peak exceeds the 1k peak by much less than the extra 9k samples' bytes.
The reader's own bound is about three shards (two cached, one being read and checked); with 1000-sample
shards (the default) that is ~140 MB, whatever the dataset size.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SIZES = (1000, 10_000)
BATCH = 64
SAMPLES_PER_SHARD = 250  # ~10 MB shards: 1k clips already span 4 shards, so both sizes reach the steady state
CLIP = (16, 3, 64, 64)  # (T, 3, H, W) uint8
SAMPLE_BYTES = 2 * (3 * 64 * 64 + 8 * 16 * 64)  # fp16 content + motion, without tar/npy headers


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(phase: str, n: int, root: Path) -> dict:
    """Runs in the child process: build or read a store of ``n`` samples; returns its measurements."""
    import torch

    from cmdbench.cmd.latents import build_latent_store, open_latent_loader

    torch.set_num_threads(1)
    after_import = _peak_rss_mib()
    start = time.perf_counter()
    if phase == "build":

        class UCFSizedEncoder(torch.nn.Module):
            """CMD's encode() shapes at the UCF-101 pixel setting, at a fraction of the cost."""

            def __init__(self):
                super().__init__()
                self.importance = torch.nn.Parameter(torch.randn(3, 3) / 3)  # a 1x1x1 conv, as an einsum
                self.motion = torch.nn.Conv2d(3, 8, 1)

            device = property(lambda self: torch.device("cpu"))
            dtype = property(lambda self: torch.float32)

            def encode(self, x):  # (B, 3, 16, 64, 64)
                logits = torch.einsum("oc,bcthw->bothw", self.importance, x)  # (B, 3, 16, 64, 64)
                content = (logits.softmax(dim=2) * x).sum(dim=2)  # (B, 3, 64, 64)
                grid = torch.nn.functional.avg_pool3d(x, (1, 2, 2))  # (B, 3, 16, 32, 32), patch 2
                planes = torch.cat([grid.mean(dim=4), grid.mean(dim=3)], dim=3)  # (B, 3, 16, 64)
                return content, torch.tanh(self.motion(planes))  # (B, 8, 16, 64)

        class Batch:
            def __init__(self, videos, ids):
                self.videos, self.ids = videos, ids
                self.conditions = [i % 101 for i in range(len(ids))]

        pool = torch.randint(0, 256, (256, *CLIP), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

        def batches():
            for first in range(0, n, BATCH):
                idx = list(range(first, min(first + BATCH, n)))
                yield Batch(pool[[i % len(pool) for i in idx]], [f"clip{i:06d}" for i in idx])

        torch.manual_seed(0)
        info = build_latent_store(batches(), root, UCFSizedEncoder(), None, rank=0, world_size=1, seed=0,
                                  samples_per_shard=SAMPLES_PER_SHARD, num_samples=n)
        done = info.num_samples
    else:
        loader = open_latent_loader(root, batch_size=BATCH, seed=0, rank=0, world_size=1)
        done, seen = 0, set()
        while done < n:
            batch = next(loader)
            seen.update(batch.sample_keys[: n - done])
            done += len(batch.ids)
        assert len(seen) == n, "one epoch must read every sample once"
    return {"phase": phase, "n": n, "seconds": time.perf_counter() - start, "rss_after_import_mib": after_import,
            "peak_rss_mib": _peak_rss_mib(), "samples": done,
            "store_mib": sum(p.stat().st_size for p in root.iterdir()) / 2**20}


def run_child(phase: str, n: int, root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, phase, str(n), str(root)], check=True, capture_output=True,
                         text=True, env={"OMP_NUM_THREADS": "1", **os.environ})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark
def test_bench_latent_precompute_peak_rss_flat_in_dataset_size(benchmark, tmp_path):
    results: list[dict] = []

    def measure():
        for n in SIZES:
            root = tmp_path / f"store-{n}"
            shutil.rmtree(root, ignore_errors=True)
            results.append(run_child("build", n, root))
            results.append(run_child("read", n, root))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    by = {(r["phase"], r["n"]): r for r in results}
    for r in results:
        print(f"{r['phase']:5s} n={r['n']:6d}: peak RSS {r['peak_rss_mib']:7.1f} MiB (after imports "
              f"{r['rss_after_import_mib']:6.1f}), {r['seconds']:6.1f} s, {r['n'] / r['seconds']:7.0f} clips/s, "
              f"store {r['store_mib']:6.1f} MiB")
    benchmark.extra_info.update(results=results, sample_bytes=SAMPLE_BYTES, samples_per_shard=SAMPLES_PER_SHARD)
    extra_data_mib = (SIZES[1] - SIZES[0]) * SAMPLE_BYTES / 2**20  # what O(dataset) memory would add
    for phase in ("build", "read"):
        growth = by[(phase, SIZES[1])]["peak_rss_mib"] - by[(phase, SIZES[0])]["peak_rss_mib"]
        assert growth < 0.1 * extra_data_mib, f"{phase}: peak RSS grew {growth:.0f} MiB for {extra_data_mib:.0f} MiB"


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))))
