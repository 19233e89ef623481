"""``cmdbench ref-stats``: real-set statistics of a folder of videos or a dataset for FVD and the judges
beyond it, cached by protocol.

One seeded clip per video (``num_frames`` at ``frame_stride``, window start seeded by the protocol's
``clip_seed``), the first ``num_real`` videos in listed or seeded-hash order (UCF-101 defaults to the
hashed order: its split lists are sorted by class), features by the protocol's extractor (default preset:
``videogpt``, the code CMD's release evaluates with; ``--protocol stylegan-v`` for StyleGAN-V's), float64
statistics written atomically to the content-addressed cache (key: every protocol field that shapes
features, the extractor checksum, the numerics -- device class, dtype, TF32 flags -- and the data
manifest) and to ``--out``.

Folders and datasets take the same path: sharded over ``torchrun`` / ``accelerate launch`` processes
(only rank 0 prints and writes ``--out``), resumable from ``--work-dir`` with any ``--chunk-size``.
Under ``--policy skip`` every skipped video is printed with its reason and stored in the ``.npz``
metadata (``skipped``). A progress bar (clips/s, ETA) runs on stderr when it is a terminal.

Which judge (``--metric``): an FVD protocol-named metric (``fvd2048_16f`` ...) under the ``--protocol`` preset,
or a judge beyond FVD with its own protocol, extractor and cache key: ``jedi`` (V-JEPA features), ``fvd-videomae``
(content-debiased FVD, VideoMAE-v2 features), ``fvmd`` (PIPs++ motion histograms); ``kvd`` takes the I3D
features of the ``--protocol`` preset, so its statistics are those of ``fvd2048_16f`` under that preset (one
file serves both). ``cmdbench evaluate --ref-stats FILE --metric NAME`` then takes the file's protocol and
extractor. ``--stand-ins`` picks the judge's random-weight stand-in (offline; values mean nothing, labelled);
``--metric-option NAME:KEY=VALUE`` sets one of its factory options (e.g. ``fvmd:size=128``; evaluate reads
FVMD's grid, iterations and size back from the file's protocol name, other options must be given again).

``--export mu-sigma OUT.npz`` also writes the statistics in the (mu, sigma) layout of pytorch-fid-style
tools (``np.load(OUT)["mu"]``, ``["sigma"]`` under the preset's covariance estimator, plus ``n`` and the
metadata), which ``cmdbench evaluate --ref-stats`` reads back too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmdbench.commands.progress import (
    CountingExtractor,
    add_progress_argument,
    progress_bar,
    progress_enabled,
)

if TYPE_CHECKING:  # torch-heavy modules, imported inside the functions that use them
    from cmdbench.config import EvalProtocol
    from cmdbench.metrics.i3d import FeatureExtractor
    from cmdbench.metrics.reference import ReferenceCache

# The names the options accept, written out so that building the parser imports no torch. They equal
# cmdbench.metrics.fvd.{DEFAULT_PRESET, PRESETS, PROTOCOL_METRICS} and cmdbench.metrics.i3d.EXTRACTOR_NAMES
# (tests/commands/test_cli_startup.py checks it).
DEFAULT_PRESET = "videogpt"
PRESET_NAMES = ("stylegan-v", "tats", "tf-reference", "videogpt")
FVD_METRIC_NAMES = ("fvd10k_16f", "fvd2048_128f", "fvd2048_128f_subsample8f", "fvd2048_16f", "fvd5k_16f")
EXTRACTOR_NAMES = ("i3d_pretrained_400", "i3d_torchscript", "i3d-random", "i3d-random-tiny")
EXPORT_FORMATS = ("mu-sigma",)
# Judges beyond I3D-FVD whose real statistics ref-stats computes (the catalog's FVD-family judges that are
# not fvd*-named); their random-weight stand-ins are cmdbench.bench.motion_strata.STAND_IN_OPTIONS' extractors.
JUDGE_METRIC_NAMES = ("fvd-videomae", "fvmd", "jedi", "kvd")
STAND_IN_EXTRACTORS = ("i3d-random-tiny", "pips-random-tiny", "videomae-random-tiny", "vjepa-random-tiny")
CLIP_STANDIN = "clip-random-tiny"  # == cmdbench.metrics.clipsim_standin.STANDIN_NAME


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ref-stats",
        help="compute and cache real-set FVD statistics of a folder of videos or a dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--videos", default=None, help="folder of real videos (mp4/avi/webm/gif/frame dirs)")
    parser.add_argument("--dataset", default="folder", choices=("folder", "ucf101", "webvid"),
                        help="folder (--videos) or a registered dataset read from --root")
    parser.add_argument("--root", default=None, help="dataset root for --dataset ucf101/webvid")
    parser.add_argument("--size", default=None,
                        help="HxW real clips are resized to (ucf101: 64, webvid: 512x1024, folder: native)")
    parser.add_argument("--split", default=None, help="ucf101 split (train, the paper's evaluation split; or test)")
    parser.add_argument("--webvid-csv", default=None, help="webvid validation CSV (default: found under --root)")
    parser.add_argument("--work-dir", default=None, help="checkpoints, so an interrupted run resumes")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="clips per checkpoint (a resumed run may use another size: work is keyed by clip)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding clips")
    add_protocol_arguments(parser)
    parser.add_argument("--num-real", type=int, default=None,
                        help="real clips (default: the metric's, e.g. 2048; 0 = one per video, all videos)")
    parser.add_argument("--order", choices=("listed", "hashed"), default=None,
                        help="which videos: the first N listed (StyleGAN-V) or a seeded-hash subset "
                             "(default: hashed for ucf101, whose lists are sorted by class; listed otherwise)")
    parser.add_argument("--allow-few-classes", action="store_true",
                        help="accept a listed order covering under half of a labelled dataset's classes")
    parser.add_argument("--seed", type=int, default=None, help="clip seed (window starts, hashed order)")
    parser.add_argument("--out", default=None, help="also write the statistics to this .npz")
    parser.add_argument("--cache-dir", default=None, help="statistics cache (default $CMDBENCH_CACHE/ref_stats)")
    parser.add_argument("--force", action="store_true", help="recompute even when cached")
    parser.add_argument("--policy", choices=("strict", "skip"), default="strict",
                        help="unreadable or too-short videos: stop (strict) or skip them, each named with its reason")
    parser.add_argument("--export", nargs=2, metavar=("FORMAT", "OUT.npz"), default=None,
                        help="also write the statistics for other tools; FORMAT mu-sigma: np.savez(mu=, sigma=) "
                             "under the preset's covariance estimator, with n and the metadata")
    add_progress_argument(parser)
    parser.set_defaults(func=run)
    return parser


def add_protocol_arguments(parser: argparse.ArgumentParser, *, metric_option: bool = True) -> None:
    """Options shared with ``cmdbench evaluate``: protocol preset, metric name, extractor, stand-ins, per-metric
    options, device."""
    parser.add_argument("--protocol", default=None, choices=PRESET_NAMES,
                        help=f"FVD preset of the I3D judges (fvd*, kvd; default: {DEFAULT_PRESET}, the code CMD's "
                             "release evaluates with; stylegan-v for StyleGAN-V's metric code). jedi, fvd-videomae "
                             "and fvmd have their own protocol (named by --metric)")
    if metric_option:
        parser.add_argument("--metric", dest="protocol_metric", default="fvd2048_16f",
                            choices=(*FVD_METRIC_NAMES, *JUDGE_METRIC_NAMES),
                            help="the judge whose statistics are computed (default fvd2048_16f): an FVD "
                                 "protocol-named metric (counts and frames, under --protocol), or jedi, fvd-videomae, "
                                 "fvmd (their own protocol, extractor and cache key) or kvd (the --protocol preset's "
                                 "I3D statistics, as fvd2048_16f)")
    parser.add_argument("--extractor", default=None,
                        help=f"override the extractor of the judges it belongs to: I3D ({', '.join(EXTRACTOR_NAMES)}) "
                             "for fvd*/kvd; vjepa_vith16_ssv2/vjepa-random[-tiny] for jedi; "
                             "videomae_v2_vitg14_ssv2/videomae-random[-tiny] for fvd-videomae; "
                             "pips2_fvmd/pips-random[-tiny] for fvmd (other judges keep theirs). i3d-random-tiny is "
                             "the I3D offline stand-in (under videogpt, tats or tf-reference)")
    parser.add_argument("--extractor-path", default=None,
                        help="weight file of the --extractor (default: cmdbench.weights cache)")
    parser.add_argument("--stand-ins", "--stand-in", action="store_true",  # --stand-in: `cmdbench sensitivity`'s spelling
                        help="offline: every judge takes its random-weight stand-in (" + ", ".join(STAND_IN_EXTRACTORS)
                             + " with a 5x5 grid, 4 iterations, 128 px for fvmd; CLIPSIM: " + CLIP_STANDIN + "); "
                             "values mean nothing, and every row and printed line says RANDOM WEIGHTS")
    parser.add_argument("--metric-option", action="append", dest="metric_options", default=None,
                        metavar="METRIC:KEY=VALUE",
                        help="an option of one metric's factory, repeatable, e.g. jedi:extractor=vjepa-random-tiny, "
                             "fvmd:size=128, kvd:subsets=10; VALUE is JSON when it parses (true, 3, null), else text. "
                             "Wins over --extractor, --protocol and --stand-ins for that metric")
    parser.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: each rank's local GPU)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per extractor call")


# --- the judges' options (shared with evaluate) --------------------------------------------------------------
@dataclass
class JudgeOptions:
    """A metric factory's keyword options, the flag behind each (named when a reference file disagrees), and
    one-line notes about flags that do not apply to it."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def explicit(self, key: str) -> bool:
        """Whether a flag named ``key`` for this metric (``--device``/``--batch-size``/``--non-strict`` defaults
        do not count)."""
        return key in self.sources and self.sources[key] not in DEFAULT_SOURCES


