"""JEDi: V-JEPA features and the MMD at parity with videojedi 1.1.0; the moment identity against a float64 Gram
computation; checkpoint layout (strict), preprocessing, streaming, reference guard, registry.

Parity runs the peer's own code (``pytest.importorskip``: videojedi, vjepa, scikit-learn, opencv are test-only
extras): its ``load_pretrained`` / ``load_checkpoint`` read the files we save in the published layout, its
``VJEPA.get_feats`` computes the features and its ``JEDiMetric.compute_metric`` the value.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

import cmdbench.metrics.catalog  # noqa: F401  (registers jedi)
from cmdbench.interfaces import VideoMetric
from cmdbench.metrics import vjepa
from cmdbench.metrics.frechet import FeatureStats, GaussianStats, InsufficientSamplesError
from cmdbench.metrics.fvd import preprocessing_of
from cmdbench.metrics.jedi import PROTOCOL, JEDi, jedi_distance
from cmdbench.metrics.reference import ProtocolMismatchError
from cmdbench.registry import METRICS
from cmdbench.video import VideoFormatError

PREP = preprocessing_of(PROTOCOL)


def clips(n: int, seed: int, size: tuple[int, int] = (224, 224), t: int = 16) -> torch.Tensor:
    """uint8 (n, t, 3, H, W): smooth per-video colour + moving noise, so features differ between videos."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 3, 1, 1, generator=g) * 160
    noise = torch.rand(n, t, 3, *size, generator=g) * torch.rand(n, 1, 1, 1, 1, generator=g) * 90
    return (base + noise).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A random tiny V-JEPA + probe saved in the published files' layout; returns (net, encoder, probe)."""
    d = tmp_path_factory.mktemp("vjepa")
    torch.manual_seed(0)
    net = vjepa.init_random_(vjepa.VJEPAFeatureNet(vjepa.TINY)).eval()
    with torch.no_grad():  # non-trivial LayerNorm affines, so a swapped norm is seen
        for m in net.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    enc, probe = d / "vith16.pth.tar", d / "ssv2-probe.pth.tar"
    vjepa.save_vjepa(net, enc, probe)
    return net, enc, probe


def real_extractor(tiny_files):
    """The real loading path (file checksums, strict load) on the tiny files."""
    _, enc, probe = tiny_files
    return vjepa.make_vjepa_extractor(vjepa.REAL_NAME, PREP, path=enc, probe_path=probe, batch_size=3,
                                      config=vjepa.TINY)


