"""The one LPIPS loader (``cmdbench.perceptual.load_lpips``): weights through ``cmdbench weights``.

No real ImageNet file is available offline, so a torchvision AlexNet with seeded random weights is saved
in torchvision's file layout and accepted with ``weights.trust`` in a temporary cache (what ``cmdbench
weights verify --trust`` does). The oracle recomputes LPIPS v0.1 in float64 from torchvision's own AlexNet
(its ReLU outputs after ``features[1, 4, 7, 9, 11]``) and the wheel's linear layers, so a wrong key mapping
or layer choice shows.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

from cmdbench import weights
from cmdbench.perceptual import (
    BACKBONE_WEIGHTS,
    linear_layers_file,
    load_lpips,
    lpips_label,
    lpips_provenance,
)

ALEX = BACKBONE_WEIGHTS["alex"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(weights.override_env_var(ALEX), raising=False)
    # not ~/.cache/torch: the test owns every place the file is looked for
    monkeypatch.setitem(weights.KNOWN, ALEX, dataclasses.replace(weights.KNOWN[ALEX], also_in=()))
    return tmp_path / "cache"


@pytest.fixture
def fake_alexnet(cache):
    """torchvision AlexNet (seed 1) saved as the cached backbone file and trusted; returns the network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        net = torchvision.models.alexnet(weights=None).eval()
    cache.mkdir(parents=True)
    path = cache / weights.KNOWN[ALEX].filename
    torch.save(net.state_dict(), path)
    weights.trust(ALEX, path)
    return net


def test_missing_backbone_names_the_fetch_command(cache):
    with pytest.raises(weights.MissingWeightsError) as err:
        load_lpips("alex", backbone="imagenet")
    message = str(err.value)
    assert f"cmdbench weights fetch {ALEX}" in message
    assert str(cache / "alexnet-owt-7be5be79.pth") in message


def test_unknown_net_or_backbone_is_refused():
    with pytest.raises(ValueError, match=r"net='squeeze' is not supported; allowed \('alex', 'vgg'\)"):
        load_lpips("squeeze")
    with pytest.raises(ValueError, match="backbone='pretrained' is not allowed"):
        load_lpips("alex", backbone="pretrained")


def lpips_oracle(net: torchvision.models.AlexNet, x: torch.Tensor, y: torch.Tensor) -> float:
    """LPIPS v0.1 in float64: scaling layer, unit-normalised ReLU features, squared difference, linear
    1x1 weights (from the lpips wheel), spatial mean, sum over the five layers. x, y: (1, 3, H, W) in [-1, 1]."""
    lin = torch.load(linear_layers_file("alex"), map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64)[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64)[None, :, None, None]
    features = net.features.double()

    def relus(z):
        out, h = [], (z.double() - shift) / scale
        for i, layer in enumerate(features):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):
                out.append(h)
        return out

    total = 0.0
    for k, (a, b) in enumerate(zip(relus(x), relus(y), strict=True)):
        a = a / (a.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
        w = lin[f"lin{k}.model.1.weight"].double()  # (1, C, 1, 1)
        total += ((a - b).square() * w).sum(dim=1).mean().item()
    return total


def test_imagenet_backbone_is_read_from_the_cache_and_mapped(fake_alexnet):
    model = load_lpips("alex", backbone="imagenet")
    assert torch.equal(model.net.slice1[0].weight, fake_alexnet.features[0].weight)
    assert torch.equal(getattr(model.net.slice5, "10").bias, fake_alexnet.features[10].bias)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    assert model(x, y).item() == pytest.approx(lpips_oracle(fake_alexnet, x, y), rel=1e-5)
    prov = lpips_provenance("alex", "imagenet")
    assert prov["backbone_weights"] == ALEX and prov["backbone_sha256"] == weights.sha256_file(
        weights.path(ALEX))
    assert prov["label"] == "lpips-v0.1-alex"


def test_a_file_that_is_not_the_backbone_is_refused(cache):
    cache.mkdir(parents=True)
    path = cache / weights.KNOWN[ALEX].filename
    torch.save({"classifier.1.weight": torch.zeros(2, 2)}, path)
    weights.trust(ALEX, path)
    with pytest.raises(KeyError, match="no features.0.weight"):
        load_lpips("alex")


def test_random_backbone_is_seeded_and_labelled():
    a, b = load_lpips("alex", backbone="random"), load_lpips("alex", backbone="random")
    assert torch.equal(a.net.slice1[0].weight, b.net.slice1[0].weight)
    assert lpips_label("alex", "random") == "lpips-v0.1-alex-RANDOM-backbone"
    state = torch.get_rng_state()
    load_lpips("alex", backbone="random")
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
