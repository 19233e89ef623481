"""Content-debiased FVD: VideoMAE-v2 features and the Fréchet value at parity with cd-fvd 0.1.1; checkpoint layout
(strict, full size checked against the peer's ViT-g/14 builder), preprocessing, protocol, registry.

Parity runs the peer's own code (``pytest.importorskip("cdfvd")``; cd-fvd is a test-only extra): its
VideoMAE-v2 ``VisionTransformer`` loads our state dict strictly, its ``get_videomae_features`` (with its own
``preprocess_videomae``) computes the features into its ``FeatureStats`` and its ``compute_fvd_from_stats`` the
value.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import cmdbench.metrics.catalog  # noqa: F401  (registers fvd-videomae)
from cmdbench.metrics import videomae
from cmdbench.metrics.frechet import FeatureStats
from cmdbench.metrics.fvd import preprocessing_of
from cmdbench.metrics.reference import ProtocolMismatchError
from cmdbench.metrics.vit_blocks import Attention
from cmdbench.registry import METRICS
from cmdbench.video import VideoFormatError

PREP = preprocessing_of(videomae.PROTOCOL)
# Parity config: narrow enough that more clips than feature dimensions stay cheap (a full-rank covariance).
SMALL = videomae.VideoMAEConfig(embed_dim=8, depth=2, num_heads=2, num_classes=3)


def clips(n: int, seed: int, size: tuple[int, int] = (32, 40), t: int = 16) -> torch.Tensor:
    """uint8 (n, t, 3, H, W) with per-video colour and noise level, so features differ between videos."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 3, 1, 1, generator=g) * 160
    noise = torch.rand(n, t, 3, *size, generator=g) * torch.rand(n, 1, 1, 1, 1, generator=g) * 90
    return (base + noise).clamp(0, 255).to(torch.uint8)


def random_model(config: videomae.VideoMAEConfig, seed: int = 0) -> videomae.VideoMAEv2:
    torch.manual_seed(seed)
    model = videomae.init_random_(videomae.VideoMAEv2(config)).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a dropped q/v bias or a swapped norm is seen
        for m in model.modules():
            if isinstance(m, Attention):
                m.q_bias.normal_(0, 0.1)
                m.v_bias.normal_(0, 0.1)
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A random SMALL model saved as cd-fvd's loader expects it (``{"module": state_dict}``)."""
    path = tmp_path_factory.mktemp("videomae") / "vit_g_hybrid_pt_1200e_ssv2_ft.pth"
    model = random_model(SMALL)
    torch.save({"module": model.state_dict()}, path)
    return model, path


def extractor_for(path) -> videomae.VideoMAEExtractor:
    model = videomae.load_videomae(path, SMALL)
    return videomae.VideoMAEExtractor(model, PREP, name=videomae.WEIGHTS_NAME, checksum=videomae.file_sha256(path),
                                      batch_size=8, weights_path=path)


