"""Capture the environment a number was measured in: git state, versions, device, dtype flags.

The **device key** (:func:`device_key`) names what a timing depends on beyond the code: the CPU model (or
GPU), the thread count, the torch build and its BLAS (CPU) or CUDA version (GPU). Two timings compare only
under the same key; the regression gate calls a pair with different keys "incomparable".
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: `cmdbench compare` needs device_key without it
    import torch

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "numpy", "scipy", "decord",
            "clip-anytorch", "pandas")


@cache
def git_info(path: str | None = None) -> tuple[str, bool]:
    """(sha, dirty) of the git checkout holding ``path`` (this package by default); ("unknown", False)."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, check=True, timeout=10).stdout
        return sha, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@cache
def cpu_model() -> str:
    """The CPU model, e.g. ``"Intel Xeon Processor (family 6 model 167)"``.

    From ``/proc/cpuinfo`` (Linux): the model name, ``(R)``/``(TM)`` removed, with family and model
    numbers, which tell apart CPU generations that virtual machines all call "Xeon Processor"; elsewhere
    ``platform.processor()`` or the machine architecture.
    """
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n", 1)[0]
    except OSError:
        return platform.processor() or platform.machine() or "unknown cpu"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = re.sub(r"\((R|TM)\)", "", fields.get("model name", "") or platform.machine(), flags=re.IGNORECASE)
    name = re.sub(r"\s+", " ", name).strip() or "unknown cpu"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


@cache
def blas_build() -> str:
    """The BLAS torch was built with, e.g. ``"mkl 2024.2"`` or ``"openblas"``, plus the CPU capability
    torch dispatches to (``"AVX512"``); from ``torch.__config__.show()``."""
    import torch
    text = torch.__config__.show()
    info = re.search(r"BLAS_INFO=([\w.-]+)", text)
    blas = info.group(1) if info else "unknown-blas"
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", text)
    if blas == "mkl" and mkl:
        blas = f"mkl {mkl.group(1)}"
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
    return f"{blas}, {capability}" if capability else blas


def device_name(device: str | torch.device = "cpu") -> str:
    """Human-readable device name, e.g. ``"NVIDIA H100 80GB HBM3"`` or
    ``"cpu: Intel Xeon Processor (family 6 model 167) (2 threads, mkl 2024.2, AVX512)"``; ``"meta"``."""
    import torch
    dev = torch.device(device)
    if dev.type == "meta":
        return "meta"
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"cpu: {cpu_model()} ({torch.get_num_threads()} threads, {blas_build()})"


def device_key(device_name: str, torch_version: str | None = None, cuda_version: str | None = None) -> str:
    """What a timing is comparable under: the device name (CPU model, threads and BLAS, or the GPU) with the
    torch build (and CUDA version on a GPU). ``"meta"`` for device-independent figures (meta-device counts).

    Built from a row's own columns (``device_name``, ``torch_version``, ``cuda_version``), so rows written
    by any producer carry it. The regression gate slugs it into a directory name
    (:func:`cmdbench.bench.regression.device_slug`).
    """
    name = str(device_name or "unknown device")
    if name == "meta":
        return "meta"
    key = f"{name}; torch {torch_version or 'unknown'}"
    if not name.startswith("cpu") and cuda_version and cuda_version != "none":
        key += f"; cuda {cuda_version}"
    return key


def current_device_key(device: str | torch.device = "cpu") -> str:
    """:func:`device_key` of this process on ``device``."""
    import torch
    return device_key(device_name(device), torch.__version__, cuda_version())


def cuda_version() -> str:
    import torch
    return torch.version.cuda or "none"


def generator_provenance(factory: object) -> dict[str, str] | None:
    """Package, version and git sha of a **plugin** generator's factory (registered through the
    ``cmdbench.generators`` entry-point group by another distribution); ``None`` for this project's own.

    The entry point whose module the factory comes from names the distribution; its version comes from
    the distribution's metadata, its git sha from ``direct_url.json`` (``pip install git+...`` records the
    commit; an editable or local install records the folder, whose ``git rev-parse HEAD`` is read), else
    ``"unknown"``.
    """
    module = getattr(factory, "__module__", "") or ""
    if module.split(".")[0] in ("cmdbench", "baselines"):
        return None
    for ep in metadata.entry_points(group="cmdbench.generators"):
        ep_module = ep.value.split(":")[0]
        if not (module == ep_module or module.startswith(ep_module + ".") or ep_module.startswith(module + ".")):
            continue
        dist = ep.dist
        if dist is None:
            continue
        return {"package": dist.metadata["Name"], "version": dist.version, "git_sha": _dist_git_sha(dist)}
    return None


def _dist_git_sha(dist: metadata.Distribution) -> str:
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except (OSError, ValueError):
        direct = {}
    commit = (direct.get("vcs_info") or {}).get("commit_id")
    if commit:
        return str(commit)
    url = str(direct.get("url", ""))
    if url.startswith("file://"):
        sha, dirty = git_info(url.removeprefix("file://"))
        if sha != "unknown":
            return sha + ("-dirty" if dirty else "")
    return "unknown"


def capture_environment(device: str | torch.device = "cpu", dtype: str = "float32") -> dict:
    """Everything that can make two numbers differ, as a JSON-able dict."""
    import torch
    sha, dirty = git_info()
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "torch_version": torch.__version__,
        "cuda_version": cuda_version(),
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "device_name": device_name(device),
        "device_key": current_device_key(device),
        "dtype": dtype,
        "num_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
