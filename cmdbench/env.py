"""Capture the environment a number was measured in: git state, versions, device, dtype flags."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

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


def device_name(device: str | torch.device = "cpu") -> str:
    """Human-readable device name, e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"cpu: <processor> (N threads)"``."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    proc = platform.processor() or platform.machine()
    return f"cpu: {proc} ({torch.get_num_threads()} threads)"


def cuda_version() -> str:
    return torch.version.cuda or "none"


def capture_environment(device: str | torch.device = "cpu", dtype: str = "float32") -> dict:
    """Everything that can make two numbers differ, as a JSON-able dict."""
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
        "dtype": dtype,
        "num_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
