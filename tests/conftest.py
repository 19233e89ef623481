"""Shared test setup: offline hub, few CPU threads, a temporary records directory, registered plugins."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread by default: on a shared 2-core machine more threads oversubscribe and run 10x slower.
torch.set_num_threads(int(os.environ.get("CMDBENCH_TEST_THREADS", "1")))


@pytest.fixture
def records_dir(tmp_path):
    """An empty directory for result records."""
    path = tmp_path / "records"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def plugins():
    """Every built-in generator, metric and dataset registered; returns the registry module."""
    from cmdbench import registry

    registry.load_plugins()
    return registry
