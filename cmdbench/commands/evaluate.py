"""``cmdbench evaluate``: FVD, CLIPSIM, PSNR/SSIM/LPIPS (any registered metric) of a folder of videos or of
a registered generator, written as result rows.

Sources: ``--videos DIR`` (every video under DIR, whole, in listed order) or ``--generator NAME`` (one video
per seed, ``--seeds 0-2047``; text prompts from ``--prompts``, a ``filename,caption`` CSV's captions or a
text file with one prompt per line, cycled over the seeds, else the generator's own evaluation prompts;
class labels ``seed % num_classes``). Sampled videos are written to ``--save-videos`` (default
``<records>/<run_id>.videos/``) *before* they are scored, so a failing metric never costs the samples.

FVD and the judges built on it (FVD-family: ``kvd``, ``jedi``, ``fvd-videomae``, ``fvmd``) need real
statistics: ``--ref-stats FILE`` (from ``cmdbench ref-stats --metric NAME``, whose protocol and extractor are
used unless ``--protocol``/``--extractor`` override them; it serves the judges of its protocol, and
``--metric-option NAME:ref_stats=FILE`` gives one judge its own; or a (mu, sigma) ``.npz`` of another tool,
read under the ``--protocol`` you name) or ``--real DIR`` (computed and cached here for every FVD-family judge,
each under its own protocol and cache key). Paired metrics (PSNR, SSIM, LPIPS) compare each video with the
original of the same name in ``--references DIR`` (default: ``--real``). Captions (``--prompts`` or
DIR/captions.csv) are read only when a text metric (CLIPSIM) runs; a video without one is left out of the text
metrics only.

Each judge takes only the options its factory declares. ``--protocol`` (an FVD preset) and an I3D
``--extractor`` go to the I3D judges (fvd*, kvd); jedi, fvd-videomae and fvmd keep their own protocol and take
an ``--extractor`` only when it is theirs (e.g. ``vjepa-random-tiny``); ``--metric-option NAME:KEY=VALUE`` sets
any declared option of one judge (``jedi:extractor=vjepa-random-tiny``, ``fvmd:size=128``). A flag that does
not apply to a judge (``--bootstrap`` for jedi) is named in one line and ignored. FVMD resizes frames to a
256-px short side (``size``; PIPs++ needs >= 128 px, smaller sizes are refused), so small videos work.

Any sample count works: a run at the protocol's counts is labelled ``conformant``; other counts are refused
unless ``--non-strict`` (then every printed line, row and ``cmdbench table`` says ``not conformant (N real
/ M fake)``); Frechet judges with no more clips than feature dimensions need ``--allow-singular``. Every
printed line names the protocol, the extractor or model with its weights checksum, the real and generated
counts, the frames and frame sizes, and labels random stand-in weights. Offline stand-ins: ``--stand-ins``
gives every judge its random-weight stand-in (``i3d-random-tiny``, ``vjepa-random-tiny``,
``videomae-random-tiny``, ``pips-random-tiny`` with a 5x5 grid, 4 iterations, 128 px; CLIPSIM
``clip-random-tiny``); their values mean nothing, and every row and line says RANDOM WEIGHTS.

Each metric fails alone (the others are computed and written; the failure is printed and kept in the
run's ``.json``; exit status 1). ``--run-id ID`` of an earlier run resumes it: metrics already recorded
there are not computed again, so no row is written twice. Bad input follows ``--policy``: ``strict``
stops at the first stray or unreadable file, ``skip`` names each skipped file with its reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from cmdbench.commands.eval_sources import PAIRED, TEXT, Batch, FolderSource, folder_identity, source_sizes
from cmdbench.commands.progress import add_progress_argument, progress_bar, progress_enabled
from cmdbench.commands.ref_stats import add_protocol_arguments, compute_reference, parse_metric_options

# == cmdbench.video.PIX_FMT_MULTIPLE's keys (tests/commands/test_cli_startup.py checks it)
PIX_FMTS = ("yuv420p", "yuv422p", "yuv444p")
CLIP_STANDIN = "clip-random-tiny"  # == cmdbench.metrics.clipsim_standin.STANDIN_NAME
HELP = "FVD/CLIPSIM/PSNR of a folder of videos or a generator, written as result rows"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help=HELP, description=__doc__, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="folder of generated videos")
    src.add_argument("--generator", help="registered generator name (see `cmdbench list`), e.g. diffusers:PATH")
    parser.add_argument("--name", default=None,
                        help="--videos: the name the rows carry (default: the folder's name); the resolved path's "
                             "hash is added, so two folders of one name never merge")
    parser.add_argument("--tiny", action="store_true", help="generator: random-weight miniature")
    parser.add_argument("--checkpoint", default=None, help="generator: checkpoint path or hub id")
    parser.add_argument("--seeds", default="0-15", help="generator: one video per seed, e.g. 0-2047")
    parser.add_argument("--frames", type=int, default=None, help="generator: frames (default: its own)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--sample-batch-size", type=int, default=4, help="generator: videos per sample() call")
    parser.add_argument("--save-videos", default=None, metavar="DIR",
                        help="generator: write each sampled video (seed-NNNNNN.mp4) here before scoring (default: "
                             "<records>/<run_id>.videos)")
    parser.add_argument("--no-save-videos", action="store_true", help="generator: do not write the sampled videos")
    parser.add_argument("--through-codec", action="store_true",
                        help="generator: score the videos after an in-memory mp4 round trip (what `cmdbench "
                             "sample` + `evaluate --videos` see) instead of the raw uint8 tensors")
    parser.add_argument("--codec-crf", type=int, default=18, help="--through-codec: x264 crf (sample writes 18)")
    parser.add_argument("--codec-pix-fmt", default="yuv420p", choices=PIX_FMTS,
                        help="--through-codec: pixel format (sample writes yuv420p)")
    parser.add_argument("--metric", dest="metrics", action="append", required=True,
                        help="metric name, repeatable (fvd2048_16f, fvd-videogpt, kvd, jedi, fvd-videomae, fvmd, "
                             "clipsim, psnr, ssim, lpips, motion-farneback, ...; `cmdbench list`)")
    add_protocol_arguments(parser, metric_option=False)
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--ref-stats", help="real statistics: a .npz from `cmdbench ref-stats` (its protocol and extractor "
                                         "are used), for the judges of its protocol (I3D presets: fvd*, kvd; or jedi, "
                                         "fvd-videomae, fvmd); or another tool's (mu, sigma) .npz (name its --protocol). "
                                         "Per judge: --metric-option NAME:ref_stats=FILE")
    ref.add_argument("--real", help="folder of real videos (statistics of every FVD-family judge computed and cached, "
                                    "each under its own protocol; also the originals of the paired metrics)")
    parser.add_argument("--num-real", type=int, default=None,
                        help="--real: real clips, one per video (default: the metric's, e.g. 2048; 0 = all videos)")
    parser.add_argument("--references", default=None,
                        help="folder of originals for paired metrics (PSNR, SSIM, LPIPS), matched by relative path "
                             "without extension (default: --real)")
    parser.add_argument("--clip-weights", default=None,
                        help=f"CLIPSIM: a CLIP weight file (default: the cached ViT-B/32), or {CLIP_STANDIN!r}, the "
                             "offline stand-in (random tiny CLIP built locally; values meaningless, labelled random)")
    parser.add_argument("--cache-dir", default=None, help="real-statistics cache (default $CMDBENCH_CACHE/ref_stats)")
    parser.add_argument("--prompts", default=None,
                        help="captions CSV (filename,caption; --videos default DIR/captions.csv) or a prompt list "
                             "(.txt, --generator); read only when a text metric runs")
    parser.add_argument("--records", required=True, help="records directory for result rows")
    parser.add_argument("--run-id", default=None, help="run id (default: new); an earlier run's id resumes it")
    parser.add_argument("--dataset", default="", help="dataset name recorded in the rows")
    parser.add_argument("--policy", choices=("strict", "skip"), default="strict",
                        help="--videos: unreadable or stray files (e.g. notes.txt) stop the run (strict) or are "
                             "skipped, each named with its reason on screen and in the run record (skip)")
    parser.add_argument("--non-strict", action="store_true",
                        help="compute FVD-family judges at other sample counts than the protocol's (marked 'not "
                             "conformant')")
    parser.add_argument("--allow-singular", action="store_true",
                        help="compute Frechet judges (fvd*, fvd-videomae, fvmd) with as few clips as feature "
                             "dimensions or fewer on a side (I3D 400, VideoMAE-v2 1408, FVMD 1024); jedi and kvd fit "
                             "no covariance and need no such flag")
    parser.add_argument("--bootstrap", type=int, default=0,
                        help="bootstrap rounds for a std of the Frechet judges that take it (fvd*, fvd-videomae; "
                             "0: none); kvd reports its subset std")
    parser.add_argument("--notes", default="")
    add_progress_argument(parser)
    from cmdbench.bench.sample_curves import add_curve_arguments  # --curve (sample-size curves)

    add_curve_arguments(parser)
    parser.set_defaults(func=run)
    return parser


EPILOG = """examples:
  # two folders, offline stand-ins (random weights: the numbers only show that everything runs)
  cmdbench evaluate --real real/ --videos fake/ --metric fvd2048_16f --metric clipsim --metric psnr \\
      --extractor i3d-random-tiny --clip-weights clip-random-tiny --non-strict --allow-singular --records runs/
  # the judges beyond FVD, offline (every judge its random-weight stand-in)
  cmdbench evaluate --real real/ --videos fake/ --metric jedi --metric kvd --metric fvd-videomae \\
      --metric fvmd --stand-ins --non-strict --allow-singular --records runs/
  # JEDi against precomputed statistics (real weights: cmdbench weights fetch vjepa_vith16 vjepa_vith16_ssv2_probe)
  cmdbench ref-stats --videos real/ --metric jedi --out jedi_real.npz
  cmdbench evaluate --videos fake/ --metric jedi --ref-stats jedi_real.npz --records runs/
  # the paper's protocol with real weights (cmdbench weights fetch i3d_pretrained_400 clip_vit_b32)
  cmdbench ref-stats --videos ucf_real/ --out real.npz
  cmdbench evaluate --videos samples/ --name cmd-ucf --metric fvd2048_16f --ref-stats real.npz --records runs/
  # a diffusers text-to-video pipeline through the adapter
  cmdbench evaluate --generator diffusers:PIPELINE_DIR --seeds 0-2047 --real real/ --metric fvd2048_16f \\
      --metric clipsim --prompts prompts.txt --records runs/
