"""The sharded latent store (cmdbench.data.latent_store): values, multi-rank builds, resume after a kill,
the read order (deterministic, reshuffled per epoch, a partition across ranks, exact start_step), errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from cmdbench.data.latent_store import (
    LatentStore,
    LatentStoreError,
    LatentStoreWriter,
    index_name,
    open_latent_loader,
    shard_name,
    stored_samples,
    wait_for_store,
)


def latents(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``i``'s fp32 latents: content (3, 4, 4), motion (2, 3, 5), values of a few units."""
    g = torch.Generator().manual_seed(1000 + i)
    return 2 * torch.randn(3, 4, 4, generator=g), torch.tanh(torch.randn(2, 3, 5, generator=g))


def condition(i: int):
    return (f"caption {i}", i, None)[i % 3]


def write(root: Path, ids: range | list[int], *, rank: int = 0, world: int = 1, per_shard: int = 4,
          finish: bool = True) -> LatentStoreWriter:
    writer = LatentStoreWriter(root, rank=rank, world_size=world, samples_per_shard=per_shard, identity={"k": 1})
    for i in ids:
        content, motion = latents(i)
        writer.write(content=content, motion=motion, condition=condition(i), sample_id=f"clip{i}")
    if finish:
        writer.finish()
    return writer


def take(loader, steps: int) -> list:
    return [next(loader) for _ in range(steps)]


def ids_of(batches) -> list[str]:
    return [i for b in batches for i in b.ids]


