"""The bench runner: rows, metrics parity, and resumability (no lost, duplicated or recomputed work)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from baselines.tiny_unet3d.generator import TinyUNet3DGenerator
from cmdbench.bench.results import read_csv
from cmdbench.bench.runner import RunMismatchError, conditions_for, find_unfinished_run, resolve, run_bench
from cmdbench.config import BenchConfig, SamplingConfig
from cmdbench.interfaces import GeneratorSpec, MetricValue
from cmdbench.registry import GENERATORS, METRICS, UnknownNameError
from cmdbench.seeding import make_generators
from cmdbench.video import read_video

SAMPLING = SamplingConfig(num_frames=4, height=8, width=8, steps=1, batch_size=2)


class MeanLevel:
    """Test metric: mean uint8 level of all videos seen; counts prompts to check they arrive."""

    name, protocol, unit, higher_is_better = "test-mean-level", "test", "level", None

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total, self.count, self.prompts = 0.0, 0, []

    def update(self, videos: torch.Tensor, prompts=None) -> None:
        self.total += float(videos.double().sum())
        self.count += videos.numel()
        self.prompts.extend(prompts or [])

    def compute(self) -> MetricValue:
        return MetricValue(self.name, self.total / self.count, unit=self.unit, n=len(self.prompts),
                           protocol=self.protocol, extra={"prompts": list(self.prompts)})


class StatefulMeanLevel(MeanLevel):
    """The same metric with ``state_dict``: the runner stores state instead of videos."""

    name = "test-mean-level-stateful"

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count, "prompts": list(self.prompts)}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count, self.prompts = state["total"], state["count"], list(state["prompts"])


for _cls in (MeanLevel, StatefulMeanLevel):
    if _cls.name not in METRICS:
        METRICS.register(_cls.name, _cls, description="test metric")


def config(**kw) -> BenchConfig:
    base = dict(generator="tiny-unet3d", seeds="0-4", tiny=True, sampling=SAMPLING,
                prompts=("a red car", "a blue boat", "a green tree"), metrics=("test-mean-level",))
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture
def sampled_seeds(monkeypatch):
    """Every seed passed to TinyUNet3DGenerator.sample in this process, call by call."""
    calls: list[list[int]] = []
    original = TinyUNet3DGenerator.sample

    def counting(self, *, generator, **kw):
        calls.append([int(g.initial_seed()) for g in generator])
        return original(self, generator=generator, **kw)

    monkeypatch.setattr(TinyUNet3DGenerator, "sample", counting)
    return calls


def test_rows_meta_and_metric_parity(records_dir):
    cfg = config(seeds="0-2")  # batches [0, 1], [2]
    df = run_bench(cfg, records_dir, run_id="r", progress=False)
    assert sorted(df["metric"]) == ["peak_memory", "sampling_time", "stage_time/denoiser",
                                    "stage_time/text_encoder", "test-mean-level", "time_per_step"]
    by = df.set_index("metric")
    assert set(df["seeds"]) == {"0-2"} and by.loc["test-mean-level", "n"] == 3
    assert by.loc["sampling_time", "n"] == 2  # timed repeats: one per batch ([0, 1], [2])
    assert set(df["num_frames"]) == {4} and set(df["steps"]) == {1} and set(df["guidance_scale"]) == {3.0}
    assert df["config_hash"].is_unique
    assert (df.loc[df["metric"] != "test-mean-level", "value"] >= 0).all()
    meta = json.loads((records_dir / "r.json").read_text())
    assert meta["complete"] and meta["config"]["generator"] == "tiny-unet3d" and "torch_version" in meta["environment"]

    # Parity: the metric equals the mean level of the same videos sampled directly, prompts cycled by index.
    gen = GENERATORS.get("tiny-unet3d")(GeneratorSpec(tiny=True))
    videos = gen.sample(prompts=["a red car", "a blue boat", "a green tree"], num_frames=4, height=8, width=8,
                        steps=1, guidance_scale=3.0, generator=make_generators("0-2"))
    row = df[df["metric"] == "test-mean-level"].iloc[0]
    assert row["value"] == pytest.approx(videos.double().mean().item(), abs=2.0 / 255)
    assert json.loads(row["notes"])["prompts"] == ["a red car", "a blue boat", "a green tree"]


def test_class_generator_uses_seed_modulo_classes(records_dir):
    cfg = BenchConfig(generator="tiny-unet3d-class", seeds="8-11", tiny=True, sampling=SAMPLING, trackers=("time",))
    gen = GENERATORS.get("tiny-unet3d-class")(GeneratorSpec(tiny=True))
    res = resolve(cfg, gen)
    assert conditions_for(res, (8, 9, 10, 11), [0, 1, 2, 3]) == {"labels": [8, 9, 0, 1]}
    res_given = resolve(replace(cfg, labels=(3, 4)), gen)
    assert conditions_for(res_given, (8, 9, 10, 11), [0, 1, 2]) == {"labels": [3, 4, 3]}
    df = run_bench(cfg, records_dir, progress=False)
    assert "sampling_time" in set(df["metric"]) and set(df["conditioning"]) == {"class"}
    with pytest.raises(ValueError, match="class-conditional; prompts"):
        run_bench(BenchConfig(generator="tiny-unet3d-class", tiny=True, prompts=("x",), sampling=SAMPLING),
                  records_dir, progress=False)


def test_unknown_names_fail_before_writing(records_dir):
    with pytest.raises(UnknownNameError, match="Did you mean 'tiny-unet3d'"):
        run_bench(config(generator="tiny-unet"), records_dir, progress=False)
    with pytest.raises(UnknownNameError, match="unknown metric 'fvd9'"):
        run_bench(config(metrics=("fvd9",)), records_dir, progress=False)
    assert not list(records_dir.iterdir())


@pytest.mark.parametrize("metric", ["test-mean-level", "test-mean-level-stateful"])
def test_resume_after_failure_recomputes_nothing(records_dir, tmp_path, sampled_seeds, metric):
    cfg = config(metrics=(metric,))  # seeds 0-4: batches [0,1] [2,3] [4]

    def fail_after_first(i, n):
        if i == 0:
            raise RuntimeError("killed after batch 0")

    with pytest.raises(RuntimeError, match="killed after batch 0"):
        run_bench(cfg, records_dir, run_id="r", progress=False, on_batch_done=fail_after_first)
    assert not (records_dir / "r.csv").exists()
    assert find_unfinished_run(cfg, records_dir) == "r"
    sampled_seeds.clear()

    df = run_bench(cfg, records_dir, run_id="r", progress=False)
    timed = [c for c in sampled_seeds if len(c) > 1 or c == [4]]
    assert sorted(s for c in sampled_seeds for s in c if s in (0, 1)) == []  # batch 0 never sampled again
    assert [2, 3] in timed and [4] in timed
    assert sorted(df["metric"]) == sorted(set(df["metric"]))  # each row exactly once
    assert find_unfinished_run(cfg, records_dir) is None

    # The resumed metric equals the metric of an uninterrupted run.
    whole = run_bench(cfg, tmp_path / "whole", run_id="w", progress=False)
    value = df.set_index("metric").loc[metric, "value"]
    assert value == whole.set_index("metric").loc[metric, "value"]
    assert json.loads(df.set_index("metric").loc[metric, "notes"])["prompts"] == [
        "a red car", "a blue boat", "a green tree", "a red car", "a blue boat"]


def test_completed_run_is_not_recomputed_and_missing_rows_are_appended_once(records_dir, sampled_seeds):
    cfg = config(seeds="0-1")
    first = run_bench(cfg, records_dir, run_id="r", progress=False)
    sampled_seeds.clear()
    again = run_bench(cfg, records_dir, run_id="r", progress=False)
    assert sampled_seeds == []
    assert len(again) == len(first)

    # A crash between rows: drop the last row and mark the run unfinished; the rerun appends it once.
    csv_path = records_dir / "r.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:-1]))
    meta = json.loads((records_dir / "r.json").read_text())
    (records_dir / "r.json").write_text(json.dumps({**meta, "complete": False}))
    repaired = run_bench(cfg, records_dir, run_id="r", progress=False)
    assert sampled_seeds == []
    assert sorted(repaired["metric"]) == sorted(first["metric"])
    assert len(read_csv(csv_path)) == len(first)


def test_resume_with_a_different_config_is_refused(records_dir):
    run_bench(config(seeds="0", trackers=()), records_dir, run_id="r", progress=False)
    with pytest.raises(RunMismatchError, match="different config"):
        run_bench(config(seeds="0-1", trackers=()), records_dir, run_id="r", progress=False)


def test_save_videos(records_dir):
    run_bench(config(seeds="3-4", save_videos=True, metrics=(), trackers=()), records_dir, run_id="r",
              progress=False)
    files = sorted(p.name for p in (records_dir / "r.videos").iterdir())
    assert files == ["seed-000003.mp4", "seed-000004.mp4"]
    assert read_video(records_dir / "r.videos" / "seed-000003.mp4").shape == (4, 3, 8, 8)


KILL_SCRIPT = """
import sys, time
from cmdbench.bench.runner import run_bench
from cmdbench.config import BenchConfig, SamplingConfig
cfg = BenchConfig(generator="tiny-unet3d", seeds="0-4", tiny=True, prompts=("a red car",),
                  sampling=SamplingConfig(num_frames=4, height=8, width=8, steps=1, batch_size=2),
                  )
