"""FVD metric: presets, protocol guard, counts, reference cache, end to end with a tiny random I3D."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from cmdbench.interfaces import MetricValue, VideoMetric
from cmdbench.metrics.frechet import FeatureStats, InsufficientSamplesError, stats_distance
from cmdbench.metrics.fvd import (
    DEFAULT_PRESET,
    FVD,
    PRESET_SOURCES,
    PRESETS,
    build_extractor,
    describe,
    get_protocol,
    preprocessing_of,
)
from cmdbench.metrics.preprocess import Preprocessing
from cmdbench.metrics.reference import (
    ProtocolMismatchError,
    ReferenceCache,
    numerics_of,
    stats_key,
    stats_metadata,
)
from cmdbench.registry import METRICS
from cmdbench.video import IN_MEMORY


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
    proto, checksum, num = m.protocol, m.extractor.checksum, m.numerics
    assert cache.get(proto, checksum, "manifest-a", numerics=num) is None
    path = cache.put(m.real_accum, proto, checksum, "manifest-a", numerics=num)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    got = cache.get(proto, checksum, "manifest-a", numerics=num)
    np.testing.assert_array_equal(got.outer, m.real_accum.outer)
    assert cache.get(proto, checksum, "manifest-b", numerics=num) is None  # other dataset content, other key
    keys = {stats_key(proto, checksum, numerics=num), stats_key(proto, "other", numerics=num),
            stats_key(proto, checksum, "m", numerics=num),
            stats_key(proto.__class__(**{**proto.__dict__, "clip_seed": 1}), checksum, numerics=num),
            stats_key(proto.__class__(**{**proto.__dict__, "antialias": True}), checksum, numerics=num)}
    assert len(keys) == 5


def test_cache_and_guard_refuse_to_mix_device_classes_dtypes_and_tf32(tmp_path, monkeypatch):
    import torch

    cpu = make_fvd(small_protocol())
    p = cpu.protocol
    cpu.update_real(videos(40, 0))
    # the same statistics as a CUDA run would have recorded them (TF32 convolutions on, PyTorch's default)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    gpu_tf32 = numerics_of("cuda", torch.float32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    gpu_ieee = numerics_of("cuda", torch.float32)
    cpu_half = numerics_of("cpu", torch.float16)
    assert gpu_tf32["tf32_cudnn"] is True and gpu_ieee["tf32_cudnn"] is False
    assert numerics_of("cpu")["tf32_cudnn"] is None  # the flags change nothing on a CPU: not part of its key
    keys = {stats_key(p, "c", numerics=n) for n in (cpu.numerics, gpu_tf32, gpu_ieee, cpu_half)}
    assert len(keys) == 4  # one cache entry per numeric setting: a CPU run never finds a GPU run's entry
    cache = ReferenceCache(tmp_path)
    gpu_stats = FeatureStats(6, metadata=stats_metadata(p, cpu.extractor.checksum, kind="real", numerics=gpu_tf32))
    gpu_stats.merge(cpu.real_accum)
    cache.put(gpu_stats, p, cpu.extractor.checksum, numerics=gpu_tf32)
    assert cache.get(p, cpu.extractor.checksum, numerics=cpu.numerics) is None
    # a file handed over by path (or copied into the CPU entry's name) is refused, naming what differs
    path = gpu_stats.save(tmp_path / "gpu_real.npz")
    with pytest.raises(ProtocolMismatchError, match=r"device_class: 'cuda' \(stats\) vs 'cpu'.*tf32_cudnn: True"):
        FVD(p, extractor=PixelStatsExtractor(preprocessing_of(p)), reference=path)
    gpu_stats.save(cache.path_for(p, cpu.extractor.checksum, numerics=cpu.numerics))
    with pytest.raises(ProtocolMismatchError, match="other numerics"):
        cache.get(p, cpu.extractor.checksum, numerics=cpu.numerics)
    # statistics written before numerics were recorded cannot be told apart: refused too
    legacy = FeatureStats(6, metadata={k: v for k, v in cpu.real_accum.metadata.items() if k != "numerics"})
    legacy.merge(cpu.real_accum)
    with pytest.raises(ProtocolMismatchError, match="do not record the numerics"):
        cpu.set_reference(legacy)


def test_reproduction_default_is_cmds_released_code_and_rows_name_it():
    # CMD's release evaluates with PVDM's FVD code: i3d_pretrained_400 (BN eps 1e-5), short side + centre crop,
    # unbiased covariance, SVD square root = the videogpt preset (see cmdbench.metrics.fvd's module doc)
    assert DEFAULT_PRESET == "videogpt"
    vg = PRESETS[DEFAULT_PRESET]
    assert (vg.extractor, vg.resize, vg.ddof, vg.sqrtm) == ("i3d_pretrained_400", "short_side_crop", 1, "svd")
    assert inspect.signature(FVD).parameters["protocol"].default == DEFAULT_PRESET
    assert "CMD" in PRESET_SOURCES["videogpt"] and "paper cites" in PRESET_SOURCES["stylegan-v"]
    m = make_fvd(small_protocol("videogpt", extractor="pixel-stats"))
    m.update_real(videos(40, 0))
    m.update(videos(40, 1, shift=20))
    out = m.compute()
    extra = out.extra
    assert out.protocol == "videogpt" and extra["preset"] == "videogpt"
    assert extra["extractor"] == "pixel-stats" and extra["extractor_checksum"] == "pixelstats-v1"
    assert extra["estimator"] == "unbiased (n-1)" and extra["sqrtm"] == "svd"
    assert extra["describe"] == "videogpt: pixel-stats sha256:pixelstats-v, unbiased (n-1) covariance, svd sqrt, " \
                                "short_side_crop 224"
    assert extra["storage"] == IN_MEMORY and extra["numerics"]["device_class"] == "cpu"
    assert extra["frechet"]["error_bound"] > 0 and extra["weights_verified"] is None
    assert "biased (/N)" in describe(PRESETS["stylegan-v"]) and "i3d_torchscript" in describe(PRESETS["stylegan-v"])


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