# --- without the peer -----------------------------------------------------------------------------------
def test_layout_loads_strictly_in_every_wrapping(small_file, tmp_path):
    model, path = small_file
    for wrap in (lambda sd: sd, lambda sd: {"model": sd}, lambda sd: {"module": sd}):
        torch.save(wrap(model.state_dict()), tmp_path / "w.pth")
        loaded = videomae.load_videomae(tmp_path / "w.pth", SMALL)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                     strict=True))
    keys = set(model.state_dict())
    assert {"blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "fc_norm.weight", "head.weight"} <= keys
    assert "blocks.0.attn.qkv.bias" not in keys and "pos_embed" not in keys  # no key bias; table not stored
    torch.save({"module": {**model.state_dict(), "norm.weight": torch.ones(8)}}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="(?s)extra.pth does not match.*norm.weight"):
        videomae.load_videomae(tmp_path / "extra.pth", SMALL)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        videomae.load_videomae(tmp_path / "missing.pth", SMALL)


def test_full_size_layout_is_vit_g14():
    with torch.device("meta"):
        model = videomae.VideoMAEv2(videomae.VIT_G14)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["patch_embed.proj.weight"] == (1408, 3, 2, 14, 14)
    assert shapes["blocks.39.mlp.fc1.weight"] == (6144, 1408) and "blocks.40.norm1.weight" not in shapes
    assert shapes["head.weight"] == (174, 1408) and tuple(model.pos_embed.shape) == (1, 2048, 1408)
    assert sum(np.prod(s) for s in shapes.values()) == pytest.approx(1.01e9, rel=0.01)


def test_extractor_preprocessing_and_frame_count(small_file):
    model, path = small_file
    ex = extractor_for(path)
    v = clips(3, 1)
    feats = ex.extract(v)
    assert feats.shape == (3, 8) and feats.dtype == np.float64
    # cd-fvd's preprocessing, written out: /255, whole frame to 224x224 bilinear, no mean/std
    x = torch.nn.functional.interpolate(v.flatten(0, 1).float() / 255, size=(224, 224), mode="bilinear",
                                        align_corners=False).reshape(3, 16, 3, 224, 224).permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        np.testing.assert_allclose(feats, model.forward_features(x).double().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(VideoFormatError, match="16"):
        model.forward_features(torch.zeros(1, 3, 8, 224, 224))
    with pytest.raises(ValueError, match="whole frames"):
        videomae.VideoMAEExtractor(model, preprocessing_of(videomae.PROTOCOL.__class__(name="x")), name="x",
                                   checksum="x")


def test_metric_is_fvd_with_biased_covariance_and_scipy_sqrtm(small_file):
    _, path = small_file
    ex = extractor_for(path)
    m = METRICS.get("fvd-videomae")(extractor=ex, num_real=10, num_fake=10)
    assert m.name == "fvd_videomae" and m.protocol.ddof == 0 and m.protocol.sqrtm == "scipy"
    real, fake = clips(10, 2, t=20), clips(10, 3)
    m.update_real(real)  # the first 16 frames of each video
    m.update(fake)
    out = m.compute()
    # an independent float64 Fréchet distance: /N covariance, scipy sqrtm
    a, b = ex.extract(real[:, :16]), ex.extract(fake)
    ca, cb = np.cov(a, rowvar=False, ddof=0), np.cov(b, rowvar=False, ddof=0)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert out.value == pytest.approx(expected, rel=1e-5)
    assert out.protocol == "videomae" and out.extra["follows"].startswith("cd-fvd 0.1.1")
    assert out.extra["extractor_checksum"] == videomae.file_sha256(path) and out.extra["weights_verified"] is False
    assert "biased (/N)" in out.extra["describe"] and out.extra["resize"] == "whole"
    # statistics of the I3D presets (another extractor and protocol) are refused
    with pytest.raises(ProtocolMismatchError):
        m.set_reference(FeatureStats(8, metadata={"feature_hash": "x", "numerics": {}}))
    with pytest.raises(ValueError, match="one protocol"):
        METRICS.get("fvd-videomae")(protocol="videogpt")


def test_random_stand_ins_are_seeded():
    a = videomae.make_videomae_extractor("videomae-random-tiny", PREP)
    b = videomae.make_videomae_extractor("videomae-random-tiny", PREP)
    assert a.checksum == b.checksum and a.dim == videomae.TINY.embed_dim
    assert a.extract(clips(1, 4)).shape == (1, videomae.TINY.embed_dim)
    with pytest.raises(ValueError, match="unknown VideoMAE-v2 extractor"):
        videomae.make_videomae_extractor("i3d", PREP)


# --- parity with cd-fvd 0.1.1 ---------------------------------------------------------------------------
def peer_model(config: videomae.VideoMAEConfig):
    finetune = pytest.importorskip("cdfvd.third_party.VideoMAEv2.videomaev2_finetune")
    return finetune.VisionTransformer(
        img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim, depth=config.depth,
        num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=config.num_classes, all_frames=config.num_frames,
        tubelet_size=config.tubelet_size, use_mean_pooling=True,
    )


def test_features_and_value_match_cd_fvd(small_file):
    fvd_mod = pytest.importorskip("cdfvd.fvd")
    from cdfvd.utils.metric_utils import FeatureStats as PeerStats

    _, path = small_file
    peer = peer_model(SMALL)
    state = torch.load(path, weights_only=True)["module"]
    peer.load_state_dict(state, strict=True)  # the same file, strictly, into the peer's module
    peer.eval()
    real, fake = clips(10, 5), clips(10, 6)
    stats = {}
    for name, v in (("real", real), ("fake", fake)):
        s = PeerStats(capture_mean_cov=True, capture_all=True)
        # the peer's own feature path: uint8 (B, T, H, W, C) numpy -> preprocess_videomae -> forward_features
        stats[name] = fvd_mod.get_videomae_features(s, peer, v.permute(0, 1, 3, 4, 2).numpy(), batchsize=8,
                                                    device="cpu")
    ex = extractor_for(path)
    for name, v in (("real", real), ("fake", fake)):
        theirs, ours = stats[name].get_all(), ex.extract(v)
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
    m = videomae.ContentDebiasedFVD(extractor=ex, num_real=10, num_fake=10)
    m.update_real(real)
    m.update(fake)
    peer_fvd = object.__new__(fvd_mod.cdfvd)  # cdfvd.__init__ loads the full checkpoint; the method needs none of it
    reference = peer_fvd.compute_fvd_from_stats(stats["fake"], stats["real"])
    assert m.compute().value == pytest.approx(float(reference), rel=1e-6)


def test_sinusoid_table_matches_the_peers():
    finetune = pytest.importorskip("cdfvd.third_party.VideoMAEv2.videomaev2_finetune")
    ours = videomae.sinusoid_table(SMALL.num_patches, 24)
    assert torch.equal(ours, finetune.get_sinusoid_encoding_table(SMALL.num_patches, 24))


def test_full_size_layout_equals_the_peers_vit_giant(monkeypatch):
    finetune = pytest.importorskip("cdfvd.third_party.VideoMAEv2.videomaev2_finetune")
    cpu_linspace = torch.linspace  # the peer reads its drop-path schedule with .item(): keep that one on the CPU
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: cpu_linspace(*a, **{**k, "device": "cpu"}))
    # its position table is a plain attribute (not in the state dict), built by a slow Python loop: skip it here
    monkeypatch.setattr(finetune, "get_sinusoid_encoding_table", lambda n, d: torch.zeros(1, n, d))
    with torch.device("meta"):
        ours = videomae.VideoMAEv2(videomae.VIT_G14)
        # cd-fvd's load_videomae_model builds exactly this, then load_state_dict(strict=True)
        theirs = finetune.vit_giant_patch14_224(img_size=224, pretrained=False, num_classes=174, all_frames=16,
                                                tubelet_size=2, drop_path_rate=0.3, use_mean_pooling=True)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
