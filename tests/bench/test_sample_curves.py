"""Sample-size curves: nested subsets, each point equal to the judge on exactly those samples, the full point equal
to the judge's own value, bands (bootstrap vs subsample), the "stays within 5%" rule, records -> table +
figure, and the ``evaluate --curve`` hook (arguments, features kept, rows appended, judges without features
named)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from cmdbench.bench import sample_curves as sc
from cmdbench.bench.tiny_judges import TinyPoolExtractor, tiny_protocol
from cmdbench.metrics.fvd import FVD
from cmdbench.metrics.kvd import KVD


def judged(n_fake: int = 64, n_real: int = 80, shift: float = 0.4, seed: int = 0, cls=FVD) -> FVD:
    """A tiny-extractor set judge whose real and generated statistics hold given 3-d features (kept)."""
    extractor = TinyPoolExtractor(dim=3)
    metric = cls(tiny_protocol(0, 0, 16, extractor), extractor=extractor, strict=False)
    rng = np.random.default_rng(seed)
    sc.prepare_curve({"m": metric})
    metric.fake.update(rng.standard_normal((n_fake, 3)) + shift)
    real = metric.new_stats("real")
    if real.bank is None:
        from cmdbench.metrics.frechet import FeatureBank

        real.bank = FeatureBank(3)
    real.update(rng.standard_normal((n_real, 3)))
    metric.real_accum = real
    return metric


def fresh_value(metric: FVD, fake_rows: np.ndarray, real_rows: np.ndarray | None = None) -> float:
    """The judge computed from scratch on exactly these rows (independent of JudgeRows' swapping)."""
    extractor = metric.extractor
    other = type(metric)(metric.protocol, extractor=extractor, strict=False, allow_singular=True)
    other.fake.update(fake_rows)
    other.real_accum = other.new_stats("real")
    other.real_accum.update(metric.real_accum.bank.array() if real_rows is None else real_rows)
    return other.compute().value


def test_within_tolerance_means_staying_within():
    sizes = [2, 4, 8, 16]
    assert sc.within_tolerance(sizes, [10.2, 9.8, 10.4, 10.0], 10.0, 0.05) == 2
    assert sc.within_tolerance(sizes, [10.1, 12.0, 10.2, 10.0], 10.0, 0.05) == 8  # re-enters: not from 2
    assert sc.within_tolerance(sizes, [10.0, 10.0, 9.0, 10.0], 10.0, 0.05) == 16
    assert sc.within_tolerance(sizes, [1, 2, 3, 4], 10.0, 0.05) is None
    assert sc.within_tolerance([4, 8], [10.5, 10.0], 10.0, 0.05) == 4  # the edge counts as within


def test_subsets_are_nested_prefixes_of_one_order():
    order = np.random.default_rng(3).permutation(50)
    subsets = sc.nested_subsets(order, [5, 10, 50])
    assert [len(s) for s in subsets] == [5, 10, 50]
    assert set(subsets[0]) < set(subsets[1]) < set(subsets[2]) == set(range(50))
    assert subsets[1][:5].tolist() == subsets[0].tolist() and subsets[2].tolist() == list(range(50))
    assert sc.default_sizes(2048) == [16, 32, 64, 128, 256, 512, 1024, 2048]
    assert sc.default_sizes(10) == [2, 5, 10]


def test_curve_points_equal_the_judge_on_those_samples():
    metric = judged()
    full_direct = metric.compute().value
    judge = sc.JudgeRows("fvd-tiny", metric)
    curve = sc.sample_curve(judge, sizes=[8, 16, 64], rounds=4, seed=1)
    assert curve.full_value == pytest.approx(full_direct, rel=1e-12) and curve.values[-1] == curve.full_value
    order = np.random.default_rng(1).permutation(64)  # the curve's own seeded order
    for n, v in zip(curve.sizes, curve.values, strict=True):
        rows = judge.fake_rows[order[:n]] if n < 64 else judge.fake_rows
        assert v == pytest.approx(fresh_value(metric, rows), rel=1e-12)
    assert metric.compute().value == full_direct  # the judge's own state is restored afterwards
    assert (metric.strict, metric.allow_singular) == (False, False)


def test_bands_bootstrap_vs_subsample():
    judge = sc.JudgeRows("fvd-tiny", judged())
    boot = sc.sample_curve(judge, sizes=[8, 64], rounds=12, seed=0, resample="bootstrap")
    sub = sc.sample_curve(judge, sizes=[8, 64], rounds=12, seed=0, resample="subsample")
    assert boot.std[0] > 0 and boot.std[1] > 0  # resampling with replacement varies even at n = N
    assert sub.std[1] == pytest.approx(0.0, abs=1e-12) and sub.band_lo[1] == pytest.approx(sub.band_hi[1])
    assert all(lo <= hi for lo, hi in zip(boot.band_lo, boot.band_hi, strict=True))
    assert boot.std[0] > boot.std[1]  # fewer samples, wider band


def test_matched_real_side_needs_real_features():
    metric = judged(n_fake=32, n_real=40)
    judge = sc.JudgeRows("fvd-tiny", metric)
    curve = sc.sample_curve(judge, sizes=[8, 32], rounds=3, real="matched")
    order_f = np.random.default_rng(0).permutation(32)
    order_r = np.random.default_rng(0)
    order_r.permutation(32)
    order_r = order_r.permutation(40)
    expect = fresh_value(metric, judge.fake_rows[order_f[:8]], metric.real_accum.bank.array()[order_r[:8]])
    assert curve.values[0] == pytest.approx(expect, rel=1e-12) and curve.n_real == 40
    metric.real_accum.bank = None
    with pytest.raises(ValueError, match="per-clip real features"):
        sc.sample_curve(sc.JudgeRows("fvd-tiny", metric), sizes=[8], rounds=2, real="matched")


def test_bad_inputs_are_refused():
    extractor = TinyPoolExtractor(dim=3)
    plain = FVD(tiny_protocol(0, 0, 16, extractor), extractor=extractor, strict=False)
    plain.fake.update(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="prepare_curve"):
        sc.JudgeRows("fvd-tiny", plain)
    with pytest.raises(ValueError, match="before any generated clip"):
        sc.prepare_curve({"fvd": plain})
    with pytest.raises(ValueError, match="set judge"):
        sc.JudgeRows("clipsim", object())
    judge = sc.JudgeRows("fvd-tiny", judged())
    with pytest.raises(ValueError, match=r"outside 2\.\.64"):
        sc.sample_curve(judge, sizes=[1, 100])
    with pytest.raises(ValueError, match="tolerance"):
        sc.sample_curve(judge, tolerance=5)
    with pytest.raises(ValueError, match="--curve-sizes"):
        sc.parse_sizes("64,lots")


def test_kvd_curve_uses_kvds_own_maths():
    metric = judged(cls=KVD)
    metric.subsets, metric.subset_size = 5, 16
    curve = sc.sample_curve(sc.JudgeRows("kvd", metric), sizes=[16, 64], rounds=3)
    assert curve.full_value == pytest.approx(metric.compute().value, rel=1e-12)


def test_hook_writes_rows_and_renders(tmp_path):
    from cmdbench.bench.results import load_records

    parser = argparse.ArgumentParser()
    sc.add_curve_arguments(parser)
    args = parser.parse_args(["--curve", "--curve-sizes", "8,16,32,64", "--curve-rounds", "4"])
    args.records, args.device = str(tmp_path / "records"), "cpu"
    metrics = {"fvd-tiny": judged(shift=0.3), "no-features": object()}
    paths = sc.run_curve(args, metrics, run_id="curve-test", generator="synthetic", dataset="synthetic")
    records = load_records(tmp_path / "records")
    curve = records[records["metric"] == "fvd-tiny/curve"].sort_values("n")
    assert curve["n"].tolist() == [8, 16, 32, 64]
    notes = json.loads(curve["notes"].iloc[0])
    assert notes["band_lo"] <= notes["band_hi"] and notes["rounds"] == 4 and notes["real"] == "full"
    within = records[records["metric"] == "fvd-tiny/n_within_5pct"]
    if notes["n_within"] is not None:
        assert within["value"].iloc[0] == notes["n_within"]
    md = paths[0].read_text()
    assert "fvd-tiny" in md and "smallest n within 5%" in md and "| n " in md
    assert {p.suffix for p in paths} == {".md", ".png", ".pdf"}


def test_evaluate_curve_end_to_end(tmp_path, capsys):
    """``cmdbench evaluate ... --curve``: the FVD row, then its curve rows in the same run and the table/figure."""
    from cmdbench.bench.results import load_records
    from cmdbench.cli import main
    from cmdbench.data.synthetic import moving_shape
    from cmdbench.video import write_mp4

    for side, offset in (("real", 0), ("fake", 50)):
        for i in range(6):
            write_mp4(tmp_path / side / f"v{i}.mp4",
                      moving_shape(offset + i, label=i % 6, num_frames=16, height=32, width=32)[0])
    rc = main(["evaluate", "--real", str(tmp_path / "real"), "--videos", str(tmp_path / "fake"), "--metric",
               "fvd-videogpt", "--extractor", "i3d-random-tiny", "--non-strict", "--allow-singular", "--records",
               str(tmp_path / "runs"), "--run-id", "ev", "--curve", "--curve-rounds", "3", "--curve-sizes", "3,6"])
    assert rc == 0
    records = load_records(tmp_path / "runs" / "ev.csv")
    fvd = records.loc[records["metric"] == "fvd-videogpt", "value"].iloc[0]
    curve = records[records["metric"] == "fvd-videogpt/curve"].sort_values("n")
    assert curve["n"].tolist() == [3, 6] and curve["value"].iloc[-1] == pytest.approx(fvd, rel=1e-12)
    assert (tmp_path / "runs" / "curves" / "ev_curves.md").is_file()
    assert "fvd-videogpt: full" in capsys.readouterr().out
