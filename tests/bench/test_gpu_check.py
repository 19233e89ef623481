"""The GPU check rehearsed on the CPU (``--device cpu --tiny``) with the same script and code path, in an
interpreter where the packages the GPU machine lacks cannot be imported; guarded steps; spec names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmdbench.bench import gpu_check
from cmdbench.bench.results import load_records

ROOT = Path(__file__).resolve().parents[2]
# Not on the GPU machine and not carried as wheels: the check path must not need them.
BLOCKED = ("pandas", "scipy", "matplotlib", "decord", "av", "webdataset", "tabulate", "lpips")

# ``None`` in sys.modules is how Python spells "absent" for both ``import`` (ModuleNotFoundError) and
# ``importlib.util.find_spec`` (None), which libraries such as diffusers use to probe optional packages.
SITECUSTOMIZE = """
import sys

for name in {blocked!r}:
    sys.modules[name] = None
"""


@pytest.mark.slow
def test_cpu_rehearsal_without_the_missing_packages(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE.format(blocked=BLOCKED)))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    records = tmp_path / "records"
    proc = subprocess.run(
        [sys.executable, "-m", "cmdbench.bench.gpu_check", "--device", "cpu", "--tiny", "--generators",
         "modelscope-t2v", "--batch-sizes", "1", "--clips", "2", "--records", str(records)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '"pandas": "MISSING' in proc.stdout and '"scipy": "MISSING' in proc.stdout  # rows written without them
    df = load_records(records).set_index("metric")
    assert {"sampling_time", "sampling_time_excl_vae_decoder", "stage_time/denoiser", "time_per_step", "peak_memory",
            "predicted_peak_memory", "predicted_time/A100-40GB", "throughput/i3d", "throughput/clip"} <= set(df.index)
    assert df.loc["peak_memory", "unit"] == "GiB" and df.loc["peak_memory", "protocol"] == "cpu-rss"
    assert df.loc["sampling_time", "unit"] == "s/video" and df.loc["predicted_peak_memory", "device_name"] == "meta"
    meta = json.loads(next(records.glob("gpu-*.json")).read_text())
    assert all(s["status"] == "ok" for s in meta["steps"]) and meta["preflight"]["modules"]["diffusers"] != "MISSING"
    assert "modelscope-t2v" in proc.stdout and "paper GB" in proc.stdout


def test_a_failing_step_is_recorded_and_the_rest_runs():
    lines: list[str] = []
    check = gpu_check.Check(budget_s=60, log=lines.append)
    assert check.run("boom", lambda: 1 / 0) is None
    assert check.run("fine", lambda: 42) == 42
    assert [(s.name, s.status) for s in check.steps] == [("boom", "failed"), ("fine", "ok")]
    assert check.steps[0].error.startswith("ZeroDivisionError")
    spent = gpu_check.Check(budget_s=0, log=lines.append)
    assert spent.run("late", lambda: 1) is None and spent.steps[0].status == "skipped"


def test_gpu_spec_names_and_the_paper_columns():
    assert gpu_check.gpu_spec_name("NVIDIA H100 80GB HBM3") == "H100-SXM"
    assert gpu_check.gpu_spec_name("NVIDIA H200") == "H200"
    assert gpu_check.gpu_spec_name("NVIDIA A100-SXM4-40GB") == "A100-40GB"
    assert gpu_check.gpu_spec_name("NVIDIA L40S") is None
    paper = gpu_check.paper_table9()
    assert paper[("CMD", "sampling_time", 1)] == 3.13 and paper[("ModelScope", "peak_memory", 4)] == 21.30


def test_no_cuda_is_a_clear_error(capsys):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().err


def test_carried_wheels_are_installed_into_their_own_folder_and_importable(tmp_path, monkeypatch):
    """A minimal pure-Python wheel, installed offline with --target and imported from there."""
    import importlib
    import zipfile

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    name = "cmdbench_gpu_check_probe"
    files = {f"{name}/__init__.py": "VALUE = 7\n",
             f"{name}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
             f"{name}-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                           "Tag: py3-none-any\n"}
    files[f"{name}-0.1.dist-info/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{name}-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheels / f"{name}-0.1-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    assert gpu_check.install_wheels(wheels) == [f"{name}-0.1-py3-none-any.whl"]
    assert importlib.import_module(name).VALUE == 7
    assert (wheels / "site" / name / "__init__.py").is_file() and str(wheels / "site") in os.environ["PYTHONPATH"]
    with pytest.raises(FileNotFoundError, match="no \\*.whl"):
        gpu_check.install_wheels(tmp_path)