DEFAULT_SOURCES = ("--device", "--batch-size", "--non-strict")


def factory_options(factory: Any) -> tuple[str, ...] | None:
    """The option names a metric factory declares: its ``.options``, else its signature's keyword parameters
    (``None``: it takes any keyword)."""
    import inspect

    declared = getattr(factory, "options", None)
    if declared is not None:
        return tuple(declared)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return tuple(k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def is_fvd_family(factory: Any) -> bool:
    """A factory of a judge built on :class:`~cmdbench.metrics.fvd.FVD` (real statistics, protocol, extractor):
    it declares a ``reference`` option, or it is an FVD subclass."""
    from cmdbench.metrics.fvd import FVD

    if isinstance(factory, type):
        return issubclass(factory, FVD)
    return "reference" in (factory_options(factory) or ())


def judge_kind(factory: Any) -> str:
    """Whose features a judge computes: ``"jedi"`` (V-JEPA), ``"videomae"`` (VideoMAE-v2), ``"fvmd"`` (PIPs++
    motion histograms), each with its own protocol; else ``"i3d"`` (an FVD preset's I3D features: fvd*, kvd
    and FVD-family plugins)."""
    from cmdbench.metrics import fvmd, jedi, videomae

    return {jedi.jedi: "jedi", videomae.fvd_videomae: "videomae", fvmd.fvmd: "fvmd"}.get(factory, "i3d")


def kind_extractors(kind: str) -> tuple[str, ...]:
    """The extractor names a judge kind takes (real weights and random stand-ins)."""
    from cmdbench.metrics import fvmd, i3d, videomae, vjepa

    return {"i3d": i3d.EXTRACTOR_NAMES, "jedi": vjepa.EXTRACTOR_NAMES, "videomae": videomae.EXTRACTOR_NAMES,
            "fvmd": fvmd.EXTRACTOR_NAMES}[kind]


def protocol_kind(name: str) -> str:
    """The judge kind statistics built under protocol ``name`` belong to (``"i3d"`` for the FVD presets)."""
    from cmdbench.metrics import fvmd, jedi, videomae

    if name == jedi.PROTOCOL.name:
        return "jedi"
    if name == videomae.PROTOCOL.name:
        return "videomae"
    if name == fvmd.PROTOCOL.name or name.startswith(f"{fvmd.PROTOCOL.name}["):
        return "fvmd"
    return "i3d"


# What each judge kind's features are, in words (messages).
KIND_FEATURES = {"i3d": "I3D", "jedi": "V-JEPA", "videomae": "VideoMAE-v2", "fvmd": "PIPs++ motion-histogram"}
# The motion_strata stand-in table's key of each kind (for plugins not named there).
STAND_IN_KEY = {"i3d": "fvd", "jedi": "jedi", "videomae": "fvd-videomae", "fvmd": "fvmd"}


def parse_metric_options(args: argparse.Namespace, metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--metric-option`` flags as ``{metric: {key: value}}`` (``cmdbench bench``'s parser); a flag for a metric
    not in ``metrics`` is refused (it would change nothing)."""
    from cmdbench.commands.bench import merge_metric_options

    options = merge_metric_options(None, getattr(args, "metric_options", None) or [])
    stray = sorted(set(options) - set(metrics))
    if stray:
        raise ValueError(f"--metric-option for {', '.join(stray)}: not among the metrics of this run "
                         f"({', '.join(metrics)}); write METRIC:KEY=VALUE with one of those")
    return options


def judge_options(name: str, factory: Any, args: argparse.Namespace,
                  metric_options: dict[str, dict[str, Any]] | None = None) -> JudgeOptions:
    """The options a metric is built with from the command's flags, passing only those its factory declares.

    Every metric: ``--device``. FVD-family judges also: ``--batch-size``, ``strict`` (``--non-strict``),
    ``--bootstrap`` and ``--allow-singular`` (where they exist; otherwise a note says the flag is not used);
    ``--protocol`` (I3D judges only: the FVD presets); ``--extractor``/``--extractor-path`` for the judges whose
    extractor names include it (an unknown name goes to the I3D judges, whose error lists theirs);
    ``--stand-ins`` (:func:`cmdbench.bench.motion_strata.stand_in_options`; an explicit ``--extractor`` wins);
    last, ``--metric-option NAME:KEY=VALUE`` (a key the factory does not declare is refused). ``ref_stats``
    stays among the values: the caller attaches it.
    """
    allowed = factory_options(factory)
    out = JudgeOptions()

    def put(key: str, value: Any, flag: str) -> bool:
        if allowed is not None and key not in allowed:
            return False
        out.values[key], out.sources[key] = value, flag
        return True

    put("device", args.device, "--device")
    if is_fvd_family(factory):
        kind = judge_kind(factory)
        put("batch_size", args.batch_size, "--batch-size")
        put("strict", not getattr(args, "non_strict", False), "--non-strict")
        for flag, key, value in (("--bootstrap", "bootstrap_rounds", getattr(args, "bootstrap", 0)),
                                 ("--allow-singular", "allow_singular", getattr(args, "allow_singular", False))):
            if value and not put(key, value, flag):
                out.notes.append(f"{name}: {flag} not used ({name} has no {key} option)")
        if args.protocol:
            if kind == "i3d":
                put("protocol", args.protocol, "--protocol")
            else:
                out.notes.append(f"{name}: --protocol {args.protocol} is an FVD preset of the I3D judges; {name} "
                                 "keeps its own protocol")
        ex = args.extractor
        others = [k for k in ("jedi", "videomae", "fvmd") if k != kind]
        if ex and (ex in kind_extractors(kind) or (kind == "i3d" and not any(ex in kind_extractors(k) for k in others))):
            put("extractor", ex, "--extractor")
            if args.extractor_path:
                put("extractor_path", args.extractor_path, "--extractor-path")
        elif ex:
            out.notes.append(f"{name}: --extractor {ex} is not one of its extractors ({', '.join(kind_extractors(kind))}"
                             f"); not used (per metric: --metric-option {name}:extractor=NAME)")
        elif args.extractor_path and kind == "i3d":
            put("extractor_path", args.extractor_path, "--extractor-path")
        if getattr(args, "stand_ins", False):
            from cmdbench.bench.motion_strata import stand_in_options

            stand_in = stand_in_options(name) or stand_in_options(STAND_IN_KEY[kind]) or {}
            for key, value in stand_in.items():
                if not out.explicit(key):
                    put(key, value, "--stand-ins")
    for key, value in ((metric_options or {}).get(name) or {}).items():
        if allowed is not None and key not in allowed:
            raise ValueError(f"--metric-option {name}:{key}={value}: {name} has no option {key!r}; allowed "
                             f"{', '.join(allowed)}")
        out.values[key], out.sources[key] = value, f"--metric-option {name}:{key}"
    return out


def compute_reference(
    root: str | Path,
    protocol: EvalProtocol,
    extractor: FeatureExtractor,
    *,
    cache: ReferenceCache,
    batch_size: int = 8,
    force: bool = False,
    policy: str = "strict",
    all_if_fewer: bool = False,
    progress: bool = False,
):
    """Real statistics of a folder under ``protocol`` (from the cache when present).

    The ``folder`` dataset through :func:`cmdbench.bench.reference_sets.real_statistics` (the path every real
    set takes; per-clip features are kept). ``all_if_fewer``: a folder with fewer usable videos than
    ``protocol.num_real`` gives one clip of every video instead of an error (the caller marks the value not
    conformant). Returns ``(RealStats, protocol the clips were planned under, note or None)``.
    """
    from cmdbench.bench.reference_sets import data_key, open_real_dataset, real_statistics
    from cmdbench.metrics.fvd import FVD

    dataset = open_real_dataset("folder", root, protocol, policy=policy)
    note = None
    usable = dataset.report.usable
    if protocol.num_real and usable < protocol.num_real:
        if not all_if_fewer:
            raise ValueError(
                f"--real {root} has {usable} usable videos ({dataset.report.summary()}); the protocol takes "
                f"{protocol.num_real} real clips, one per video. Pass --non-strict to use one clip of each of the "
                f"{usable} (marked not conformant), or --num-real N for a smaller set (0 = all videos)")
        note = (f"--real {root} has {usable} usable videos, fewer than the {protocol.num_real} real clips the "
                "protocol takes: using one clip of each (not conformant)")
        protocol = replace(protocol, num_real=0)
        dataset = open_real_dataset("folder", root, protocol, policy=policy)
    bar = progress_bar(total=len(dataset), desc="real clips", enabled=progress)
    fvd = FVD(protocol, extractor=CountingExtractor(extractor, bar), strict=False)
    try:
        result = real_statistics(dataset, fvd, cache=None if force else cache, batch_size=batch_size,
                                 num_workers=0)
    finally:
        bar.close()
    if force:
        cache.put(result.stats, protocol, extractor.checksum, data_key(dataset), numerics=fvd.numerics)
    return result, protocol, note


def resolve_protocol(args: argparse.Namespace) -> EvalProtocol:
    """The preset and metric the options name, with ``--num-real``, ``--order`` (dataset default) and ``--seed``."""
    from cmdbench.metrics.fvd import get_protocol

    return with_real_plan(get_protocol(args.protocol or DEFAULT_PRESET, args.protocol_metric), args)


def with_real_plan(protocol: EvalProtocol, args: argparse.Namespace) -> EvalProtocol:
    """``protocol`` with the real-clip plan of ``--num-real``, ``--order`` (dataset default) and ``--seed``."""
    from cmdbench.bench.reference_sets import DEFAULT_REAL_ORDER

    changes = {}
    order = getattr(args, "order", None) or DEFAULT_REAL_ORDER.get(getattr(args, "dataset", "folder"))
    for field_name, value in (("num_real", getattr(args, "num_real", None)), ("real_order", order),
                              ("clip_seed", getattr(args, "seed", None))):
        if value is not None:
            changes[field_name] = value
    if changes.get("num_real", 0) < 0:
        raise ValueError(f"--num-real={changes['num_real']}; allowed 0 (all videos) or a positive count")
    return replace(protocol, **changes)


def build_judge(args: argparse.Namespace, device: str) -> Any:
    """The ``--metric`` judge (lenient: statistics carry no conformance) under the command's options
    (:func:`judge_options`), the one whose protocol and extractor the statistics are computed with."""
    import cmdbench.metrics.catalog  # noqa: F401  (the built-in metrics)
    from cmdbench.registry import METRICS

    name = args.protocol_metric
    factory = METRICS.get(name)
    opts = judge_options(name, factory, args, parse_metric_options(args, [name]))
    for key in ("ref_stats", "reference"):
        if key in opts.values:
            raise ValueError(f"--metric-option {name}:{key}: ref-stats computes real statistics; it takes none")
    source = opts.sources.get("extractor", "")
    if args.extractor and source != "--extractor" and not source.startswith("--metric-option"):
        raise ValueError(f"--extractor {args.extractor} is not an extractor of {name}; allowed "
                         f"{', '.join(kind_extractors(judge_kind(factory)))}")
    for line in opts.notes:
        print(line)
    values = {**opts.values, "device": device}
    if "strict" in (factory_options(factory) or ("strict",)):
        values["strict"] = False
    return factory(**values)


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.reference_sets import ref_stats_for_dataset
    from cmdbench.bench.sharded import init_distributed_from_env
    from cmdbench.interfaces import check_device
    from cmdbench.metrics.reference import ReferenceCache
    from cmdbench.video import quiet_decord

    check_device(args.device, what="--device")
    export = check_export(args.export)
    quiet_decord()  # bad files raise clear errors; FFmpeg's per-frame log lines would flood the terminal
    shard = init_distributed_from_env()  # torchrun / accelerate launch: ranks share the clips
    device = args.device
    if device == "cuda" and shard.world_size > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    judge = build_judge(args, device)
    protocol, extractor = with_real_plan(judge.protocol, args), judge.extractor
    if args.dataset == "folder" and not args.videos:
        raise ValueError("pass --videos DIR (a folder of videos) or --dataset ucf101|webvid --root DIR")
    # total: the protocol's real-clip count (unknown for num_real = 0: rate only)
    bar = progress_bar(total=protocol.num_real or None, desc="real clips",
                       enabled=progress_enabled(args) and shard.rank == 0)
    temp_out = export is not None and not args.out
    if temp_out:
        args.out = str(Path(export[1]).with_name(f".{Path(export[1]).name}.{os.getpid()}.stats.npz"))
    try:
        line = (f"statistics for {args.protocol_metric}: {judge.describe()}"
                if args.protocol_metric in JUDGE_METRIC_NAMES else None)
        rc = ref_stats_for_dataset(args, protocol, CountingExtractor(extractor, bar), ReferenceCache(args.cache_dir),
                                   judge=line)
    finally:
        bar.close()
    if shard.rank == 0 and "random" in extractor.name:
        print(f"  RANDOM WEIGHTS: {extractor.name} is an offline stand-in; values against these statistics mean "
              "nothing")
    if export is not None and shard.rank == 0:
        try:
            print(f"exported ({export[0]}): {export_mu_sigma(args.out, export[1], protocol.ddof)}")
        finally:
            if temp_out:
                Path(args.out).unlink(missing_ok=True)
    return rc


def check_export(export: list[str] | None) -> tuple[str, str] | None:
    if export is None:
        return None
    fmt, out = export
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--export {fmt!r}: unknown format; allowed {', '.join(EXPORT_FORMATS)} (then the .npz path)")
    return fmt, out


def export_mu_sigma(stats_path: str | Path, out: str | Path, ddof: int) -> Path:
    """Write the cmdbench statistics in ``stats_path`` as a (mu, sigma) ``.npz`` (covariance estimator ``ddof``
    of the protocol they were built under), for pytorch-fid-style tools."""
    from cmdbench.metrics.frechet import FeatureStats, save_mu_sigma

    stats = FeatureStats.load(stats_path)
    return save_mu_sigma(out, stats.to_gaussian(ddof))
