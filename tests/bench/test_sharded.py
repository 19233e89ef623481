"""Sharded statistics: world size 1 and 2 (gloo, CPU) give bit-identical results; resume works with any
chunk size (keyed on item indices) and never counts an item twice."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch.multiprocessing as mp

from cmdbench.bench.sharded import Shard, ShardMismatchError, sharded_stats, unit_name

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
    # the two ranks checkpointed disjoint chunks: every chunk is on disk once (unit names: first, last item, count)
    expected = [unit_name([i for i in range(c * 4, min(c * 4 + 4, N))]) for c in range(6)]
    assert sorted(p.name for p in (tmp_path / "work" / "fvd").iterdir()) == expected


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


def _killed_after(n_chunks, calls):
    def produce_then_die(items):
        if len(calls) == n_chunks:
            raise Preempted
        calls.append(list(items))
        return produce(items)
    return produce_then_die


@pytest.mark.parametrize(("first", "second"), [(4, 3), (3, 4), (4, 7), (5, 1), (2, 23)])
@pytest.mark.parametrize("keep", [True, False])
def test_resume_with_another_chunk_size_counts_every_item_once(tmp_path, first, second, keep):
    # the case: 12 items, chunk 4, killed after 2 chunks, resumed with chunk 3 used to give n = 14
    n_items = 12
    calls: list[list[int]] = []
    with pytest.raises(Preempted):
        sharded_stats(n_items, _killed_after(2, calls), {"fvd": DIM, "clipsim": 1}, tag="t", work_dir=tmp_path,
                      chunk_size=first, keep_features=keep)
    done_before = {i for c in calls for i in c}
    resumed_calls: list[list[int]] = []

    def counting(items):
        resumed_calls.append(list(items))
        return produce(items)

    resumed, items = sharded_stats(n_items, counting, {"fvd": DIM, "clipsim": 1}, tag="t", work_dir=tmp_path,
                                   chunk_size=second, keep_features=keep)
    attempted = [i for c in resumed_calls for i in c]
    assert sorted(attempted) == sorted(set(range(n_items)) - done_before)  # no item twice, none lost
    fresh, fresh_items = sharded_stats(n_items, produce, {"fvd": DIM, "clipsim": 1}, tag="t", chunk_size=first,
                                       keep_features=keep)
    assert items == fresh_items == [i for i in range(n_items) if i != 7]
    for m in ("fvd", "clipsim"):
        assert resumed[m].n == fresh[m].n == n_items - 1
        if keep:  # rebuilt from kept rows in item order: bit-identical whatever the chunking
            assert np.array_equal(resumed[m].sum, fresh[m].sum) and np.array_equal(resumed[m].outer, fresh[m].outer)
            assert np.array_equal(resumed[m].bank.array(), fresh[m].bank.array())
        else:  # merged sums: equal up to the order of float additions
            np.testing.assert_allclose(resumed[m].outer, fresh[m].outer, rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(resumed[m].sum, fresh[m].sum, rtol=1e-13, atol=1e-13)
    # a third run with yet another chunk size computes nothing
    again: list[list[int]] = []
    sharded_stats(n_items, lambda it: again.append(list(it)) or produce(it), {"fvd": DIM, "clipsim": 1}, tag="t",
                  work_dir=tmp_path, chunk_size=5, keep_features=keep)
    assert again == []


def test_a_unit_saved_for_some_metrics_only_is_recomputed(tmp_path):
    # killed between the fvd and the clipsim save of a unit: that unit is incomplete and its items are redone
    sharded_stats(8, produce, {"fvd": DIM, "clipsim": 1}, tag="t", work_dir=tmp_path, chunk_size=4)
    (tmp_path / "clipsim" / unit_name(range(4, 8))).unlink()
    calls: list[list[int]] = []
    out, _ = sharded_stats(8, lambda it: calls.append(list(it)) or produce(it), {"fvd": DIM, "clipsim": 1},
                           tag="t", work_dir=tmp_path, chunk_size=3)
    assert calls == [[4, 5], [6, 7]] and out["fvd"].n == 7  # item 7 is the producer's skip


def test_overlapping_units_are_refused(tmp_path):
    # two runs' units that share an item (a hand-copied work dir) would count it twice: refused by name
    sharded_stats(8, produce, {"fvd": DIM}, tag="t", work_dir=tmp_path / "a", chunk_size=4)
    sharded_stats(8, produce, {"fvd": DIM}, tag="t", work_dir=tmp_path / "b", chunk_size=3)
    (tmp_path / "a" / "fvd" / unit_name(range(3, 6))).write_bytes((tmp_path / "b" / "fvd" / unit_name(range(3, 6))).read_bytes())
    with pytest.raises(ShardMismatchError, match="count it twice"):
        sharded_stats(8, produce, {"fvd": DIM}, tag="t", work_dir=tmp_path / "a", chunk_size=4)


def test_skipped_items_keep_their_reason_across_a_resume(tmp_path):
    def with_reasons(items):
        feats, done = produce(items)
        return feats, done, {7: "clip 7: cannot decode frames"}

    calls: list[list[int]] = []

    def die_after_two(items):
        if len(calls) == 2:
            raise Preempted
        calls.append(list(items))
        return with_reasons(items)

    with pytest.raises(Preempted):  # item 7's unit (chunk 1) is saved before the kill
        sharded_stats(12, die_after_two, {"fvd": DIM}, tag="t", work_dir=tmp_path, chunk_size=4)
    stats, items = sharded_stats(12, produce, {"fvd": DIM}, tag="t", work_dir=tmp_path, chunk_size=5)
    assert 7 not in items and stats["fvd"].metadata["skipped"] == {"7": "clip 7: cannot decode frames"}
    # a producer that names no reason still gets its skip recorded
    plain, _ = sharded_stats(12, produce, {"fvd": DIM}, tag="t", chunk_size=4)
    assert plain["fvd"].metadata["skipped"] == {"7": "skipped by the producer (no reason given)"}