"""


# --- metrics ------------------------------------------------------------------------------------------------
class MetricFailure(Exception):
    """A metric that cannot be computed in this run; the others go on."""


def is_text(metric: Any) -> bool:
    """Whether a metric compares videos with their prompts (it cannot score a video without one)."""
    from cmdbench.metrics.clipsim import CLIPSIM

    return bool(getattr(metric, "needs_prompts", isinstance(metric, CLIPSIM)))


def is_fvd(metric: Any) -> bool:
    from cmdbench.metrics.fvd import FVD

    return isinstance(metric, FVD)


def load_reference_file(path: str | Path) -> Any:
    """``--ref-stats``: cmdbench ``FeatureStats`` or a (mu, sigma) ``GaussianStats`` (ours or a peer's)."""
    from cmdbench.metrics.frechet import FeatureStats, is_mu_sigma_file, load_mu_sigma

    return load_mu_sigma(path) if is_mu_sigma_file(path) else FeatureStats.load(path)


def protocol_from_metadata(meta: dict[str, Any]) -> Any:
    """The ``EvalProtocol`` recorded in statistics metadata (``None`` when there is none)."""
    from cmdbench.config import EvalProtocol

    fields = meta.get("protocol")
    if not isinstance(fields, dict):
        return None
    fields = dict(fields)
    fields["value_range"] = tuple(fields.get("value_range", (-1.0, 1.0)))
    return EvalProtocol(**fields)


def reference_fits(kind: str, reference: Any) -> bool:
    """Whether statistics (loaded from ``--ref-stats``) belong to judges of ``kind``: the kind of the protocol
    they record; a (mu, sigma) file without metadata fits any (it is read under the judge's protocol)."""
    from cmdbench.commands.ref_stats import protocol_kind

    file_protocol = protocol_from_metadata(reference.metadata)
    return file_protocol is None or protocol_kind(file_protocol.name) == kind


def metric_reference(name: str, kind: str, opts: Any, args: argparse.Namespace) -> tuple[Any, str | None]:
    """``(statistics, the flag that gave them)`` for an FVD-family judge: its own ``--metric-option
    NAME:ref_stats=FILE``, else ``--ref-stats FILE`` when that file's protocol is of this judge's kind, else
    ``(None, None)`` (``--real`` computes them). A ``--ref-stats`` of another judge's protocol, with no
    ``--real``, fails this judge alone, naming what to pass."""
    from cmdbench.commands.ref_stats import KIND_FEATURES, protocol_kind

    for key in ("ref_stats", "reference"):
        if key in opts.values:
            path = opts.values.pop(key)
            opts.sources.pop(key, None)
            return load_reference_file(path), f"--metric-option {name}:{key}={path}"
    if not args.ref_stats:
        return None, None
    reference = load_reference_file(args.ref_stats)
    if reference_fits(kind, reference):
        return reference, f"--ref-stats {args.ref_stats}"
    theirs = protocol_from_metadata(reference.metadata).name
    raise MetricFailure(
        f"--ref-stats {args.ref_stats} holds statistics of protocol {theirs!r} ({KIND_FEATURES[protocol_kind(theirs)]} features), "
        f"not {name}'s ({KIND_FEATURES[kind]}); pass {name}'s own with --metric-option {name}:ref_stats=FILE (from `cmdbench ref-stats "
        f"--metric {name}`), or --real DIR instead of --ref-stats")


def build_fvd(name: str, factory: Any, args: argparse.Namespace, opts: Any) -> Any:
    """An FVD-family judge (FVD, KVD, JEDi, content-debiased FVD, FVMD, plugins) under its reference file's
    protocol and extractor (unless a flag names others), the reference attached; a mismatch names the
    differing fields and the flag behind each. Only the options the factory declares are passed."""
    from cmdbench.commands.ref_stats import judge_kind

    kind = judge_kind(factory)
    reference, ref_flag = metric_reference(name, kind, opts, args)
    values = dict(opts.values)
    file_protocol = protocol_from_metadata(reference.metadata) if reference is not None else None
    if file_protocol is not None:
        if not opts.explicit("protocol"):
            protocol = file_protocol
            if kind != "i3d":  # counts stay the judge's own (as the fvd* names fix theirs), features the file's
                own = own_protocol(kind)
                protocol = replace(file_protocol, num_real=own.num_real, num_fake=own.num_fake)
            values["protocol"] = protocol
        if not opts.explicit("extractor"):
            values["extractor"] = reference.metadata.get("extractor") or file_protocol.extractor
        if kind == "fvmd":  # its feature settings, as the protocol name records them
            settings = {"size": file_protocol.size, **settings_in_name(file_protocol.name)}
            values.update({k: v for k, v in settings.items() if not opts.explicit(k)})
    elif reference is not None and kind == "i3d" and not opts.explicit("protocol"):
        raise MetricFailure(f"{ref_flag} holds (mu, sigma) without metadata (another tool's file): name the protocol "
                            "its features were computed under with --protocol PRESET (and --extractor when it is "
                            "not the preset's)")
    metric = factory(**values)
    if reference is not None:
        attach_reference(name, metric, reference, file_protocol, opts, ref_flag, args)
    return metric


def settings_in_name(name: str) -> dict[str, Any]:
    """The feature settings a protocol name records, ``"fvmd[num_points=25,iters=4,size=128]"`` ->
    ``{"num_points": 25, "iters": 4, "size": 128}`` (the form :func:`cmdbench.metrics.fvmd.protocol_name`
    writes; values JSON when they parse, else text); ``{}`` for a plain name."""
    if not (name.endswith("]") and "[" in name):
        return {}
    settings = {}
    for item in name[name.index("[") + 1 : -1].split(","):
        key, _, raw = item.partition("=")
        try:
            settings[key] = json.loads(raw)
        except json.JSONDecodeError:
            settings[key] = raw
    return settings


def own_protocol(kind: str) -> Any:
    """The fixed protocol of a judge kind with its own features (jedi, videomae, fvmd)."""
    from cmdbench.metrics import fvmd, jedi, videomae

    return {"jedi": jedi.PROTOCOL, "videomae": videomae.PROTOCOL, "fvmd": fvmd.PROTOCOL}[kind]


def attach_reference(name: str, metric: Any, reference: Any, file_protocol: Any, opts: Any, ref_flag: str,
                     args: argparse.Namespace) -> None:
    """Check statistics against the judge (protocol, extractor, counts) and attach them."""
    if file_protocol is not None:
        check_reference_matches(reference, file_protocol, metric, opts.sources, ref_flag)
    else:  # a peer's (mu, sigma): its features are taken to be the named protocol's, as the user says
        from cmdbench.metrics.reference import stats_metadata

        reference.metadata = stats_metadata(
            metric.protocol, metric.extractor.checksum, kind="real", numerics=metric.numerics,
            extractor=metric.extractor.name, imported_from=ref_flag,
            imported_as=f"(mu, sigma) of another tool, read under protocol {metric.protocol.name}",
            n="unknown" if reference.n is None else reference.n)
    if reference.n is None and not args.non_strict:
        raise MetricFailure(f"{ref_flag} records no real-clip count, so the run cannot be shown conformant to "
                            f"{name}; pass --non-strict (marked 'not conformant (unknown real / ...)')")
    check_strict_real_count(metric, reference.n, ref_flag)
    metric.set_reference(reference)


def check_reference_matches(reference: Any, file_protocol: Any, metric: Any, sources: dict[str, str],
                            ref_flag: str) -> None:
    """Refuse statistics whose features differ from this run's, naming each differing field and the flag that
    asked for it (never 'protocol X differs from X')."""
    from cmdbench.metrics.reference import FEATURE_FIELDS, ProtocolMismatchError

    ours = metric.protocol
    fixed = {"num_frames": "--metric", "frame_stride": "--metric"}
    diffs = []
    for k in FEATURE_FIELDS:
        theirs, mine = getattr(file_protocol, k), getattr(ours, k)
        if k == "extractor":
            theirs = reference.metadata.get("extractor") or theirs
        if (list(theirs) if isinstance(theirs, tuple) else theirs) != (list(mine) if isinstance(mine, tuple) else mine):
            why = sources.get(k) or fixed.get(k) or sources.get("protocol") or "--protocol"
            diffs.append(f"{k}: {theirs!r} in the file, {mine!r} here (from {why})")
    checksum = reference.metadata.get("extractor_checksum")
    if not diffs and checksum and checksum != metric.extractor.checksum:
        diffs.append(f"extractor weights: sha256 {checksum[:12]} in the file, {metric.extractor.checksum[:12]} here "
                     "(from --extractor-path, the weights cache, or the judge's feature options: give the "
                     "--stand-ins / --metric-option the statistics were built with)")
    if diffs:
        raise ProtocolMismatchError(
            f"{ref_flag} was built under preset {file_protocol.name!r} with extractor "
            f"{reference.metadata.get('extractor') or file_protocol.extractor!r}; {metric.name} here differs in "
            f"{'; '.join(diffs)}. Leave out the overriding flags to use the file's settings, or rebuild the "
            "statistics with `cmdbench ref-stats` under these")


def build_metric(name: str, args: argparse.Namespace) -> Any:
    """A metric from the registry with the options its factory declares (:func:`judge_options`); FVD-family
    judges through :func:`build_fvd` (reference, protocol and extractor from the statistics file)."""
    import cmdbench.metrics.catalog  # noqa: F401  (built-in metrics, without importing every generator)
    from cmdbench.commands.ref_stats import is_fvd_family, judge_options
    from cmdbench.metrics.clipsim import CLIPSIM
    from cmdbench.registry import METRICS, load_plugins

    if name not in METRICS:
        load_plugins()  # third-party and reconstruction metrics; raises with close matches when still unknown
    factory = METRICS.get(name)
    opts = judge_options(name, factory, args, getattr(args, "metric_option_map", None))
    for line in opts.notes:
        print(line)
    if is_fvd_family(factory):
        return build_fvd(name, factory, args, opts)
    if factory is CLIPSIM:
        weights = opts.values.pop("weights", None) or args.clip_weights or (CLIP_STANDIN if args.stand_ins else None)
        return factory(weights, **opts.values)
    metric = factory(**opts.values)
    if is_fvd(metric) and args.ref_stats:  # an FVD built by a factory that declares no options
        reference = load_reference_file(args.ref_stats)
        attach_reference(name, metric, reference, protocol_from_metadata(reference.metadata), opts,
                         f"--ref-stats {args.ref_stats}", args)
    return metric


def check_fvd_counts(name: str, metric: Any, args: argparse.Namespace) -> None:
    """Small-N, singular and non-conformant FVD-family values stopped with the side and the flag to change
    (the library's own errors name Python arguments). Judges that fit no covariance (JEDi, KVD:
    ``uses_covariance = False``) skip the singular check."""
    from cmdbench.metrics.frechet import InsufficientSamplesError

    real, fake, p = metric.reference, metric.fake, metric.protocol
    if real is None:
        raise MetricFailure(f"{name}: no real statistics (pass --ref-stats FILE or --real DIR)")
    real_flag = f"--ref-stats {args.ref_stats}" if args.ref_stats else f"--real {args.real}"
    fake_flag = f"--videos {args.videos}" if args.videos else f"--generator {args.generator} --seeds {args.seeds}"
    sides = (("real", real.n, real_flag), ("generated", fake.n, fake_flag))
    covariance = getattr(metric, "uses_covariance", True)
    for side, n, flag in sides:
        if n is not None and n < 2:
            need = "a covariance needs" if covariance else "the estimate needs"
            raise InsufficientSamplesError(f"{name}: the {side} side has {n} clip(s) ({flag}); {need} at least 2: "
                                           "give more videos")
    if not conformance(metric)[0] and not args.non_strict:
        raise InsufficientSamplesError(
            f"{name} under {p.name!r} takes {p.num_real or 'every'} real and {p.num_fake} generated clips; "
            f"got {fmt_n(real.n)} real ({real_flag}) and {fake.n} generated ({fake_flag}). Its value depends on the "
            "sample count, so other counts are not comparable with published values: pass --non-strict to compute "
            f"it anyway (marked 'not conformant ({fmt_n(real.n)} real / {fake.n} fake)'), or give the protocol's counts"
        )
    if not covariance:
        return
    dim = metric.extractor.dim
    small = [f"the {side} side has {n} clips ({flag})" for side, n, flag in sides if n is not None and n <= dim]
    if small and not args.allow_singular:
        raise InsufficientSamplesError(
            f"{name}: {' and '.join(small)}, not more than the feature dimension {dim}: the covariance is "
            f"singular and the distance unreliable. Use more than {dim} clips per side, or pass --allow-singular to "
            "compute it anyway (recorded)"
        )


def check_strict_real_count(metric: Any, n: int | None, flag: str) -> None:
    """Under the protocol's counts (no ``--non-strict``): real statistics of another count are refused here,
    naming the flags (the library's own check names its arguments)."""
    from cmdbench.metrics.frechet import InsufficientSamplesError

    p = metric.protocol
    if metric.strict and p.num_real and n is not None and n != p.num_real:
        raise InsufficientSamplesError(
            f"{flag} holds {n} real clips; {metric.name} under {p.name!r} takes {p.num_real}. Pass --non-strict to "
            f"compute it anyway (marked 'not conformant'), or give {p.num_real} real videos")


def conformance(metric: Any) -> tuple[bool, str]:
    """(conformant, label): ``"conformant (2048 real / 2048 fake)"`` or ``"not conformant (47 real / 47 fake;
    the protocol takes 2048 / 2048)"``."""
    real, fake, p = metric.reference, metric.fake, metric.protocol
    n_real = real.n if real is not None else None
    ok = fake.n == p.num_fake and n_real is not None and (not p.num_real or n_real == p.num_real)
    counts = f"{fmt_n(n_real)} real / {fake.n} fake"
    if ok:
        return True, f"conformant ({counts})"
    return False, f"not conformant ({counts}; the protocol takes {p.num_real or 'all'} / {p.num_fake})"


def fmt_n(n: int | None) -> str:
    return "unknown" if n is None else str(n)


# --- sources ------------------------------------------------------------------------------------------------
def read_prompt_file(path: str | Path) -> list[str]:
    """A ``filename,caption`` / ``prompt`` CSV (caption column) or a text file with one prompt per line."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        column = next((c for c in ("caption", "prompt", "text") if rows and c in rows[0]), None)
        if column is None:
            raise ValueError(f"{path}: needs a 'caption' or 'prompt' column; got {list(rows[0]) if rows else []}")
        prompts = [r[column] for r in rows]
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError(f"{path}: empty prompt list or empty prompts")
    return prompts


def min_frames_needed(metrics: dict[str, Any]) -> int:
    spans = [(m.protocol.num_frames - 1) * m.protocol.frame_stride + 1 for m in metrics.values() if is_fvd(m)]
    return max(spans, default=1)


def generator_batches(args: argparse.Namespace, gen: Any, seeds: tuple[int, ...], settings: dict[str, Any],
                      video_dir: Path | None, text_wanted: bool):
    """Sampled videos, ``--sample-batch-size`` seeds per ``sample()`` call, written to ``video_dir`` (when
    given) before anything scores them."""
    import torch

    from cmdbench.seeding import make_generators
    from cmdbench.video import codec_round_trip, mp4_storage, write_mp4

    prompts = None
    if gen.conditioning == "text":
        prompts = read_prompt_file(args.prompts) if args.prompts else list(getattr(gen, "eval_prompts", ()) or ())
        if not prompts:
            raise ValueError(f"{args.generator} is text-conditional: pass --prompts")
    elif args.prompts and text_wanted:
        raise ValueError(f"{args.generator} is {gen.conditioning}-conditional: --prompts would not condition it")
    storage = mp4_storage(crf=args.codec_crf, pix_fmt=args.codec_pix_fmt) if args.through_codec else None
    for i in range(0, len(seeds), args.sample_batch_size):
        batch = seeds[i : i + args.sample_batch_size]
        cond: dict[str, Any] = {}
        if gen.conditioning == "text":
            cond["prompts"] = [prompts[(i + j) % len(prompts)] for j in range(len(batch))]
        elif gen.conditioning == "class":
            cond["labels"] = [s % int(gen.num_classes) for s in batch]
        with torch.no_grad():
            videos = gen.sample(generator=make_generators(batch), **settings, **cond)
        if video_dir is not None:  # kept whatever happens to the metrics
            for seed, video in zip(batch, videos, strict=True):
                write_mp4(video_dir / f"seed-{seed:06d}.mp4", video)
        if args.through_codec:  # the pixels `cmdbench sample` would write and `evaluate --videos` would read
            videos = codec_round_trip(videos, crf=args.codec_crf, pix_fmt=args.codec_pix_fmt)
        yield Batch(videos, cond.get("prompts"), None, [f"seed-{s:06d}" for s in batch], storage, {"seeds": batch})


# --- run ----------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.results import RecordWriter, new_run_id
    from cmdbench.data.policy import DatasetError
    from cmdbench.interfaces import check_device, is_paired
    from cmdbench.video import quiet_decord

    check_device(args.device, what="--device")
    quiet_decord()  # unreadable files raise clear errors; FFmpeg's per-frame log lines would flood the terminal
    if args.videos and args.through_codec:
        raise ValueError("--through-codec applies to --generator; --videos files are scored as they are stored")
    if args.num_real is not None and args.num_real < 0:
        raise ValueError(f"--num-real={args.num_real}; allowed 0 (all videos) or a positive count")
    run_id = args.run_id or new_run_id("eval")
    writer = RecordWriter(args.records, run_id)
    source = source_descriptor(args)
    meta = resume_meta(writer, source)
    done = set(writer.existing()["metric"].astype(str)) if writer.csv_path.exists() else set()
    failures: dict[str, str] = {}
    wanted = [m for m in dict.fromkeys(args.metrics)]
    args.metric_option_map = parse_metric_options(args, wanted)
    for name in [m for m in wanted if m in done]:
        print(f"{name}: already recorded in run {run_id} ({writer.csv_path}); not computed again")
    todo = [m for m in wanted if m not in done]
    if not todo:
        return 0
    if args.ref_stats:
        load_reference_file(args.ref_stats)  # an unreadable file stops the run here; each judge loads its copy
    metrics: dict[str, Any] = {}
    for name in todo:
        try:
            metrics[name] = build_metric(name, args)
        except Exception as err:
            fail(name, err, failures)
    real_info = attach_real(metrics, args, failures) if metrics else {}
    if args.curve:  # the generated per-clip features, kept for the curves
        from cmdbench.bench.sample_curves import prepare_curve

        prepare_curve(metrics)
    text_wanted = any(is_text(m) for m in metrics.values())
    paired_wanted = any(is_paired(m) for m in metrics.values())
    state = Scoring(args, metrics, failures)
    if not metrics:  # every metric failed before any video was read
        state.finish({}, real_info, run_id, writer, meta, source)
        print(f"cmdbench evaluate: no metric can be computed ({', '.join(failures)}; reasons above)", file=sys.stderr)
        return 1
    if args.videos:
        refs = args.references or args.real
        if paired_wanted and not refs:
            for name in [n for n, m in metrics.items() if is_paired(m)]:
                fail(name, ValueError(f"{name} compares each video with its original: pass --references DIR (or "
                                      "--real DIR) holding the originals under the same names"), failures, metrics)
            refs = None
        captions = None
        if text_wanted:
            try:
                captions = caption_file(args)
            except (ValueError, FileNotFoundError) as err:
                for name in [n for n, m in metrics.items() if is_text(m)]:
                    fail(name, err, failures, metrics)
        try:
            folder = FolderSource(Path(args.videos), args.policy, min_frames_needed(metrics), captions=captions,
                                  references=Path(refs) if refs and paired_wanted else None)
        except DatasetError as err:
            raise DatasetError(f"{err} [cmdbench evaluate: --policy skip]") from None
        ident = folder_identity(args.videos, args.name)
        base = {"generator": ident["generator"], "checkpoint": ident["checkpoint"],
                "checkpoint_sha": ident["checkpoint_sha"], "conditioning": "", "seeds": "", "dataset": args.dataset}
        state.score(folder.batches(), total=len(folder))
        state.exclusions, state.data_report = folder.exclusions, folder.report
    else:
        base, batches, total = generator_source(args, writer, run_id, text_wanted, metrics, failures)
        state.score(batches, total=total)
        if state.n_videos != total:
            raise RuntimeError(f"sampled {state.n_videos} videos for {total} seeds")
    state.report_skips()
    rows = state.finish(base, real_info, run_id, writer, meta, source)
    for r in rows:
        print(metric_line(r, metrics[r["metric"]], state, real_info))
    print(f"records: {writer.csv_path}")
    if args.curve:
        from cmdbench.bench.sample_curves import run_curve

        run_curve(args, {n: m for n, m in metrics.items() if n not in failures}, run_id=run_id,
                  generator=base["generator"], dataset=args.dataset)
    if failures:
        print(f"cmdbench evaluate: {len(failures)} of {len(todo)} metrics failed ({', '.join(failures)}; reasons "
              f"above and in {writer.meta_path}); the others are recorded. Rerun with --run-id {run_id} to add them "
              "without repeating the rest", file=sys.stderr)
    return 1 if failures else 0


def caption_file(args: argparse.Namespace) -> Path:
    from cmdbench.commands.eval_sources import caption_file as find

    return find(Path(args.videos), args.prompts)


def source_descriptor(args: argparse.Namespace) -> dict[str, Any]:
    """What a run scores; a resumed run (same --run-id) must score the same."""
    if args.videos:
        return {"videos": folder_identity(args.videos, args.name)["checkpoint"], "name": args.name}
    return {"generator": args.generator, "checkpoint": args.checkpoint, "tiny": args.tiny, "seeds": args.seeds,
            "frames": args.frames, "height": args.height, "width": args.width, "steps": args.steps,
            "guidance_scale": args.guidance_scale, "dtype": args.dtype, "through_codec": args.through_codec}


def resume_meta(writer: Any, source: dict[str, Any]) -> dict[str, Any]:
    """The run record so far (a resumed run's), refusing to resume a run of other videos."""
    if not writer.meta_path.exists():
        return {}
    meta = json.loads(writer.meta_path.read_text())
    if meta.get("source") not in (None, source):
        raise ValueError(f"run {writer.run_id} in {writer.directory} scored {meta['source']}, not {source}; "
                         "pass a new --run-id (or none) for these videos")
    return meta


# Library messages name Python arguments; on this command line they are flags.
FLAG_WORDS = (("pass strict=False", "pass --non-strict"), ("strict=False", "--non-strict"),
              ("allow_singular=True", "--allow-singular"))


def fail(name: str, err: BaseException, failures: dict[str, str], metrics: dict[str, Any] | None = None) -> None:
    """Record a metric's failure (one line, no traceback for our own errors, flags instead of Python argument
    names) and drop the metric from the run."""
    from cmdbench.cli import is_user_error

    text = str(err) if is_user_error(err) or isinstance(err, MetricFailure) else f"{type(err).__name__}: {err}"
    for words, flag in FLAG_WORDS:
        text = text.replace(words, flag)
    failures[name] = text
    print(f"{name}: cannot be computed: {failures[name]} (the other metrics go on)", file=sys.stderr)
    if metrics is not None:
        metrics.pop(name, None)


def attach_real(metrics: dict[str, Any], args: argparse.Namespace, failures: dict[str, str]) -> dict[str, Any]:
    """Real statistics of every FVD-family judge from ``--real``, each under its own protocol, extractor and
    cache key (``--ref-stats`` is attached when building); returns what the printed lines say about the real
    side (counts, sizes, clip choice)."""
    from cmdbench.metrics.reference import ReferenceCache

    info: dict[str, Any] = {"sizes": None, "source": args.ref_stats or args.real, "note": None}
    for name, metric in list(metrics.items()):
        if not is_fvd(metric) or metric.reference is not None:
            continue
        if not args.real:
            fail(name, MetricFailure(f"{name} needs real statistics: pass --ref-stats FILE or --real DIR (FILE from "
                                     f"`cmdbench ref-stats --metric {name}`; for this judge alone: --metric-option "
                                     f"{name}:ref_stats=FILE)"), failures, metrics)
            continue
        # --num-real plans the real clips; the metric keeps its protocol's count, so conformance is judged by it
        protocol = metric.protocol if args.num_real is None else replace(metric.protocol, num_real=args.num_real)
        try:
            result, used, note = compute_reference(
                args.real, protocol, metric.extractor, cache=ReferenceCache(args.cache_dir),
                batch_size=args.batch_size, policy=args.policy, all_if_fewer=args.non_strict and args.num_real is None,
                progress=progress_enabled(args))
            check_strict_real_count(metric, result.stats.n, f"--real {args.real}")
            metric.set_reference(result.stats)
        except Exception as err:
            fail(name, err, failures, metrics)
            continue
        info["note"] = note
        info["clips"] = f"one seeded window per video (clip_seed {used.clip_seed}, {used.real_order} order)"
        if info["sizes"] is None:
            info["sizes"] = real_sizes(args.real, result)
        for s in result.skipped:  # once, whichever judges planned the same videos
            line = f"skipped real {s['source']}: {s['reason']} [{s['stage']}]"
            if line not in info.setdefault("skip_lines", []):
                info["skip_lines"].append(line)
                print(line)
    if info["note"]:
        print(f"note: {info['note']}")
    if args.real and args.videos and Path(args.real).resolve() == Path(args.videos).resolve():
        print("note: --real and --videos are the same folder; FVD is still not 0, because the real side takes one "
              "seeded window per video and the generated side frames 0, 1, ... of each (different clips)")
    return info


def real_sizes(root: str, result: Any) -> list[str]:
    """Frame sizes of the real videos that entered the statistics (listed again; no frames decoded)."""
    from cmdbench.commands.eval_sources import list_folder
    from cmdbench.data.policy import DataReport

    sources = list_folder(root, DataReport("folder", "skip"))
    skipped = {s["source"] for s in result.skipped}
    return source_sizes([s.path for s in sources if str(s.path) not in skipped])


def generator_source(args: argparse.Namespace, writer: Any, run_id: str, text_wanted: bool,
                     metrics: dict[str, Any], failures: dict[str, str]):
    from cmdbench.interfaces import GeneratorSpec, is_paired
    from cmdbench.registry import GENERATORS, load_plugins
    from cmdbench.seeding import format_seeds, parse_seeds

    load_plugins()
    gen = GENERATORS.get(args.generator)(
        GeneratorSpec(checkpoint=args.checkpoint, device=args.device, dtype=args.dtype, tiny=args.tiny))
    for name in [n for n, m in metrics.items() if is_paired(m)]:
        fail(name, MetricFailure(f"{name} compares videos with their originals, and sampled videos have none; score "
                                 "saved videos against originals with --videos DIR --references DIR"), failures, metrics)
    for name in [n for n, m in metrics.items() if is_text(m)]:
        if gen.conditioning != "text":
            fail(name, MetricFailure(f"{name} compares frames with prompts; {args.generator} is "
                                     f"{gen.conditioning}-conditional and has none"), failures, metrics)
    d = gen.defaults
    settings = {"num_frames": args.frames or d.num_frames, "height": args.height or d.height,
                "width": args.width or d.width, "steps": args.steps or d.steps,
                "guidance_scale": args.guidance_scale if args.guidance_scale is not None else d.guidance_scale}
    seeds = parse_seeds(args.seeds)
    video_dir = None
    if not args.no_save_videos:
        video_dir = Path(args.save_videos) if args.save_videos else writer.directory / f"{run_id}.videos"
        video_dir.mkdir(parents=True, exist_ok=True)
        print(f"sampled videos go to {video_dir} (before scoring)")
    base = {"generator": args.generator, "checkpoint": args.checkpoint or "", "seeds": format_seeds(seeds),
            "conditioning": gen.conditioning, "num_frames": settings["num_frames"], "height": settings["height"],
            "width": settings["width"], "steps": settings["steps"], "guidance_scale": settings["guidance_scale"],
            "batch_size": args.sample_batch_size, "dtype": args.dtype, "dataset": args.dataset}
    return base, generator_batches(args, gen, seeds, settings, video_dir, text_wanted), len(seeds)


class Scoring:
    """Feeds batches to every live metric; a metric that raises is dropped (and recorded), the others go on."""

    def __init__(self, args: argparse.Namespace, metrics: dict[str, Any], failures: dict[str, str]) -> None:
        self.args, self.metrics, self.failures = args, metrics, failures
        self.n_videos = 0
        self.storages: set[str] = set()
        self.shapes: set[tuple[int, int, int]] = set()  # (T, H, W) of the scored videos
        self.exclusions: list[Any] = []
        self.data_report: Any = None

    def score(self, batches: Any, *, total: int) -> None:
        from cmdbench.interfaces import is_paired
        from cmdbench.video import IN_MEMORY

        bar = progress_bar(total=total, desc="evaluate", unit="video", enabled=progress_enabled(self.args))
        try:
            for batch in batches:
                self.storages.add(batch.storage or IN_MEMORY)
                self.shapes.add(tuple(int(v) for v in (batch.videos.shape[1], *batch.videos.shape[-2:])))
                for name, metric in list(self.metrics.items()):
                    try:
                        self.feed(metric, batch, is_paired(metric))
                    except Exception as err:
                        fail(name, err, self.failures, self.metrics)
                self.n_videos += batch.videos.shape[0]
                bar.update(batch.videos.shape[0])
        finally:
            bar.close()

    @staticmethod
    def feed(metric: Any, batch: Batch, paired: bool) -> None:
        if paired:
            if batch.references is None:
                if batch.pair_error:
                    raise MetricFailure(batch.pair_error)
                return  # excluded from the paired metrics (named)
            metric.update(batch.videos, batch.prompts, references=batch.references)
        elif is_text(metric):
            if batch.prompts is None:
                return  # no caption: excluded from the text metrics (named)
            metric.update(batch.videos, batch.prompts)
        else:
            metric.update(batch.videos, batch.prompts)

    def report_skips(self) -> None:
        if self.data_report is not None:
            for item in self.data_report.skipped:
                print(f"skipped {item.source}: {item.reason} [{item.stage}]")
        for ex in self.exclusions:
            print(ex.line())

    def finish(self, base: dict[str, Any], real_info: dict[str, Any], run_id: str, writer: Any,
               meta: dict[str, Any], source: dict[str, Any]) -> list[dict[str, Any]]:
        """Compute each metric (alone), append one row per value, update the run record."""
        from cmdbench.bench.results import config_hash, make_row, now_utc
        from cmdbench.config import to_jsonable
        from cmdbench.env import capture_environment

        env = capture_environment(self.args.device)
        storage = "; ".join(sorted(self.storages))
        sizes = sorted({f"{h}x{w}" for _, h, w in self.shapes})
        frames = sorted({t for t, _, _ in self.shapes})
        if len(self.shapes) == 1 and "num_frames" not in base:
            base = {**base, "num_frames": frames[0], "height": int(sizes[0].split("x")[0]),
                    "width": int(sizes[0].split("x")[1])}
        rows = []
        for name, metric in list(self.metrics.items()):
            metric.storage = storage
            try:
                if is_fvd(metric):
                    check_fvd_counts(name, metric, self.args)
                mv = metric.compute()
            except Exception as err:
                fail(name, err, self.failures, self.metrics)
                continue
            extra = dict(mv.extra)
            protocol = mv.protocol
            extra.update(fake_frames=frames, fake_sizes=sizes, videos_scored=mv.n)
            if is_fvd(metric):
                ok, label = conformance(metric)
                extra.update(conformant=ok, conformance=label, real_sizes=real_info.get("sizes"),
                             real_source=real_info.get("source"), real_clips=real_info.get("clips"),
                             fake_clips=f"frames 0..{metric.protocol.num_frames - 1} at stride "
                                        f"{metric.protocol.frame_stride} of each video")
                if not ok:
                    protocol = f"{mv.protocol}; {label}"
                if real_info.get("sizes") and sizes and real_info["sizes"] != sizes:
                    extra["size_mismatch"] = f"real {', '.join(real_info['sizes'])} vs fake {', '.join(sizes)}"
            if random_weights(metric, extra):
                extra["random_weights"] = True
            notes = json.dumps(to_jsonable(extra), sort_keys=True, default=str)
            if self.args.notes:
                notes = f"{self.args.notes}; {notes}"
            row_base = {**base, "metric": name, "protocol": protocol}
            rows.append(make_row(
                run_id=run_id, created_utc=now_utc(), source="measured", git_sha=env["git_sha"],
                git_dirty=env["git_dirty"], **base, metric=name, value=float(mv.value), std=mv.std,
                n=mv.n if mv.n is not None else self.n_videos, unit=mv.unit, higher_is_better=mv.higher_is_better,
                protocol=protocol, device_name=env["device_name"], torch_version=env["torch_version"],
                cuda_version=env["cuda_version"], notes=notes, config_hash=config_hash(row_base, env, extra=extra),
            ))
            rows[-1]["_extra"] = extra
        writer.append([{k: v for k, v in r.items() if k != "_extra"} for r in rows])
        attempts = list(meta.get("attempts", []))
        attempts.append({"argv": sys.argv[1:], "computed": [r["metric"] for r in rows], "failures": dict(self.failures),
                         "n_videos": self.n_videos})
        writer.write_meta({
            **meta, "command": "evaluate", "source": source, "args": vars(self.args) | {"func": None},
            "environment": env, "n_videos": self.n_videos, "attempts": attempts,
            "failures": {**meta.get("failures", {}), **self.failures},
            "data_reports": [self.data_report.to_dict()] if self.data_report is not None else [],
            "exclusions": [asdict(e) for e in self.exclusions], "fake_sizes": sizes, "fake_frames": frames,
        })
        return rows


def random_weights(metric: Any, extra: dict[str, Any]) -> bool:
    """Whether a value came from random stand-in weights (an ``i3d-random*`` extractor, the random CLIP)."""
    if extra.get("random_weights"):
        return True
    name = getattr(getattr(metric, "extractor", None), "name", "") or ""
    return "random" in name


def metric_line(row: dict[str, Any], metric: Any, state: Scoring, real_info: dict[str, Any]) -> str:
    """One printed line per value: value (and unit), what computed it (protocol, extractor or model, weights
    checksum), the counts, frames and frame sizes of both sides, conformance, random weights, storage."""
    extra = row["_extra"]
    std = f" ± {row['std']:.4g}" if row["std"] is not None else ""
    unit = f" {row['unit']}" if row["unit"] else ""
    frames = "/".join(map(str, extra["fake_frames"])) or "?"
    fake_sizes = ", ".join(extra["fake_sizes"]) or "?"
    if is_fvd(metric):
        real_sizes = ", ".join(extra.get("real_sizes") or []) or "size not recorded"
        what = metric.describe()
        counts = (f"real {fmt_n(extra['n_real'])} clips ({real_sizes}) vs fake {extra['n_fake']} clips "
                  f"({fake_sizes}), {metric.protocol.num_frames} frames each; {extra['conformance']}")
        if "size_mismatch" in extra:
            counts += f"; frame sizes differ ({extra['size_mismatch']})"
    else:
        checksum = extra.get("weights_sha256") or extra.get("extractor_checksum")
        what = row["protocol"] + (f": weights sha256:{checksum[:12]}" if checksum else "")
        pairs = " (vs their originals)" if getattr(metric, "paired", False) else ""
        counts = f"{row['n']} videos{pairs} of {frames} frames ({fake_sizes})"
    label = "; RANDOM WEIGHTS (offline stand-in: the value means nothing)" if extra.get("random_weights") else ""
    return (f"{row['metric']} = {row['value']:.6g}{std}{unit}  [{what}]  {counts}{label}; "
            f"videos: {extra.get('storage', '?')}")


__all__ = ["TEXT", "PAIRED", "run", "add_parser", "read_prompt_file"]
