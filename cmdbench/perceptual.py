"""LPIPS (Zhang et al., CVPR 2018) from the ``lpips`` package, its backbone through ``cmdbench weights``.

The one loader for every LPIPS in cmdbench: the reconstruction metric (:mod:`cmdbench.metrics.reconstruction`)
and the autoencoder's perceptual training term.

- The linear calibration layers (LPIPS v0.1, ``alex.pth`` / ``vgg.pth``) ship in the ``lpips`` wheel and
  are loaded by the package itself (their sha256 is recorded by :func:`lpips_provenance`).
- The ImageNet backbone is torchvision's weight file, which the package would download through
  torchvision on first use. Here it is a registered weight file (:data:`BACKBONE_WEIGHTS`): nothing is
  downloaded implicitly, the file is verified, and a missing file raises
  :class:`cmdbench.weights.MissingWeightsError` naming ``cmdbench weights fetch <name>``.
- ``backbone="random"`` builds an untrained backbone (seeded): only for tests of the plumbing, and its
  values are not LPIPS; every label derived from it says ``RANDOM``.

The backbone file is torchvision's ``features.{i}.*`` layout; lpips regroups the same modules as
``net.slice{k}.{i}.*`` (:func:`load_backbone`, strict).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from cmdbench import weights

LPIPS_NETS = ("alex", "vgg")
BACKBONES = ("imagenet", "random")
# net -> cmdbench weight-file name of its torchvision ImageNet backbone
BACKBONE_WEIGHTS = {"alex": "torchvision_alexnet_imagenet1k_v1", "vgg": "torchvision_vgg16_imagenet1k_v1"}
RANDOM_BACKBONE_SEED = 0
LPIPS_VERSION = "0.1"


def _check(net: str, backbone: str) -> None:
    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net={net!r} is not supported; allowed {LPIPS_NETS} (torchvision backbones with "
                         "a registered weight file)")
    if backbone not in BACKBONES:
        raise ValueError(f"LPIPS backbone={backbone!r} is not allowed; use one of {BACKBONES} "
                         "('random' is for tests only: its values are not LPIPS)")


def load_lpips(net: str = "alex", device: str | torch.device = "cpu", backbone: str = "imagenet") -> torch.nn.Module:
    """``lpips.LPIPS`` (v0.1 linear layers from the wheel) with the ``net`` backbone, frozen, in eval mode.

    backbone: ``"imagenet"`` reads torchvision's file from the cmdbench weights cache (verified; a clear
    error says how to fetch it when missing); ``"random"``: untrained, seeded (tests only).
    Call as ``model(x, y)`` with float ``(N, 3, H, W)`` in [-1, 1] -> ``(N, 1, 1, 1)`` distances.
    """
    _check(net, backbone)
    state = None
    if backbone == "imagenet":  # look for the file first: a missing file should not cost a model build
        state = torch.load(weights.require(BACKBONE_WEIGHTS[net]), map_location="cpu", weights_only=True)
    import lpips

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # lpips 0.1.4 passes torchvision's deprecated `pretrained=`
        torch.manual_seed(RANDOM_BACKBONE_SEED)  # the random backbone's init (overwritten for imagenet)
        model = lpips.LPIPS(net=net, version=LPIPS_VERSION, pretrained=True, pnet_rand=True, verbose=False)
    if state is not None:
        load_backbone(model, state)
    return model.to(device).eval().requires_grad_(False)


def check_frame_size(model: torch.nn.Module, height: int, width: int) -> None:
    """Raise a ValueError naming the size when the LPIPS ``model`` cannot compare ``height x width`` frames
    (AlexNet's pooling leaves nothing of frames under 31x31): one probe forward on zeros."""
    p = next(model.parameters())
    probe = torch.zeros(1, 3, height, width, device=p.device, dtype=p.dtype)
    try:
        with torch.no_grad():
            model(probe, probe)
    except RuntimeError as err:
        raise ValueError(f"LPIPS cannot score {height}x{width} frames (its AlexNet pools them to nothing; it needs "
                         f"at least 31x31, the vgg net takes smaller ones): {err}") from err


def load_backbone(model: torch.nn.Module, torchvision_state: dict[str, torch.Tensor]) -> None:
    """Copy torchvision's ``features.{i}.*`` into lpips' ``net.slice{k}.{i}.*`` (same modules, regrouped)."""
    target = model.net.state_dict()
    mapped = {}
    for key in target:
        _, index, leaf = key.split(".", 2)  # "slice2.3.weight" -> features.3.weight
        source = f"features.{index}.{leaf}"
        if source not in torchvision_state:
            raise KeyError(f"the torchvision backbone file has no {source} (needed for LPIPS net.{key}); is it "
                           f"torchvision's {type(model.net).__name__} ImageNet file?")
        mapped[key] = torchvision_state[source]
    model.net.load_state_dict(mapped, strict=True)


def linear_layers_file(net: str) -> Path:
    """The ``lpips`` wheel's calibrated linear layers for ``net`` (``weights/v0.1/<net>.pth``)."""
    import lpips

    return Path(lpips.__file__).parent / "weights" / f"v{LPIPS_VERSION}" / f"{net}.pth"


def lpips_provenance(net: str = "alex", backbone: str = "imagenet") -> dict[str, str | None]:
    """What an LPIPS value depends on: label, backbone weight name/sha256, linear layers' sha256."""
    _check(net, backbone)
    linear = hashlib.sha256(linear_layers_file(net).read_bytes()).hexdigest()
    if backbone == "random":
        return {"label": lpips_label(net, backbone), "backbone_weights": None,
                "backbone_sha256": f"random-seed{RANDOM_BACKBONE_SEED}", "linear_sha256": linear}
    name = BACKBONE_WEIGHTS[net]
    return {"label": lpips_label(net, backbone), "backbone_weights": name,
            "backbone_sha256": weights.sha256_file(weights.require(name)), "linear_sha256": linear}


def lpips_label(net: str = "alex", backbone: str = "imagenet") -> str:
    """``"lpips-v0.1-alex"``, or ``"lpips-v0.1-alex-RANDOM-backbone"`` for the test stand-in."""
    _check(net, backbone)
    return f"lpips-v{LPIPS_VERSION}-{net}" + ("-RANDOM-backbone" if backbone == "random" else "")
