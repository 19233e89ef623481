"""Typed configuration: validation, JSON loading, stable hashes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cmdbench.config import BenchConfig, EvalProtocol, SamplingConfig, TimingConfig, stable_hash, to_jsonable
from cmdbench.seeding import SeedRangeError


def test_configs_are_frozen():
    cfg = BenchConfig(generator="tiny-unet3d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seeds = "0-9"


@pytest.mark.parametrize("kwargs", [{"num_frames": 0}, {"height": -1}, {"steps": 1.5}, {"batch_size": 0}])
def test_sampling_config_rejects(kwargs):
    with pytest.raises(ValueError, match="SamplingConfig"):
        SamplingConfig(**kwargs)


def test_bench_config_rejects_bad_values():
    with pytest.raises(SeedRangeError):
        BenchConfig(generator="g", seeds="3-1")
    with pytest.raises(ValueError, match="dtype"):
        BenchConfig(generator="g", dtype="float8")
    with pytest.raises(ValueError, match="trackers"):
        BenchConfig(generator="g", trackers=("time", "energy"))
    with pytest.raises(ValueError):
        TimingConfig(min_repeats=0)
    with pytest.raises(ValueError, match="resize"):
        EvalProtocol(name="p", resize="stretch")


def test_from_dict_and_load_round_trip(tmp_path):
    cfg = BenchConfig(generator="tiny-unet3d", seeds="0-3", sampling=SamplingConfig(steps=2, batch_size=2),
                      prompts=("a", "b"), metrics=("m",))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(to_jsonable(cfg)))
    assert BenchConfig.load(path) == cfg


def test_from_dict_rejects_unknown_keys_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="unknown BenchConfig keys \\['seed'\\]"):
        BenchConfig.from_dict({"generator": "g", "seed": "0"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BenchConfig.load(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BenchConfig.load(tmp_path / "missing.json")


def test_stable_hash_is_order_independent_and_sensitive():
    assert stable_hash({"a": 1, "b": (1, 2)}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert len(stable_hash(SamplingConfig())) == 16