# --- the maths, without the peer ----------------------------------------------------------------------------
def gram_jedi(x: np.ndarray, y: np.ndarray) -> float:
    """100 x biased MMD² with k(a, b) = (a·b / D)², from the three full Gram matrices (float64)."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b.T / d) ** 2

    return 100.0 * (k(x, x).mean() + k(y, y).mean() - 2.0 * k(x, y).mean())


def stats_of(x: np.ndarray) -> FeatureStats:
    s = FeatureStats(x.shape[1])
    s.update(x)
    return s


def test_moment_identity_equals_the_gram_matrix_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, 7)) + 0.3
    y = rng.standard_normal((31, 7)) * 1.4
    expected = gram_jedi(x, y)
    assert jedi_distance(stats_of(x), stats_of(y)) == pytest.approx(expected, rel=1e-12)
    assert jedi_distance(stats_of(y), stats_of(x)) == pytest.approx(expected, rel=1e-12)  # symmetric
    assert jedi_distance(stats_of(x), stats_of(np.concatenate([x, x]))) == pytest.approx(0.0, abs=1e-12)
    # streaming in chunks and merging shards give the same statistics
    a, b = stats_of(x[:10]), stats_of(x[10:])
    assert jedi_distance(a.merge(b), stats_of(y)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(InsufficientSamplesError):
        jedi_distance(FeatureStats(7), stats_of(y))


def test_net_layout_matches_the_published_files_and_loads_strictly(tiny_files, tmp_path):
    net, enc, probe = tiny_files
    loaded = vjepa.load_vjepa(enc, probe, vjepa.TINY)
    for (k, v), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    raw = torch.load(enc, weights_only=True)["target_encoder"]
    assert "module.backbone.pos_embed" in raw and "module.backbone.blocks.0.attn.qkv.weight" in raw
    assert "module.pooler.cross_attention_block.xattn.kv.weight" in torch.load(probe, weights_only=True)["classifier"]
    # a missing tensor, an extra one, a file without the entry and a wrong depth are refused, naming the file
    state = torch.load(probe, weights_only=True)["classifier"]
    missing = {k: v for k, v in state.items() if k != "module.linear.bias"}
    torch.save({"classifier": missing}, tmp_path / "p.tar")
    with pytest.raises(ValueError, match="(?s)p.tar does not match.*linear.bias"):
        vjepa.load_vjepa(enc, tmp_path / "p.tar", vjepa.TINY)
    torch.save({"classifier": {**state, "module.pooler.blocks.0.norm1.weight": torch.ones(48)}}, tmp_path / "x.tar")
    with pytest.raises(ValueError, match="(?s)x.tar does not match.*Unexpected"):
        vjepa.load_vjepa(enc, tmp_path / "x.tar", vjepa.TINY)
    torch.save({"state_dict": {}}, tmp_path / "e.tar")
    with pytest.raises(ValueError, match="e.tar has none of the keys"):
        vjepa.load_vjepa(tmp_path / "e.tar", probe, vjepa.TINY)
    with pytest.raises(ValueError, match="does not match"):
        vjepa.load_vjepa(enc, probe, vjepa.VJEPAConfig(embed_dim=48, depth=3, num_heads=3, num_classes=5))
    with pytest.raises(FileNotFoundError, match="nope"):
        vjepa.load_vjepa(tmp_path / "nope", probe, vjepa.TINY)


def test_extractor_normalises_resizes_and_is_batch_invariant(tiny_files):
    net, enc, probe = tiny_files
    ex = real_extractor(tiny_files)
    v = clips(3, 1)
    feats = ex.extract(v)
    assert feats.shape == (3, vjepa.TINY.embed_dim) and feats.dtype == np.float64
    x = v.permute(0, 2, 1, 3, 4).float() / 255  # (B, 3, T, H, W) in [0, 1]
    mean, std = torch.tensor(vjepa.IMAGENET_MEAN), torch.tensor(vjepa.IMAGENET_STD)
    with torch.no_grad():
        manual = net((x - mean[:, None, None, None]) / std[:, None, None, None]).double().numpy()
    np.testing.assert_allclose(feats, manual, rtol=1e-5, atol=1e-6)
    one_by_one = np.concatenate([ex.extract(v[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(one_by_one, feats, rtol=1e-5, atol=1e-6)
    # other sizes are resized by the protocol (shorter side to 224, centre crop), so the output is the same shape
    assert ex.extract(clips(2, 2, size=(64, 96))).shape == (2, vjepa.TINY.embed_dim)
    with pytest.raises(VideoFormatError):
        ex.extract(clips(1, 3, t=1))


def test_metric_streams_records_its_protocol_and_guards_reference(tiny_files):
    ex = real_extractor(tiny_files)
    m = JEDi(extractor=ex, num_real=4, num_fake=3)
    assert isinstance(m, VideoMetric) and m.name == "jedi"
    m.update_real(clips(4, 10, t=18))  # whole videos: the protocol's first 16 frames
    m.update(clips(2, 11))
    m.update(clips(1, 12))
    out = m.compute()
    real = ex.extract(clips(4, 10, t=18)[:, :16])
    fake = ex.extract(torch.cat([clips(2, 11), clips(1, 12)]))
    assert out.value == pytest.approx(gram_jedi(real, fake), rel=1e-5)  # float32 features, other batches
    assert out.n == 3 and out.extra["conformant"] and out.protocol == "jedi"
    d = out.extra["describe"]
    assert ex.checksum[:12] in d and "degree 2" in d and "short_side_crop 224" in d and "ImageNet" in d
    assert out.extra["weight_files"][vjepa.ENCODER_WEIGHTS] == vjepa.file_sha256(tiny_files[1])
    assert out.extra["weights_verified"] is False  # random files: not the published checksums
    with pytest.raises(InsufficientSamplesError, match="num_fake=3"):
        m.update(clips(1, 13))
        m.compute()
    # statistics of another extractor (a different checksum) are refused
    other = JEDi(extractor="vjepa-random-tiny", strict=False)
    with pytest.raises(ProtocolMismatchError):
        other.set_reference(m.real_accum)
    # (mu, sigma) of another tool has no second moments
    mu, sigma = m.real_accum.mean_cov(1, allow_singular=True)
    with pytest.raises(ValueError, match="second moments"):
        m.set_reference(GaussianStats(mu, sigma, n=4, metadata=m.real_accum.metadata))


def test_registry_factory_and_random_stand_ins():
    m = METRICS.get("jedi")(extractor="vjepa-random-tiny", strict=False, batch_size=2)
    assert m.extractor.name == "vjepa-random-tiny" and m.protocol.extractor == "vjepa-random-tiny"
    again = METRICS.get("jedi")(extractor="vjepa-random-tiny", strict=False)
    assert again.extractor.checksum == m.extractor.checksum  # seeded
    m.update_real(clips(2, 20))
    m.update(clips(2, 21))
    assert m.compute().value > 0 and m.fake.bank is None  # second moments only, unless asked
    kept = METRICS.get("jedi")(extractor="vjepa-random-tiny", strict=False, keep_features=True)
    kept.update(clips(2, 21))
    assert kept.fake.bank is not None and len(kept.fake.bank) == 2
    with pytest.raises(ValueError, match="one protocol"):
        METRICS.get("jedi")(protocol="videogpt")
    with pytest.raises(ValueError, match="unknown V-JEPA extractor"):
        METRICS.get("jedi")(extractor="i3d")
    assert set(METRICS.get("jedi").options) >= {"ref_stats", "extractor_path", "probe_path", "num_fake"}


def test_full_size_layout_is_vit_h16_with_the_ssv2_probe():
    with torch.device("meta"):
        net = vjepa.VJEPAFeatureNet(vjepa.VIT_H16)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["encoder.patch_embed.proj.weight"] == (1280, 3, 2, 16, 16)
    assert shapes["encoder.pos_embed"] == (1, 8 * 14 * 14, 1280)
    assert shapes["encoder.blocks.31.mlp.fc1.weight"] == (5120, 1280) and "encoder.blocks.32.norm1.weight" not in shapes
    assert shapes["probe.pooler.query_tokens"] == (1, 1, 1280) and shapes["probe.linear.weight"] == (174, 1280)
    assert sum(np.prod(s) for k, s in shapes.items() if k.startswith("encoder.")) == pytest.approx(632e6, rel=0.01)


# --- parity with videojedi 1.1.0 ------------------------------------------------------------------------
def peer_vjepa(tiny_files):
    """The peer's VJEPA object around its own modules, loaded by its own loaders from our files."""
    pytest.importorskip("sklearn")
    pytest.importorskip("cv2")
    v_jepa = pytest.importorskip("videojedi.V_JEPA")
    from videojedi.V_JEPA_utils import ClipAggregation
    from vjepa.datasets.utils.video import transforms as video_transforms
    from vjepa.models.attentive_pooler import AttentiveClassifier
    from vjepa.models.vision_transformer import VisionTransformer

    _, enc_path, probe_path = tiny_files
    c = vjepa.TINY
    vit = VisionTransformer(img_size=c.img_size, patch_size=c.patch_size, num_frames=c.num_frames,
                            tubelet_size=c.tubelet_size, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
                            mlp_ratio=c.mlp_ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                            uniform_power=c.uniform_power)
    vit = v_jepa.load_pretrained(vit, str(enc_path), checkpoint_key="target_encoder")  # the peer's key handling

    class DDPLike(nn.Module):  # what DistributedDataParallel adds to the probe: a `module.` level
        def __init__(self, module):
            super().__init__()
            self.module = module

    classifier = DDPLike(AttentiveClassifier(embed_dim=c.embed_dim, num_heads=c.num_heads, depth=1,
                                             num_classes=c.num_classes))
    classifier = v_jepa.load_checkpoint("cpu", str(probe_path), classifier)
    peer = object.__new__(v_jepa.VJEPA)  # VJEPA.__init__ downloads the full files: set what get_feats reads
    peer.encoder = ClipAggregation(vit, tubelet_size=c.tubelet_size, attend_across_segments=True).eval()
    peer.classifier = classifier.eval()
    peer.finetuned = True
    peer.transforms = video_transforms.Normalize(mean=vjepa.IMAGENET_MEAN, std=vjepa.IMAGENET_STD)
    return peer