def test_round_trip_values_conditions_ids_and_shard_counts(tmp_path):
    write(tmp_path, range(23), per_shard=5)
    index = json.loads((tmp_path / index_name(0)).read_text())
    assert [s["count"] for s in index["shards"]] == [5, 5, 5, 5, 3] and index["complete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [index_name(0)] + [shard_name(0, k) for k in range(5)]
    batches = take(open_latent_loader(tmp_path, batch_size=1, seed=0, rank=0, world_size=1), 23)
    assert sorted(ids_of(batches)) == sorted(f"clip{i}" for i in range(23))
    for b in batches:
        i = int(b.ids[0][4:])
        content, motion = latents(i)
        assert b.content.dtype == torch.float32 and b.content.shape == (1, 3, 4, 4) and b.motion.shape == (1, 2, 3, 5)
        # stored as float16: exactly the fp16 rounding of the written values (bf16 or fp32 would differ)
        assert torch.equal(b.content[0], content.half().float()) and torch.equal(b.motion[0], motion.half().float())
        torch.testing.assert_close(b.content[0], content, rtol=1e-3, atol=1e-3)
        assert b.conditions == [condition(i)]
    assert stored_samples(tmp_path, 0) == 23


def test_multi_rank_build_in_parallel_stores_every_sample_once(tmp_path):
    parts = {0: range(0, 7), 1: range(7, 18), 2: range(18, 22)}  # uneven ranks, written concurrently
    threads = [threading.Thread(target=write, args=(tmp_path, ids), kwargs={"rank": r, "world": 3, "per_shard": 3})
               for r, ids in parts.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = LatentStore.open(tmp_path)
    assert store.num_samples == 22 and len(store.shards) == 3 + 4 + 2
    for world in (1, 2, 3, 4):
        seen = []
        for rank in range(world):
            lo, hi = store.rank_range(rank, world)
            seen += ids_of(take(open_latent_loader(tmp_path, batch_size=1, seed=5, rank=rank, world_size=world), hi - lo))
        assert Counter(seen) == Counter(f"clip{i}" for i in range(22)), world


def _epoch_orders(root, world: int, batch: int, steps: int, seed: int = 3) -> list[list[str]]:
    """Per rank, the ids of ``steps`` batches."""
    return [ids_of(take(open_latent_loader(root, batch_size=batch, seed=seed, rank=r, world_size=world), steps))
            for r in range(world)]


def test_read_order_is_deterministic_reshuffled_per_epoch_and_a_partition_across_ranks(tmp_path):
    write(tmp_path, range(30), per_shard=4)
    world, batch = 3, 5  # 10 samples per rank and epoch = 2 steps
    orders = _epoch_orders(tmp_path, world, batch, steps=4)
    assert orders == _epoch_orders(tmp_path, world, batch, steps=4)  # a pure function of (seed, step, rank)
    everything = Counter(f"clip{i}" for i in range(30))
    epoch0 = [i for rank in orders for i in rank[:10]]
    epoch1 = [i for rank in orders for i in rank[10:]]
    assert Counter(epoch0) == everything and Counter(epoch1) == everything  # nothing lost or repeated
    assert epoch0 != epoch1  # reshuffled per epoch
    assert epoch0 != [f"clip{i}" for i in range(30)]  # not the written order
    assert _epoch_orders(tmp_path, world, batch, steps=2, seed=4) != [o[:10] for o in orders]  # the seed matters
    # each rank reads a contiguous run of the epoch's shard order: about 1/world of the shards, not all
    shards_per_rank = [len({int(i[4:]) // 4 for i in rank[:10]}) for rank in orders]
    assert max(shards_per_rank) <= 4 < 8


def test_each_shard_is_read_as_one_block_in_a_fresh_order_per_epoch(tmp_path):
    write(tmp_path, range(30), per_shard=4)
    loader = open_latent_loader(tmp_path, batch_size=30, seed=0, rank=0, world_size=1)
    epochs = [[int(k.split("-")[1]) for k in next(loader).sample_keys] for _ in range(2)]  # stored sample numbers
    blocks = []
    for order in epochs:
        shards = [n // 4 for n in order]
        runs = [s for j, s in enumerate(shards) if j == 0 or s != shards[j - 1]]
        assert sorted(runs) == list(range(8))  # every shard once, its samples contiguous (memory O(shard))
        blocks.append({s: [n for n in order if n // 4 == s] for s in range(8)})
    assert any(b != sorted(b) for b in blocks[0].values())  # shuffled inside a shard
    assert any(blocks[0][s] != blocks[1][s] for s in range(7))  # and differently in the next epoch
    assert [n // 4 for n in epochs[0][::4]] != [n // 4 for n in epochs[1][::4]]  # the shard order too


def test_start_step_equals_the_tail_and_skips_whole_shards_unread(tmp_path, monkeypatch):
    write(tmp_path, range(26), per_shard=4)
    full = take(open_latent_loader(tmp_path, batch_size=3, seed=1, rank=1, world_size=2), 12)  # 13/epoch: wraps
    read: list[int] = []
    original = LatentStore.read_shard
    monkeypatch.setattr(LatentStore, "read_shard", lambda self, shard: read.append(shard) or original(self, shard))
    for k in (1, 4, 5, 9):
        read.clear()
        resumed = take(open_latent_loader(tmp_path, batch_size=3, seed=1, rank=1, world_size=2, start_step=k), 12 - k)
        assert [b.ids for b in resumed] == [b.ids for b in full[k:]], k
        assert all(torch.equal(a.content, b.content) for a, b in zip(resumed, full[k:], strict=True))
        first = full[k]
        first_shards = {int(key.split("-")[1]) // 4 for key in first.sample_keys}
        assert set(read[:len(first_shards)]) == first_shards  # the first shard opened is one batch k needs


def test_workers_give_the_same_batches(tmp_path):
    write(tmp_path, range(17), per_shard=4)
    plain = take(open_latent_loader(tmp_path, batch_size=3, seed=2, rank=0, world_size=1), 8)
    workers = take(open_latent_loader(tmp_path, batch_size=3, seed=2, rank=0, world_size=1, num_workers=2), 8)
    assert [b.sample_keys for b in workers] == [b.sample_keys for b in plain]
    assert all(torch.equal(a.motion, b.motion) for a, b in zip(workers, plain, strict=True))


def test_starting_a_loader_with_workers_leaves_the_global_rng_alone(tmp_path):
    """A DataLoader draws its workers' base seed from its generator, by default the global torch RNG: a
    resumed training run would then draw different noise than the straight run (seen in training)."""
    write(tmp_path, range(6), per_shard=4)
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    loader = open_latent_loader(tmp_path, batch_size=2, seed=2, rank=0, world_size=1, num_workers=1)
    next(loader)
    assert torch.equal(torch.rand(3), want)


_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_latent_store import write_slowly
    write_slowly({root!r}, {n})
""")


def write_slowly(root: str, n: int) -> None:
    """Writes ``n`` samples, slowing down after the 10th so the parent can kill it mid-build."""
    writer = LatentStoreWriter(root, rank=0, world_size=1, samples_per_shard=4, identity={"k": 1})
    for i in range(n):
        content, motion = latents(i)
        writer.write(content=content, motion=motion, condition=condition(i), sample_id=f"clip{i}")
        if i >= 10:
            time.sleep(0.05)
    writer.finish()


def test_build_resumes_after_a_kill_with_nothing_lost_or_repeated(tmp_path):
    n = 40
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    script = _SLOW_WRITER.format(tests=str(Path(__file__).parent), root=str(killed), n=n)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        index = killed / index_name(0)
        if index.is_file() and len(json.loads(index.read_text())["shards"]) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the writer finished (or died) before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = stored_samples(killed, 0)
    assert 12 <= stored < n and stored % 4 == 0
    with pytest.raises(LatentStoreError, match="did not finish"):
        LatentStore.open(killed)

    writer = LatentStoreWriter(killed, rank=0, world_size=1, samples_per_shard=4, identity={"k": 1})
    assert writer.stored == stored and not any(p.suffix == ".tmp" for p in killed.iterdir())  # stray partial gone
    for i in range(writer.stored, n):
        content, motion = latents(i)
        writer.write(content=content, motion=motion, condition=condition(i), sample_id=f"clip{i}")
    info = writer.finish()
    assert info.resumed_samples == stored and info.num_samples == n
    write(whole, range(n), per_shard=4)
    # deterministic tars (fixed mtime): the resumed store is byte for byte the uninterrupted one
    for k in range(n // 4):
        assert (killed / shard_name(0, k)).read_bytes() == (whole / shard_name(0, k)).read_bytes(), k
    a = take(open_latent_loader(killed, batch_size=8, seed=0, rank=0, world_size=1), 5)
    b = take(open_latent_loader(whole, batch_size=8, seed=0, rank=0, world_size=1), 5)
    assert Counter(ids_of(a)) == Counter(f"clip{i}" for i in range(n)) and ids_of(a) == ids_of(b)


def test_resume_with_other_settings_is_refused(tmp_path):
    write(tmp_path, range(6), per_shard=4, finish=False)
    with pytest.raises(LatentStoreError, match=r"index-rank00000\.json belongs to a different build.*samples_per_shard"):
        LatentStoreWriter(tmp_path, rank=0, world_size=1, samples_per_shard=3, identity={"k": 1})
    with pytest.raises(LatentStoreError, match="identity"):
        LatentStoreWriter(tmp_path, rank=0, world_size=1, samples_per_shard=4, identity={"k": 2})
    with pytest.raises(LatentStoreError, match=r"target_samples=None \(this build: 9\)"):  # another share to store
        LatentStoreWriter(tmp_path, rank=0, world_size=1, samples_per_shard=4, identity={"k": 1}, target=9)
    fresh = LatentStoreWriter(tmp_path, rank=0, world_size=1, samples_per_shard=3, identity={"k": 2}, resume=False)
    assert fresh.stored == 0 and not list(tmp_path.glob("shard-*"))


def test_corrupt_or_missing_files_give_errors_naming_the_file(tmp_path):
    def store(name: str) -> Path:
        root = tmp_path / name
        for rank, ids in enumerate((range(0, 9), range(9, 15))):
            write(root, ids, rank=rank, world=2, per_shard=4)
        return root

    with pytest.raises(LatentStoreError, match="no index-rank"):
        LatentStore.open(tmp_path)
    truncated = store("truncated")
    shard = truncated / shard_name(1, 0)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(LatentStoreError, match=rf"{shard}.*truncated"):
        LatentStore.open(truncated)

    overwritten = store("overwritten")  # same size, other bytes: caught when the shard is read
    shard = overwritten / shard_name(0, 1)
    data = bytearray(shard.read_bytes())
    data[600:700] = b"\xff" * 100  # inside the first sample's content.npy
    shard.write_bytes(bytes(data))
    loader = open_latent_loader(overwritten, batch_size=15, seed=0, rank=0, world_size=1)
    with pytest.raises(LatentStoreError, match=rf"{shard} is corrupt"):
        next(loader)

    no_index = store("no_index")
    (no_index / index_name(1)).unlink()
    with pytest.raises(LatentStoreError, match=rf"{no_index / index_name(1)} is missing"):
        LatentStore.open(no_index)
    bad_json = store("bad_json")
    (bad_json / index_name(0)).write_text("{not json")
    with pytest.raises(LatentStoreError, match=rf"{bad_json / index_name(0)} is not valid JSON"):
        LatentStore.open(bad_json)
    no_shard = store("no_shard")
    (no_shard / shard_name(0, 2)).unlink()
    with pytest.raises(LatentStoreError, match=rf"{no_shard / shard_name(0, 2)}.*missing"):
        LatentStore.open(no_shard)
    with pytest.raises(LatentStoreError, match=r"index-rank00000\.json.*rebuild"):  # resume refuses it too
        LatentStoreWriter(no_shard, rank=0, world_size=2, samples_per_shard=4, identity={"k": 1})

    small = tmp_path / "small"
    write(small, range(2))
    with pytest.raises(LatentStoreError, match="fewer than world_size=3"):
        open_latent_loader(small, batch_size=1, seed=0, rank=0, world_size=3)
    with pytest.raises(LatentStoreError, match="built with k=1, not 2"):
        open_latent_loader(small, batch_size=1, seed=0, rank=0, world_size=1, identity={"k": 2})


def test_bad_samples_are_refused_naming_the_sample(tmp_path):
    writer = LatentStoreWriter(tmp_path, rank=0, world_size=1, samples_per_shard=4)
    content, motion = latents(0)
    writer.write(content=content, motion=motion, condition=0, sample_id="ok")
    with pytest.raises(ValueError, match="'wide'.*content shape"):
        writer.write(content=torch.zeros(3, 4, 5), motion=motion, condition=0, sample_id="wide")
    with pytest.raises(ValueError, match="'nan'.*non-finite"):
        writer.write(content=content * float("nan"), motion=motion, condition=0, sample_id="nan")
    with pytest.raises(ValueError, match="'big'.*overflows float16"):
        writer.write(content=content + 1e5, motion=motion, condition=0, sample_id="big")
    with pytest.raises(TypeError, match="'cond'.*condition"):
        writer.write(content=content, motion=motion, condition=1.5, sample_id="cond")
    assert writer.finish().num_samples == 1


def test_wait_for_store_polls_until_every_rank_is_complete(tmp_path):
    write(tmp_path, range(4), rank=0, world=2)
    late = write(tmp_path, range(4, 6), rank=1, world=2, finish=False)
    with pytest.raises(LatentStoreError, match=r"ranks \[1\] did not finish"):
        wait_for_store(tmp_path, world_size=2, poll_s=0.01, timeout_s=0.05)
    timer = threading.Timer(0.2, late.finish)
    timer.start()
    store = wait_for_store(tmp_path, world_size=2, poll_s=0.02, timeout_s=30)
    assert store.num_samples == 6
