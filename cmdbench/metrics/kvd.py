"""KVD: Kernel Video Distance, the unbiased kernel MMD² on I3D features (Unterthiner et al. 2019).

Unterthiner et al. ("FVD: A New Metric for Video Generation", 2019) propose KVD beside FVD: the Kernel
Inception Distance of Bińkowski et al. ("Demystifying MMD GANs", ICLR 2018) computed on the same I3D
features. With the cubic polynomial kernel

    k(x, y) = (x·y / d + 1)³          (d = feature dimension, 400 I3D logits)

and equal-size subsets X, Y of m clips, the unbiased estimator of MMD² is

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (m(m−1)) − 2 Σ_{i,j} k(x_i, y_j) / m²

(the diagonal of the cross term stays in, as in Bińkowski's ``polynomial_mmd`` and torch-fidelity /
torchmetrics KID). As KID does, the value is the **mean over subsets** and the spread their **standard
deviation** (ddof 0, as torchmetrics): :data:`SUBSETS` = 100 subsets of :data:`SUBSET_SIZE` = 1000 clips,
each drawn without replacement from each set (seeded ``numpy.random.default_rng(seed)``; real indices then
generated ones per subset). With fewer clips the subset size is ``min(1000, n_real, n_fake)`` (recorded);
when both sets have exactly that many clips every subset is the whole set, so the value is computed once
and no spread is reported. Values are raw (not x1000).

KVD needs the per-clip features, not (μ, Σ): the generated features are kept, and the real statistics must
hold them too. ``cmdbench ref-stats`` always keeps them, so the FVD reference ``.npz`` of the same preset
serves KVD (same protocol fields, same extractor checksum, same cache key: the features are identical; the
kernel and subsets only decide what is computed from them and are recorded in every row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmdbench.config import EvalProtocol
from cmdbench.interfaces import MetricValue
from cmdbench.metrics.frechet import FeatureStats, InsufficientSamplesError
from cmdbench.metrics.fvd import DEFAULT_PRESET, FVD, PRESET_SOURCES, WEIGHT_FILES, protocol_hash
from cmdbench.video import IN_MEMORY

SUBSETS, SUBSET_SIZE = 100, 1000
KERNEL = "cubic polynomial (x·y/d + 1)^3, unbiased MMD^2 (Binkowski et al. 2018)"


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x·y / d + 1)³`` for every pair of rows: float64 ``(n, d)``, ``(m, d)`` -> ``(n, m)``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two feature sets ``(n, d)``, ``(m, d)`` (n, m >= 2) under :func:`polynomial_kernel`:
    within-set means without the diagonal, the cross mean over all pairs."""
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise InsufficientSamplesError(f"the unbiased MMD² needs at least 2 clips per set; got {n} and {m}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


@dataclass(frozen=True)
class SubsetMMD:
    """KVD over subsets: ``value`` = mean, ``std`` = standard deviation (ddof 0; ``None`` for one subset)."""

    value: float
    std: float | None
    subsets: int
    subset_size: int
    seed: int
    values: tuple[float, ...]


def kernel_distance(real: np.ndarray, fake: np.ndarray, *, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE,
                    seed: int = 0) -> SubsetMMD:
    """KID-style subset estimate of :func:`mmd2_unbiased` between float64 features ``(n, d)`` and ``(m, d)``."""
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets={subsets}, subset_size={subset_size}; allowed subsets >= 1, subset_size >= 2")
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (n, d) and (m, d) with the same d; got {real.shape} and {fake.shape}")
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise InsufficientSamplesError(f"KVD needs at least 2 clips per set; got {len(real)} real, {len(fake)} fake")
    if len(real) == len(fake) == size:  # every subset would be the whole of both sets
        value = mmd2_unbiased(real, fake)
        return SubsetMMD(value, None, 1, size, seed, (value,))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        r = real[rng.choice(len(real), size, replace=False)]  # (size, d)
        f = fake[rng.choice(len(fake), size, replace=False)]
        values.append(mmd2_unbiased(r, f))
    arr = np.array(values)
    return SubsetMMD(float(arr.mean()), float(arr.std()), subsets, size, seed, tuple(values))


class KVD(FVD):
    """Streaming KVD on the I3D features of an FVD preset (``reset / update(videos) / compute()``).

    It shares FVD's protocol, extractor and reference bookkeeping (``protocol`` = an FVD preset, default
    :data:`~cmdbench.metrics.fvd.DEFAULT_PRESET`, with its 2048/2048 16-frame counts); generated features
    are kept per clip, and the reference must keep them too (every ``cmdbench ref-stats`` file does).
    """

    higher_is_better = False
    uses_covariance = False  # no Gaussian fit: any count >= 2 is defined (harnesses skip FVD's n > dim check)

    def __init__(self, protocol: str | EvalProtocol = DEFAULT_PRESET, *,
                 reference: FeatureStats | str | Path | None = None, extractor: Any = None,
                 extractor_path: str | Path | None = None, device: str = "cpu", batch_size: int = 8,
                 strict: bool = True, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE, seed: int = 0,
                 storage: str = IN_MEMORY) -> None:
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed
        super().__init__(protocol, reference=reference, extractor=extractor,
                         extractor_path=extractor_path, device=device, batch_size=batch_size, strict=strict,
                         storage=storage)
        self.name = "kvd"

    @property
    def keep_features(self) -> bool:
        return True  # the kernel needs every feature vector

    def set_reference(self, reference: Any) -> None:
        """Real statistics of the same preset and extractor, with their per-clip features (not a (mu, sigma))."""
        stats = FeatureStats.load(reference) if isinstance(reference, (str, Path)) else reference
        if getattr(stats, "bank", None) is None or len(stats.bank) != stats.n:
            where = reference if isinstance(reference, (str, Path)) else "the reference statistics"
            kept = 0 if stats.bank is None else len(stats.bank)
            raise ValueError(
                f"KVD needs the per-clip real features; {where} hold {stats.n} clips but keep {kept} feature "
                "rows. Rebuild them with `cmdbench ref-stats` (which keeps features) or keep_features=True"
            )
        super().set_reference(stats)

    def describe(self) -> str:
        p, ex = self.protocol, self.extractor
        return (f"{p.name}: {ex.name} sha256:{ex.checksum[:12]}, {p.resize} {p.size}, {KERNEL}, "
                f"{self.subsets} subsets of <= {self.subset_size}, seed {self.seed}")

    def compute(self) -> MetricValue:
        real, fake, p = self._real(), self.fake, self.protocol
        conformant = fake.n == p.num_fake and (not p.num_real or real.n == p.num_real)
        if self.strict and not conformant:
            raise InsufficientSamplesError(
                f"{self.name} under preset {p.name!r} takes num_fake={p.num_fake} generated and "
                f"num_real={p.num_real or 'all'} real clips; got {fake.n} and {real.n}; pass strict=False to "
                "compute it anyway (recorded as conformant=False)"
            )
        if real.bank is None or len(real.bank) != real.n:
            raise ValueError(f"{self.name}: the real statistics keep no per-clip features (see set_reference)")
        kd = kernel_distance(real.bank.array(), fake.bank.array(), subsets=self.subsets,
                             subset_size=self.subset_size, seed=self.seed)
        extra: dict[str, Any] = {
            "preset": p.name, "follows": "Unterthiner et al. 2019 (KVD) = KID of Binkowski et al. 2018 on I3D "
            f"features of the {p.name} FVD preset ({PRESET_SOURCES.get(p.name, 'custom protocol')})",
            "describe": self.describe(), "kernel": KERNEL, "subsets": kd.subsets, "subset_size": kd.subset_size,
            "subset_seed": kd.seed, "std_of": "subset values (ddof 0)" if kd.std is not None else None,
            "n_real": real.n, "n_fake": fake.n, "conformant": conformant, "protocol_hash": protocol_hash(p),
            "extractor": self.extractor.name, "extractor_checksum": self.extractor.checksum,
            "weight_file": WEIGHT_FILES.get(self.extractor.name, self.extractor.name),
            "weights_path": getattr(self.extractor, "weights_path", None), "num_frames": p.num_frames,
            "frame_stride": p.frame_stride, "resize": p.resize, "resize_kernel": p.resize_kernel,
            "value_range": list(p.value_range), "reference_key": real.metadata.get("stats_key"),
            "numerics": self.numerics, "storage": self.storage,
        }
        return MetricValue(name=self.name, value=kd.value, unit="", higher_is_better=False, std=kd.std, n=fake.n,
                           protocol=p.name, extra=extra)


KVD_OPTIONS: Sequence[str] = ("protocol", "reference", "ref_stats", "extractor", "extractor_path", "device",
                              "batch_size", "strict", "subsets", "subset_size", "seed", "storage")


def kvd(protocol: str | EvalProtocol = DEFAULT_PRESET, **options: Any) -> KVD:
    """Registry factory of ``kvd``; ``ref_stats`` is the CLI spelling of ``reference``."""
    if "ref_stats" in options:
        if "reference" in options:
            raise ValueError("options ref_stats and reference name the same thing; give one")
        options["reference"] = options.pop("ref_stats")
    return KVD(protocol, **options)


kvd.options = KVD_OPTIONS  # type: ignore[attr-defined]  (what `bench --metric-option` accepts)