def test_peer_loads_the_same_files_strictly(tiny_files):
    peer = peer_vjepa(tiny_files)
    net = tiny_files[0]
    ours = {**{f"model.{k}": v for k, v in net.encoder.state_dict().items()},
            **{f"module.{k}": v for k, v in net.probe.state_dict().items()}}
    theirs = {**peer.encoder.state_dict(), **peer.classifier.state_dict()}
    assert sorted(ours) == sorted(theirs)  # same names, nothing left at its initial value
    for k, v in theirs.items():
        assert torch.equal(v, ours[k]), k


@pytest.mark.filterwarnings("ignore:feature_path is not provided")  # JEDiMetric() without a cache folder
def test_features_and_value_match_videojedi(tiny_files):
    peer = peer_vjepa(tiny_files)
    from videojedi import JEDiMetric

    ex = real_extractor(tiny_files)
    real, fake = clips(5, 30), clips(4, 31)
    peer_real = peer.get_feats(real.float() / 255)  # the peer takes (B, T, 3, H, W) in [0, 1]
    peer_fake = peer.get_feats(fake.float() / 255)
    ours_real, ours_fake = ex.extract(real), ex.extract(fake)
    for ours, theirs in ((ours_real, peer_real), (ours_fake, peer_fake)):
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
    m = JEDi(extractor=ex, strict=False)
    m.update_real(real)
    m.update(fake)
    value = m.compute().value
    ref = JEDiMetric()
    # sklearn keeps float32 features in float32; the peer's value on the same numbers in float64 is the reference
    ref.train_features, ref.test_features = peer_real.astype(np.float64), peer_fake.astype(np.float64)
    assert value == pytest.approx(ref.compute_metric(), rel=1e-6)


