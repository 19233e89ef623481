"""JEDi: JEPA Embedding Distance (Luo et al., "Beyond FVD", ICLR 2025; PyPI ``videojedi`` 1.1.0).

JEDi compares the V-JEPA features of real and generated clips (:mod:`cmdbench.metrics.vjepa`: ViT-H/16
encoder + SSv2 attentive-probe pooler, 1280 numbers per clip) with the squared maximum mean discrepancy
under a polynomial kernel, scaled by 100. videojedi's ``JEDiMetric.compute_metric`` calls
``mmd_poly(X, Y, degree=2, coef0=0) * 100``, which evaluates scikit-learn's ``polynomial_kernel`` with
``gamma=None``, i.e. ``gamma = 1 / D``:

    k(x, y) = (x·y / D)²,    JEDi = 100 · [ mean K(X, X) + mean K(Y, Y) − 2 · mean K(X, Y) ]

with every mean over all pairs, diagonals included (the biased V-statistic MMD²_b, Gretton et al. 2012).

Computed from streaming statistics, not features. For this homogeneous quadratic kernel

    mean_ij (x_i·y_j)² = Σ_ij x_iᵀ y_j y_jᵀ x_i / (n m) = ⟨XᵀX, YᵀY⟩_F / (n m),

so JEDi = 100 / D² · ‖XᵀX / n − YᵀY / m‖²_F: the squared Frobenius distance of the two uncentred
second-moment matrices, which :class:`~cmdbench.metrics.frechet.FeatureStats` already accumulates in
float64 (``outer``). Real statistics are therefore the same ``.npz`` files as for FVD (``cmdbench
ref-stats``), cached under JEDi's protocol and the (encoder, probe) checksum, shardable and mergeable;
the cost is ``O(D²)`` whatever the number of clips (videojedi builds three n x n kernel matrices).

Protocol (:data:`PROTOCOL`): 16 consecutive frames from frame 0 (V-JEPA's clip length), shorter side to
224 and a centre crop (V-JEPA's evaluation crop; videojedi itself feeds whatever size it is given and
resizes the position embedding, which our encoder does too), [0, 1], ImageNet mean/std; 2048 real and
2048 generated clips (videojedi's default is 5000: the biased MMD² depends on the count, so values at
different counts are not comparable and ``strict`` refuses them).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cmdbench.config import EvalProtocol
from cmdbench.interfaces import MetricValue
from cmdbench.metrics import vjepa
from cmdbench.metrics.frechet import FeatureStats, InsufficientSamplesError
from cmdbench.metrics.fvd import FVD, preprocessing_of, protocol_hash
from cmdbench.video import IN_MEMORY

DEGREE, COEF0, SCALE = 2, 0.0, 100.0  # videojedi: mmd_poly(..., degree=2, coef0=0) * 100, gamma = 1/D
KERNEL = "polynomial (x·y/D)^2 (degree 2, gamma 1/D, coef0 0), biased MMD^2 (V-statistic) x 100"
FOLLOWS = "videojedi 1.1.0 (JEDi, Luo et al. ICLR 2025): V-JEPA ViT-H/16 + SSv2 attentive-probe pooler"

PROTOCOL = EvalProtocol(
    name="jedi", extractor=vjepa.REAL_NAME, num_real=2048, num_fake=2048, num_frames=16, frame_stride=1,
    size=224, resize="short_side_crop", resize_kernel="torch", antialias=False, value_range=(0.0, 1.0),
)


def jedi_distance(real: FeatureStats, fake: FeatureStats) -> float:
    """``100 · MMD²_b`` with ``k(x, y) = (x·y / D)²`` of two feature sets, from their statistics.

    ``= 100 / D² · ‖Σxxᵀ / n − Σyyᵀ / m‖²_F`` (module doc); float64; symmetric; 0 for equal moments.
    """
    if real.dim != fake.dim:
        raise ValueError(f"JEDi of features of dimension {real.dim} and {fake.dim}")
    if real.n < 1 or fake.n < 1:
        raise InsufficientSamplesError(f"JEDi needs at least one clip per set; got {real.n} real, {fake.n} fake")
    diff = real.outer / real.n - fake.outer / fake.n  # (D, D) difference of second moments
    return SCALE * float(np.sum(diff * diff)) / real.dim**2


class JEDi(FVD):
    """Streaming JEDi (``reset / update(videos) / compute()``) against real V-JEPA feature statistics.

    It shares FVD's protocol and reference bookkeeping (clips cut by the protocol, reference statistics
    checked against protocol, extractor checksum and numerics, ``update_real``, ``all_reduce``,
    conformance of the counts, storage); only the distance differs.

    extractor: ``vjepa_vith16_ssv2`` (default; files from ``extractor_path`` / ``probe_path`` or
        ``cmdbench.weights``), ``vjepa-random`` / ``vjepa-random-tiny`` (random stand-ins) or an object.
    num_real / num_fake: override the protocol's counts (a different protocol; recorded in the rows).
    keep_features: also keep the generated clips' features (``fake.bank``), e.g. for sample-size curves.
    """

    higher_is_better = False
    uses_covariance = False  # no Gaussian fit: any count >= 2 is defined (harnesses skip FVD's n > dim check)

    def __init__(self, protocol: str | EvalProtocol | None = None, *, reference: FeatureStats | str | Path | None = None,
                 extractor: Any = None, extractor_path: str | Path | None = None,
                 probe_path: str | Path | None = None, device: str = "cpu", batch_size: int = 4,
                 num_real: int | None = None, num_fake: int | None = None, strict: bool = True,
                 storage: str = IN_MEMORY, keep_features: bool = False) -> None:
        self._keep_features = keep_features  # (read by FVD.__init__ -> reset -> new_stats)
        if protocol not in (None, PROTOCOL.name) and not isinstance(protocol, EvalProtocol):
            raise ValueError(f"jedi has one protocol, {PROTOCOL.name!r}; got protocol={protocol!r}")
        p = protocol if isinstance(protocol, EvalProtocol) else PROTOCOL
        p = replace(p, num_real=p.num_real if num_real is None else num_real,
                    num_fake=p.num_fake if num_fake is None else num_fake)
        if extractor is None or isinstance(extractor, str):
            extractor = vjepa.make_vjepa_extractor(extractor or p.extractor, preprocessing_of(p), path=extractor_path,
                                                   probe_path=probe_path, device=device, batch_size=batch_size)
        super().__init__(p, extractor=extractor, reference=reference, device=device, batch_size=batch_size,
                         strict=strict, storage=storage)
        self.name = "jedi"

    @property
    def keep_features(self) -> bool:
        """Keep per-clip features of the generated clips (sample-size curves, subsampling); JEDi itself needs
        only the second moments."""
        return self._keep_features

    def set_reference(self, reference: Any) -> None:
        """Real statistics of this protocol and extractor holding the second moments Σxxᵀ (``cmdbench ref-stats``
        files do; a (mu, sigma) file of another tool does not, and is refused)."""
        stats = FeatureStats.load(reference) if isinstance(reference, (str, Path)) else reference
        if not isinstance(stats, FeatureStats):  # e.g. GaussianStats
            raise ValueError(f"JEDi needs the real features' second moments (a `cmdbench ref-stats` file); got "
                             f"{type(stats).__name__} (mean and covariance only)")
        super().set_reference(stats)

    def describe(self) -> str:
        """One line: protocol, extractor and checksum, clip, preprocessing and kernel (printed and recorded)."""
        p, ex = self.protocol, self.extractor
        return (f"{p.name}: {ex.name} sha256:{ex.checksum[:12]}, {p.num_frames} frames stride {p.frame_stride}, "
                f"{p.resize} {p.size} {p.resize_kernel} bilinear, [0,1] ImageNet mean/std, {KERNEL}")

    def weights_verified(self) -> bool | None:
        """Whether both weight files have known or trusted checksums (``None`` for random stand-ins)."""
        from cmdbench import weights

        sums = getattr(self.extractor, "file_checksums", {})
        if not sums:
            return None
        return all(sha in weights.accepted_hashes(name) for name, sha in sums.items())

    def compute(self) -> MetricValue:
        real, fake, p = self._real(), self.fake, self.protocol
        conformant = fake.n == p.num_fake and (not p.num_real or real.n == p.num_real)
        if self.strict and not conformant:
            raise InsufficientSamplesError(
                f"jedi takes num_fake={p.num_fake} generated and num_real={p.num_real or 'all'} real clips; got "
                f"{fake.n} and {real.n}. The biased MMD² depends on the counts, so values at other counts are "
                "not comparable; pass strict=False (or num_real/num_fake) to compute it anyway"
            )
        value = jedi_distance(real, fake)
        extra: dict[str, Any] = {
            "preset": p.name, "follows": FOLLOWS, "describe": self.describe(), "kernel": KERNEL,
            "degree": DEGREE, "coef0": COEF0, "gamma": f"1/{real.dim}", "scale": SCALE,
            "n_real": real.n, "n_fake": fake.n, "conformant": conformant, "protocol_hash": protocol_hash(p),
            "extractor": self.extractor.name, "extractor_checksum": self.extractor.checksum,
            "weight_files": getattr(self.extractor, "file_checksums", {}),
            "weights_path": getattr(self.extractor, "weights_path", None),
            "weights_verified": self.weights_verified(), "num_frames": p.num_frames,
            "frame_stride": p.frame_stride, "resize": p.resize, "resize_kernel": p.resize_kernel, "size": p.size,
            "normalisation": {"mean": vjepa.IMAGENET_MEAN, "std": vjepa.IMAGENET_STD},
            "reference_key": real.metadata.get("stats_key"), "numerics": self.numerics, "storage": self.storage,
        }
        return MetricValue(name=self.name, value=value, unit="", higher_is_better=False, std=None, n=fake.n,
                           protocol=p.name, extra=extra)


JEDI_OPTIONS = ("protocol", "reference", "ref_stats", "extractor", "extractor_path", "probe_path", "device",
                "batch_size", "num_real", "num_fake", "strict", "storage", "keep_features")


def jedi(protocol: str | None = None, **options: Any) -> JEDi:
    """Registry factory of ``jedi``; ``ref_stats`` is the CLI spelling of ``reference``."""
    if "ref_stats" in options:
        if "reference" in options:
            raise ValueError("options ref_stats and reference name the same thing; give one")
        options["reference"] = options.pop("ref_stats")
    return JEDi(protocol, **options)


jedi.options = JEDI_OPTIONS  # type: ignore[attr-defined]  (what `bench --metric-option` accepts)
