"""Sharded statistics: world size 1 and 2 (gloo, CPU) give bit-identical results; resume works."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch.multiprocessing as mp

from cmdbench.bench.sharded import Shard, ShardMismatchError, sharded_stats

N, DIM = 23, 3


def produce(items):
    """Features that depend only on the item index (like a per-seed sample), one item skipped."""
    kept = [i for i in items if i != 7]
    x = np.stack([np.sin(np.arange(DIM) * 0.7 + i * 1.3) * (1 + i % 5) for i in kept]) if kept else np.zeros((0, DIM))
    return {"fvd": x, "clipsim": x[:, :1] * 0.1}, kept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, work_dir, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        stats, items = sharded_stats(N, produce, {"fvd": DIM, "clipsim": 1}, tag="t", work_dir=work_dir,
                                     chunk_size=4)
        if rank == 0:
            s = stats["fvd"]
            np.savez(os.path.join(out_dir, "out.npz"), n=s.n, sum=s.sum, outer=s.outer, items=np.array(items),
                     feats=s.bank.array(), clip=stats["clipsim"].sum)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_world_size_1_and_2_identical(tmp_path):
    single, items = sharded_stats(N, produce, {"fvd": DIM, "clipsim": 1}, tag="t", chunk_size=4)
    assert items == [i for i in range(N) if i != 7] and single["fvd"].n == N - 1
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "work"), str(tmp_path)), nprocs=2, join=True)
    out = np.load(tmp_path / "out.npz")
    assert int(out["n"]) == single["fvd"].n
    assert np.array_equal(out["sum"], single["fvd"].sum)  # bit-identical, not merely close
    assert np.array_equal(out["outer"], single["fvd"].outer)
    assert np.array_equal(out["feats"], single["fvd"].bank.array())
    assert np.array_equal(out["clip"], single["clipsim"].sum)
    assert out["items"].tolist() == items
    # the two ranks checkpointed disjoint chunks: every chunk is on disk once
    assert sorted(p.name for p in (tmp_path / "work" / "fvd").iterdir()) == [f"chunk_{c:06d}.npz" for c in range(6)]


class Preempted(Exception):
    pass


def test_resume_uses_checkpoints_and_refuses_other_tags(tmp_path):
    calls = []

    def preempted_after_three(items):
        if len(calls) == 3:
            raise Preempted
        calls.append(list(items))
        return produce(items)

    with pytest.raises(Preempted):
        sharded_stats(N, preempted_after_three, {"fvd": DIM, "clipsim": 1}, tag="t", work_dir=tmp_path,
                      chunk_size=4)
    assert len(list((tmp_path / "fvd").iterdir())) == 3

    def counting(items):
        calls.append(list(items))
        return produce(items)

    resumed, _ = sharded_stats(N, counting, {"fvd": DIM, "clipsim": 1}, tag="t", work_dir=tmp_path, chunk_size=4)
    assert [c[0] for c in calls[3:]] == [12, 16, 20]  # only the unfinished chunks were computed
    fresh, _ = sharded_stats(N, produce, {"fvd": DIM, "clipsim": 1}, tag="t", chunk_size=4)
    assert np.array_equal(resumed["fvd"].outer, fresh["fvd"].outer) and resumed["fvd"].n == fresh["fvd"].n
    with pytest.raises(ShardMismatchError, match="another run"):
        sharded_stats(N, produce, {"fvd": DIM, "clipsim": 1}, tag="other-protocol", work_dir=tmp_path, chunk_size=4)


def test_other_ranks_chunks_are_read_from_a_shared_work_dir(tmp_path):
    with pytest.raises(RuntimeError, match="computed by no rank"):  # rank 1 alone: rank 0's chunks missing
        sharded_stats(N, produce, {"fvd": DIM}, tag="t", work_dir=tmp_path, chunk_size=4, shard=Shard(1, 2))
    both, _ = sharded_stats(N, produce, {"fvd": DIM}, tag="t", work_dir=tmp_path, chunk_size=4, shard=Shard(0, 2))
    fresh, _ = sharded_stats(N, produce, {"fvd": DIM}, tag="t", chunk_size=4)
    assert np.array_equal(both["fvd"].outer, fresh["fvd"].outer)
    with pytest.raises(RuntimeError, match="computed by no rank"):
        sharded_stats(N, produce, {"fvd": DIM}, tag="t", work_dir=tmp_path / "empty", chunk_size=4, shard=Shard(0, 2))