run_bench(cfg, sys.argv[1], run_id="k", progress=False, on_batch_done=lambda i, n: time.sleep(30))
"""


@pytest.mark.slow
def test_killed_subprocess_resumes_without_loss_or_duplication(records_dir):
    """SIGKILL a real bench process after its first batch is recorded; the resumed run completes it."""
    script = textwrap.dedent(KILL_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(records_dir)], env=env)
    marker = records_dir / "k.progress" / "batch-00000.json"
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, f"bench subprocess exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "bench subprocess recorded no batch in 240 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (records_dir / "k.csv").exists()
    killed_pid = json.loads(marker.read_text())["pid"]
    assert killed_pid == proc.pid

    cfg = BenchConfig(generator="tiny-unet3d", seeds="0-4", tiny=True, prompts=("a red car",),
                      sampling=SamplingConfig(num_frames=4, height=8, width=8, steps=1, batch_size=2))
    df = run_bench(cfg, records_dir, run_id="k", progress=False)
    pids = [json.loads((records_dir / "k.progress" / f"batch-{i:05d}.json").read_text())["pid"] for i in range(3)]
    assert pids == [killed_pid, os.getpid(), os.getpid()]  # batch 0 kept, not recomputed
    assert sorted(df["metric"]) == ["peak_memory", "sampling_time", "stage_time/denoiser",
                                    "stage_time/text_encoder", "time_per_step"]
    assert len(read_csv(records_dir / "k.csv")) == 5
    assert not list(Path(records_dir).rglob("*.tmp"))


# --- Metric names, raw repeats, identity (issue 10 items 5 and 6) -------------------------------------------


def test_timed_rows_keep_raw_repeats_per_video(records_dir):
    from cmdbench.bench.results import decode_values

    cfg = config(seeds="0-4", metrics=())  # batches [0, 1], [2, 3], [4]
    df = run_bench(cfg, records_dir, run_id="r", progress=False).set_index("metric")
    batches = [json.loads((records_dir / "r.progress" / f"batch-{i:05d}.json").read_text()) for i in range(3)]
    per_video = [b["time_s"] / len(b["seeds"]) for b in batches]
    assert decode_values(df.loc["sampling_time", "values"]) == pytest.approx(per_video, rel=1e-12)
    assert df.loc["sampling_time", "value"] == pytest.approx(sorted(per_video)[1])
    assert df.loc["sampling_time", "n"] == 3 and df.loc["sampling_time", "unit"] == "s/video"
    den = [b["stage_times_s"]["denoiser"] / len(b["seeds"]) for b in batches]
    assert decode_values(df.loc["stage_time/denoiser", "values"]) == pytest.approx(den, rel=1e-12)
    assert decode_values(df.loc["time_per_step", "values"]) == pytest.approx(den, rel=1e-12)  # 1 step
    assert df.loc["time_per_step", "unit"] == "s/step"
    # Absolute peak (weights and runtime included), not a delta after warm-up: at least this process's RSS.
    from cmdbench.metrics.efficiency import current_rss

    assert df.loc["peak_memory", "unit"] == "GiB" and df.loc["peak_memory", "protocol"] == "cpu-rss"
    assert df.loc["peak_memory", "value"] > 0.5 * current_rss() / 2**30


def test_vae_decoder_generators_also_report_time_without_it(records_dir):
    from cmdbench.bench.results import decode_values

    cfg = BenchConfig(generator="modelscope-t2v", seeds="0-2", tiny=True, trackers=("time",),
                      sampling=SamplingConfig(num_frames=2, height=16, width=16, steps=1, batch_size=1))
    df = run_bench(cfg, records_dir, run_id="m", progress=False).set_index("metric")
    total = decode_values(df.loc["sampling_time", "values"])
    vae = decode_values(df.loc["stage_time/vae_decoder", "values"])
    excl = decode_values(df.loc["sampling_time_excl_vae_decoder", "values"])
    assert excl == pytest.approx([t - v for t, v in zip(total, vae, strict=True)], rel=1e-9)


def test_cost_rows_pair_across_seed_ranges_quality_rows_do_not(records_dir):
    a = run_bench(config(seeds="0-1"), records_dir, run_id="a", progress=False).set_index("metric")
    b = run_bench(config(seeds="10-11"), records_dir, run_id="b", progress=False).set_index("metric")
    for metric in ("sampling_time", "stage_time/denoiser", "peak_memory"):
        assert a.loc[metric, "config_hash"] == b.loc[metric, "config_hash"], metric
    assert a.loc["test-mean-level", "config_hash"] != b.loc["test-mean-level", "config_hash"]


def test_plugin_generators_record_package_version_and_git_sha(records_dir, tmp_path, monkeypatch):
    """A distribution on sys.path with a ``cmdbench.generators`` entry point and a VCS direct_url."""
    site = tmp_path / "site"
    (site / "myplug").mkdir(parents=True)
    (site / "myplug" / "__init__.py").write_text("")
    (site / "myplug" / "gen.py").write_text(textwrap.dedent("""
        from cmdbench.registry import GENERATORS
        def build(spec):
            return GENERATORS.get("tiny-unet3d")(spec)
    """))
    info = site / "myplug-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 1.2.0\n")
    (info / "entry_points.txt").write_text("[cmdbench.generators]\nmyplug = myplug.gen\n")
    (info / "direct_url.json").write_text(json.dumps(
        {"url": "https://example.org/myplug.git", "vcs_info": {"vcs": "git", "commit_id": "c0ffee" * 6 + "1234"}}))
    monkeypatch.syspath_prepend(str(site))
    from myplug.gen import build

    from cmdbench.env import generator_provenance

    assert generator_provenance(build) == {"package": "myplug", "version": "1.2.0", "git_sha": "c0ffee" * 6 + "1234"}
    assert generator_provenance(GENERATORS.get("tiny-unet3d")) is None  # this project's own
    if "myplug-test" not in GENERATORS:
        GENERATORS.register("myplug-test", build, description="test plugin")
    df = run_bench(config(generator="myplug-test", seeds="0", metrics=()), records_dir, run_id="p", progress=False)
    assert all("plugin myplug 1.2.0 (git c0ffee" in n for n in df["notes"])
    assert json.loads((records_dir / "p.json").read_text())["plugin"]["package"] == "myplug"


class ReferencedLevel(MeanLevel):
    """Test metric whose value is computed against a reference set named in ``extra`` (as FVD's is)."""

    name = "test-referenced-level"
    reference_key = "real-a"

    def compute(self) -> MetricValue:
        mv = super().compute()
        return MetricValue(self.name, mv.value, unit="level", n=mv.n, protocol="test",
                           extra={"reference_key": ReferencedLevel.reference_key, "extractor_checksum": "e1"})


if ReferencedLevel.name not in METRICS:
    METRICS.register(ReferencedLevel.name, ReferencedLevel, description="test metric")


def test_rows_against_another_reference_set_do_not_pair(records_dir, monkeypatch):
    cfg = config(seeds="0-1", metrics=("test-referenced-level",), trackers=())
    a = run_bench(cfg, records_dir, run_id="a", progress=False)
    monkeypatch.setattr(ReferencedLevel, "reference_key", "real-b")
    b = run_bench(cfg, records_dir, run_id="b", progress=False)
    assert a["value"].iloc[0] == b["value"].iloc[0]  # same videos, same number ...
    assert a["config_hash"].iloc[0] != b["config_hash"].iloc[0]  # ... but not comparable: other real set
