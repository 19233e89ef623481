"""Real-set statistics of registered datasets: cmdbench ref-stats --dataset, cache reuse, no protocol mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdbench.bench.reference_sets import data_key, open_real_dataset, parse_size, real_statistics
from cmdbench.bench.tiny_judges import TinyPoolExtractor, tiny_protocol
from cmdbench.cli import main
from cmdbench.data import synthetic
from cmdbench.metrics.frechet import FeatureStats
from cmdbench.metrics.fvd import FVD
from cmdbench.metrics.reference import ReferenceCache


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    return synthetic.write_fake_ucf101(tmp_path_factory.mktemp("ucf"), classes=(0, 1), train_per_class=3,
                                       test_per_class=0, num_frames=17, height=16, width=24)


def test_parse_size():
    assert parse_size("64") == (64, 64) and parse_size("512x1024") == (512, 1024) and parse_size(None) is None
    with pytest.raises(ValueError, match="HxW"):
        parse_size("64x")


def test_statistics_equal_a_direct_computation_and_are_cached(ucf, tmp_path):
    ex = TinyPoolExtractor(dim=4)
    fvd = FVD(tiny_protocol(5, 5, 8, ex), extractor=ex)
    ds = open_real_dataset("ucf101", ucf, fvd.protocol, size=(16, 16))
    direct = FeatureStats(4)
    direct.update(ex.extract(torch.stack([ds[i].video for i in range(len(ds))])))
    cache = ReferenceCache(tmp_path / "cache")
    first = real_statistics(ds, fvd, cache=cache, work_dir=tmp_path / "work", num_workers=0, chunk_size=2)
    assert not first.cached and first.stats.n == 5 and first.path.is_file()
    assert np.allclose(first.stats.sum, direct.sum, rtol=1e-12) and np.allclose(first.stats.outer, direct.outer)
    again = real_statistics(open_real_dataset("ucf101", ucf, fvd.protocol, size=(16, 16)), fvd, cache=cache)
    assert again.cached and np.array_equal(again.stats.outer, first.stats.outer)
    other = open_real_dataset("ucf101", ucf, fvd.protocol, size=(12, 12))  # another clip size: another key
    assert data_key(other) != data_key(ds)


@pytest.mark.slow
def test_ref_stats_command_for_ucf101(ucf, tmp_path, capsys):
    argv = ["ref-stats", "--dataset", "ucf101", "--root", str(ucf), "--protocol", "videogpt",
            "--extractor", "i3d-random-tiny", "--num-real", "3", "--size", "16", "--cache-dir", str(tmp_path / "c"),
            "--work-dir", str(tmp_path / "w"), "--num-workers", "0", "--out", str(tmp_path / "real.npz")]
    assert main(argv) == 0
    assert "computed: 3 real clips of ucf101" in capsys.readouterr().out
    assert main(argv) == 0
    assert "cached: 3 real clips" in capsys.readouterr().out  # second run: no network pass
    stats = FeatureStats.load(tmp_path / "real.npz")
    assert stats.n == 3 and stats.metadata["protocol"]["name"] == "videogpt"
    # another protocol never reuses these statistics
    assert main([*argv[:6], "tats", *argv[7:]]) == 0
    assert "computed: 3 real clips" in capsys.readouterr().out
    assert main(["ref-stats", "--dataset", "ucf101", "--extractor", "i3d-random-tiny"]) == 2  # no --root


def _rank(rank, world, port, root, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ex = TinyPoolExtractor(dim=4)
        fvd = FVD(tiny_protocol(0, 5, 8, ex), extractor=ex)
        ds = open_real_dataset("ucf101", root, fvd.protocol, size=(16, 16))
        rs = real_statistics(ds, fvd, num_workers=0, chunk_size=2, batch_size=2)
        if rank == 0:
            np.savez(out, n=rs.stats.n, sum=rs.stats.sum, outer=rs.stats.outer, feats=rs.stats.bank.array())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_statistics_of_one(ucf, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(ucf), str(tmp_path / "two.npz")), nprocs=2, join=True)
    ex = TinyPoolExtractor(dim=4)
    fvd = FVD(tiny_protocol(0, 5, 8, ex), extractor=ex)
    one = real_statistics(open_real_dataset("ucf101", ucf, fvd.protocol, size=(16, 16)), fvd, num_workers=0,
                          chunk_size=2, batch_size=2).stats
    two = np.load(tmp_path / "two.npz")
    assert int(two["n"]) == one.n == 6
    assert np.array_equal(two["sum"], one.sum) and np.array_equal(two["outer"], one.outer)
    assert np.array_equal(two["feats"], one.bank.array())
