"""FVD metric: presets, protocol guard, counts, reference cache, end to end with a tiny random I3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdbench.interfaces import MetricValue, VideoMetric
from cmdbench.metrics.frechet import FeatureStats, InsufficientSamplesError, stats_distance
from cmdbench.metrics.fvd import FVD, PRESETS, build_extractor, get_protocol, preprocessing_of
from cmdbench.metrics.preprocess import Preprocessing
from cmdbench.metrics.reference import ProtocolMismatchError, ReferenceCache, stats_key
from cmdbench.registry import METRICS


class PixelStatsExtractor:
    """A cheap deterministic extractor (dim 6): per-channel mean and std of the clip, for protocol logic."""

    name = "pixel-stats"
    dim = 6
    min_frames = 1
    checksum = "pixelstats-v1"

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing
        self.calls = 0

    def extract(self, videos: torch.Tensor) -> np.ndarray:
        self.calls += 1
        x = videos.double() / 255.0  # (B, T, 3, H, W)
        return torch.cat([x.mean(dim=(1, 3, 4)), x.std(dim=(1, 3, 4))], dim=1).numpy()


def videos(n: int, seed: int, t: int = 4, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 3, 1, 1, generator=g) * 150 + shift
    noise = torch.rand(n, t, 3, 6, 6, generator=g) * torch.rand(n, 1, 1, 1, 1, generator=g) * 80
    return (base + noise).clamp(0, 255).to(torch.uint8)


def small_protocol(preset: str = "tats", **kw):
    return get_protocol(preset).__class__(**{**get_protocol(preset).__dict__, "num_frames": 4, "num_real": 40,
                                            "num_fake": 40, **kw})


def make_fvd(protocol=None, **kw) -> FVD:
    protocol = protocol or small_protocol()
    return FVD(protocol, extractor=PixelStatsExtractor(preprocessing_of(protocol)), **kw)


def test_fvd_matches_direct_computation_and_records_counts():
    m = make_fvd()
    assert isinstance(m, VideoMetric)
    real, fake = videos(40, 0), videos(40, 1, shift=30)
    m.update_real(real[:25])
    m.update_real(real[25:])
    for chunk in fake.split(7):
        m.update(chunk)
    out = m.compute()
    assert isinstance(out, MetricValue) and out.higher_is_better is False
    ex = PixelStatsExtractor(Preprocessing())
    rs, fs = FeatureStats(6), FeatureStats(6)
    rs.update(ex.extract(real))
    fs.update(ex.extract(fake))
    assert out.value == pytest.approx(stats_distance(rs, fs, ddof=1, method="svd"), rel=1e-10)
    assert out.value > 0.01
    assert out.extra["n_real"] == 40 and out.extra["n_fake"] == 40 and out.n == 40
    assert out.extra["conformant"] is True and out.protocol == "tats"


def test_fvd_of_a_set_with_itself_is_zero():
    m = make_fvd()
    v = videos(40, 3)
    m.update_real(v)
    m.update(v)
    assert m.compute().value == pytest.approx(0.0, abs=1e-9)


def test_presets_state_every_knob():
    sg, tf, vg = PRESETS["stylegan-v"], PRESETS["tf-reference"], PRESETS["videogpt"]
    assert (sg.extractor, sg.resize, sg.ddof, sg.sqrtm, sg.num_frames) == ("i3d_torchscript", "detector", 0, "scipy", 16)
    assert (tf.resize, tf.resize_kernel, tf.value_range, tf.ddof, tf.sqrtm) == ("whole", "tf1", (-1.0, 1.0), 1, "svd")
    assert (vg.extractor, vg.resize, vg.ddof, vg.sqrtm, vg.size) == ("i3d_pretrained_400", "short_side_crop", 1, "svd", 224)
    p = get_protocol("stylegan-v", "fvd2048_128f_subsample8f")
    assert (p.num_real, p.num_fake, p.num_frames, p.frame_stride) == (2048, 2048, 16, 8)
    assert get_protocol("videogpt", "fvd10k_16f").num_fake == 10_000
    with pytest.raises(ValueError, match="allowed"):
        get_protocol("stylegan-v", "fvd7_3f")


def test_biased_and_unbiased_presets_differ():
    values = {}
    for ddof in (0, 1):
        m = make_fvd(small_protocol(ddof=ddof))
        m.update_real(videos(40, 0))
        m.update(videos(40, 1, shift=20))
        values[ddof] = m.compute().value
    assert values[0] != pytest.approx(values[1], rel=1e-6)


def test_wrong_count_refused_unless_not_strict():
    m = make_fvd()
    m.update_real(videos(40, 0))
    m.update(videos(39, 1))
    with pytest.raises(InsufficientSamplesError, match="num_fake=40"):
        m.compute()
    m.strict = False
    out = m.compute()
    assert out.extra["conformant"] is False and out.extra["n_fake"] == 39


def test_too_few_frames_and_bad_input():
    m = make_fvd()
    with pytest.raises(ValueError, match="need 4"):
        m.update(videos(2, 0, t=3))
    with pytest.raises(ValueError, match="uint8"):
        m.update(torch.zeros(2, 4, 3, 6, 6))
    with pytest.raises(ValueError, match="no real statistics"):
        m.update(videos(2, 0))
        m.compute()


def test_protocol_mismatch_refused(tmp_path):
    tats = small_protocol("tats")
    m = make_fvd(tats)
    m.update_real(videos(40, 0))
    path = m.real_accum.save(tmp_path / "real.npz")
    # same protocol: accepted
    FVD(tats, extractor=PixelStatsExtractor(preprocessing_of(tats)), reference=path)
    # short-side crop instead of whole frame: refused, naming the field
    vg = small_protocol("videogpt", extractor="pixel-stats")
    with pytest.raises(ProtocolMismatchError, match="resize"):
        FVD(vg, extractor=PixelStatsExtractor(preprocessing_of(vg)), reference=path)
    # another extractor checksum: refused
    other = PixelStatsExtractor(preprocessing_of(tats))
    other.checksum = "different-weights"
    with pytest.raises(ProtocolMismatchError, match="checksum"):
        FVD(tats, extractor=other, reference=path)
    # a count that is not the protocol's num_real: refused
    m2 = make_fvd(tats)
    m2.update_real(videos(30, 0))
    with pytest.raises(ProtocolMismatchError, match="num_real=40"):
        m.set_reference(m2.real_accum)


def test_reference_cache_is_content_addressed(tmp_path):
    p = small_protocol()
    m = make_fvd(p)
    m.update_real(videos(40, 0))
    cache = ReferenceCache(tmp_path)
    proto, checksum = m.protocol, m.extractor.checksum
    assert cache.get(proto, checksum, "manifest-a") is None
    path = cache.put(m.real_accum, proto, checksum, "manifest-a")
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    got = cache.get(proto, checksum, "manifest-a")
    np.testing.assert_array_equal(got.outer, m.real_accum.outer)
    assert cache.get(proto, checksum, "manifest-b") is None  # other dataset content, other key
    keys = {stats_key(proto, checksum), stats_key(proto, "other"), stats_key(proto, checksum, "m"),
            stats_key(proto.__class__(**{**proto.__dict__, "clip_seed": 1}), checksum),
            stats_key(proto.__class__(**{**proto.__dict__, "antialias": True}), checksum)}
    assert len(keys) == 5


def test_bootstrap_std_without_extra_passes():
    p = small_protocol()
    ex = PixelStatsExtractor(preprocessing_of(p))
    m = FVD(p, extractor=ex, bootstrap_rounds=8)
    m.update_real(videos(40, 0))
    m.update(videos(40, 1, shift=20))
    calls = ex.calls
    out = m.compute()
    assert ex.calls == calls and out.std is not None and out.std > 0
    assert out.extra["bootstrap_rounds"] == 8


def test_catalog_registers_protocol_names():
    import cmdbench.metrics.catalog  # noqa: F401  (what registry.load_plugins imports)
    for name in ("fvd2048_16f", "fvd2048_128f", "fvd10k_16f", "fvd-stylegan-v", "fvd-tf-reference", "fvd-videogpt"):
        assert name in METRICS
    p = small_protocol()
    m = METRICS.get("fvd2048_16f")(protocol="tats", extractor=PixelStatsExtractor(preprocessing_of(get_protocol("tats"))))
    assert (m.name, m.protocol.num_fake, m.protocol.num_frames, m.protocol.name) == ("fvd2048_16f", 2048, 16, "tats")
    assert p.num_fake == 40


def test_extractor_preprocessing_must_match_protocol():
    with pytest.raises(ValueError, match="preprocesses"):
        build_extractor(get_protocol("videogpt"), PixelStatsExtractor(Preprocessing(resize="whole")))


@pytest.mark.slow
def test_end_to_end_with_tiny_random_i3d():
    p = small_protocol("tats", num_frames=9, num_real=3, num_fake=3)
    m = FVD(p, extractor="i3d-random-tiny", allow_singular=True, batch_size=3)
    assert m.protocol.extractor == "i3d-random-tiny" and len(m.extractor.checksum) == 64
    m.update_real(videos(3, 0, t=9))
    m.update(videos(3, 1, t=10, shift=40))
    out = m.compute()
    assert np.isfinite(out.value) and out.value > 1e-3 and out.extra["n_fake"] == 3  # features vary
    refuses = FVD(p, extractor=m.extractor, reference=m.real_accum)  # allow_singular=False
    refuses.fake = m.fake
    with pytest.raises(InsufficientSamplesError, match="singular"):
        refuses.compute()