def test_position_embedding_and_its_resizing_match_vjepa(tiny_files):
    pos_embs = pytest.importorskip("vjepa.models.utils.pos_embs")
    for uniform in (True, False):
        theirs = pos_embs.get_3d_sincos_pos_embed(48, 14, 8, uniform_power=uniform)
        np.testing.assert_allclose(vjepa.sincos_3d(48, (8, 14, 14), uniform_power=uniform).numpy(), theirs, atol=1e-12)
    peer = peer_vjepa(tiny_files)
    x = torch.randn(2, 3, 8, 64, 96)  # not the stored 16 x 224 x 224: both resize the embedding trilinearly
    with torch.no_grad():
        theirs = peer.encoder.model(x)
        ours = tiny_files[0].encoder(x)
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_full_size_layout_equals_the_peers_vit_huge_and_probe():
    pytest.importorskip("cv2")
    from vjepa.models import vit_huge
    from vjepa.models.attentive_pooler import AttentiveClassifier

    with torch.device("meta"):
        ours = vjepa.VJEPAFeatureNet(vjepa.VIT_H16)
        enc = vit_huge(img_size=224, num_frames=16, tubelet_size=2, uniform_power=True)
        probe = AttentiveClassifier(embed_dim=1280, num_heads=16, depth=1, num_classes=174)
    for mine, theirs in ((ours.encoder, enc), (ours.probe, probe)):
        assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
