"""Device checks (``cmdbench.interfaces.check_device``): one clear error for a device this machine lacks.

CUDA's presence is simulated with monkeypatch, so the tests mean the same on CPU and GPU machines.
"""

from __future__ import annotations

import pytest
import torch

from cmdbench.interfaces import DeviceUnavailableError, GeneratorSpec, available_devices, check_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("device", ["cpu", "meta", torch.device("cpu")])
def test_cpu_and_meta_are_always_there(device, no_cuda):
    assert check_device(device) == torch.device(device)


def test_cuda_without_cuda_is_one_clear_error(no_cuda):
    with pytest.raises(DeviceUnavailableError) as err:
        check_device("cuda", what="--device")
    message = str(err.value)
    assert message.startswith("--device='cuda': cuda is not available on this machine")
    assert message.endswith("available: cpu, meta")
    assert isinstance(err.value, ValueError)  # the CLI prints ValueErrors as one line, no traceback


def test_generator_spec_refuses_an_unavailable_device(no_cuda):
    with pytest.raises(DeviceUnavailableError, match="device='cuda:0': cuda is not available"):
        GeneratorSpec(device="cuda:0")
    assert GeneratorSpec(device="meta").device == "meta"


def test_index_beyond_the_visible_gpus(two_gpus):
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceUnavailableError, match=r"has 2 cuda device\(s\) \(indices 0..1\); available: cpu, "
                                                     r"cuda:0, cuda:1"):
        check_device("cuda:2")
    assert available_devices()[:3] == ["cpu", "cuda:0", "cuda:1"]


@pytest.mark.parametrize("device", ["cdua", "cuda:x", "", "gpu"])
def test_malformed_device_strings(device):
    with pytest.raises(DeviceUnavailableError, match="is not a device; allowed e.g. cpu, cuda, cuda:1, mps, meta"):
        check_device(device, what="--device")


def test_cli_bench_with_cuda_on_a_cpu_machine_prints_one_line(no_cuda, tmp_path, capsys):
    from cmdbench.cli import main

    rc = main(["bench", "--generator", "tiny-unet3d", "--tiny", "--seeds", "0", "--device", "cuda",
               "--records", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("cmdbench bench: error: --device='cuda': cuda is not available on this machine")
    assert "Traceback" not in err and len(err.splitlines()) == 1
