"""Motion-stratified evaluation: which judge says what about slow, medium and fast videos.

CMD's paper names fast, highly dynamic motion as its failure mode; one FVD over all videos hides where a
model degrades. Here every real and generated video gets a motion magnitude (:mod:`cmdbench.metrics.motion`:
mean optical-flow magnitude, px/frame at a 256-px short side; Farnebäck by default, RAFT when its weights
are present), the videos are split into three **buckets**, and every set judge (FVD, KVD, JEDi,
content-debiased FVD, FVMD, ...) is computed per bucket, real bucket against generated bucket.

Buckets: by the **real set's terciles** (default; ``slow``: m < q⅓, ``medium``: q⅓ <= m < q⅔, ``fast``: m >= q⅔,
``numpy.quantile`` with linear interpolation), so each real bucket holds a third of the real videos and a
generator's share per bucket shows whether it under-produces fast motion; or **fixed edges** in px/frame
(:func:`fixed_strata`), comparable across datasets. The real and generated magnitude distributions are
also compared directly: two-sample Kolmogorov-Smirnov statistic (with its p-value) and the 1-Wasserstein
distance in px/frame (``scipy.stats``), and a histogram figure.

Judges are computed from per-clip features, one extractor pass per video: every registered judge built on
:class:`~cmdbench.metrics.fvd.FVD` (its protocol's clip, its extractor) gives a feature row per video, and
a bucket's value is the judge's own ``compute()`` on the statistics of that bucket's rows
(:class:`SetJudge`). A bucket with too few videos on a side for the judge is named with the reason, not
dropped silently. Offline stand-ins (``stand_in=True``): random-weight extractors
(:data:`STAND_IN_OPTIONS`), labelled in every row, the table and the figure; their values mean nothing.

Records (results schema, one run): ``<judge>/motion_<bucket>`` (bucket ``all``, ``slow``, ``medium``,
``fast``; ``n`` = generated videos in the bucket, real count and edges in ``notes``), ``motion_magnitude/
<real|generated>[@flow]`` (per-video values in ``values``: ``value`` their median, ``std`` their spread),
``motion_fraction/<bucket>`` (share of generated videos), ``motion_edge/<lo|hi>``, ``motion_ks``,
``motion_wasserstein``. :func:`render_motion_strata` draws the markdown table and the figure from them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

BUCKETS = ("slow", "medium", "fast")
RECORDS = Path("results/records/motion_strata")
TABLE = Path("results/tables/motion_strata")
FIGURE = Path("results/figures/motion_strata")
RANDOM_LABEL = "random-weight stand-in extractors: the values show the harness, not model quality"

# Offline stand-ins of the judges that need weights: random-weight miniatures of the same code paths.
STAND_IN_OPTIONS: dict[str, dict[str, Any]] = {
    "fvd-videomae": {"extractor": "videomae-random-tiny"},
    "fvd": {"extractor": "i3d-random-tiny"},  # every fvd-* / fvd2048_* name
    "kvd": {"extractor": "i3d-random-tiny"},
    "jedi": {"extractor": "vjepa-random-tiny"},
    "fvmd": {"extractor": "pips-random-tiny", "num_points": 25, "iters": 4, "size": 128},
}
# Judges that need no weights (computed as they are, stand-in or not).
WEIGHTLESS = ("motion-farneback",)


# --- videos ----------------------------------------------------------------------------------------------


@dataclass
class VideoSet:
    """Videos read on demand: ``len``, ``[i]`` -> uint8 ``(T, 3, H, W)``, their ids and a name.

    ``skipped``: inputs left out, each with its reason (the folder's skip policy)."""

    name: str
    ids: list[str]
    read: Callable[[int], torch.Tensor]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.read(i)


def tensor_set(videos: torch.Tensor | Sequence[torch.Tensor], name: str) -> VideoSet:
    """A :class:`VideoSet` over uint8 videos in memory (``(N, T, 3, H, W)`` or a list of ``(T, 3, H, W)``)."""
    vids = list(videos)
    return VideoSet(name, [f"{name}[{i}]" for i in range(len(vids))], lambda i: vids[i])


def folder_set(root: str | Path, num_frames: int = 16, *, policy: str = "strict") -> VideoSet:
    """The first ``num_frames`` frames of every video under ``root`` (cmdbench's folder dataset: the same
    listing, probing and skip policy as ``cmdbench evaluate --videos``)."""
    from cmdbench.data.clips import ClipSpec
    from cmdbench.data.datasets import folder
    from cmdbench.data.readers import read_frames

    dataset = folder(root, clip=ClipSpec(num_frames=num_frames, size=None, order="listed"), policy=policy)
    usable = [src for src, _ in dataset.usable]
    skipped = [{"source": s.source, "reason": s.reason, "stage": s.stage} for s in dataset.report.skipped]
    return VideoSet(Path(root).name, [s.id for s in usable],
                    lambda i: read_frames(usable[i].path, range(num_frames)), skipped)


# --- judges ----------------------------------------------------------------------------------------------


def stand_in_options(name: str) -> dict[str, Any] | None:
    """The random-weight stand-in options of a judge (``None``: no stand-in known)."""
    if name in STAND_IN_OPTIONS:
        return dict(STAND_IN_OPTIONS[name])
    if name.startswith("fvd"):
        return dict(STAND_IN_OPTIONS["fvd"])
    return None


class SetJudge:
    """A set judge (an FVD-family metric) computed from per-video feature rows.

    ``features(video)`` cuts the judge's protocol clip from one uint8 ``(T, 3, H, W)`` video and returns its
    feature row; ``value(real_rows, fake_rows)`` is the judge's own ``compute()`` on the statistics of those
    rows (real statistics in place of a reference). ``stand_in``: the random extractor's name, or ``None``.
    """

    def __init__(self, name: str, metric: Any, stand_in: str | None) -> None:
        from cmdbench.metrics.fvd import FVD

        if not isinstance(metric, FVD):
            raise ValueError(f"judge {name!r} ({type(metric).__name__}) keeps no per-clip features; stratified and "
                             "sensitivity values need an FVD-family judge (fvd-*, fvd2048_*, kvd, jedi, fvd-videomae, "
                             "fvmd)")
        self.name, self.metric, self.stand_in = name, metric, stand_in
        self.min_frames = (metric.protocol.num_frames - 1) * metric.protocol.frame_stride + 1

    def features(self, video: torch.Tensor) -> np.ndarray:
        from cmdbench.metrics.fvd import clip_of

        return self.metric.features(clip_of(video[None], self.metric.protocol)).numpy()[0]

    def value(self, real_rows: np.ndarray, fake_rows: np.ndarray):
        """The judge's :class:`~cmdbench.interfaces.MetricValue` between two sets of feature rows."""
        m = self.metric
        real, fake = m.new_stats("real"), m.new_stats("fake")
        real.update(np.asarray(real_rows))
        fake.update(np.asarray(fake_rows))
        m.reference, m.real_accum, m.fake = None, real, fake
        return m.compute()


class VideoJudge:
    """A per-video judge (motion magnitude): a set's value is the mean of its videos' values."""

    def __init__(self, name: str, flow: Any) -> None:
        self.name, self.flow, self.stand_in = name, flow, None
        self.min_frames = 2

    def features(self, video: torch.Tensor) -> np.ndarray:
        return np.array([self.flow.pair_magnitudes(video).mean()])

    def value(self, real_rows: np.ndarray, fake_rows: np.ndarray):
        from cmdbench.interfaces import MetricValue
        from cmdbench.metrics.motion import UNIT

        fake = np.asarray(fake_rows)[:, 0]
        real = np.asarray(real_rows)[:, 0]
        std = float(fake.std(ddof=1)) if len(fake) > 1 else None
        return MetricValue(self.name, float(fake.mean()), UNIT, None, std, len(fake), f"{self.flow.name}@{self.flow.size}",
                           extra={"real_mean": float(real.mean()) if len(real) else None, **self.flow.describe()})


def build_judges(names: Iterable[str], *, stand_in: bool = False, device: str = "cpu",
                 options: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, SetJudge | VideoJudge], dict[str, str]]:
    """``(judges, {name: why skipped})``. Set judges are built lenient (``strict=False``, ``allow_singular``
    where the factory takes them: the buckets are small); with ``stand_in`` each gets its random-weight
    extractor (:data:`STAND_IN_OPTIONS`). A judge that cannot be built (weights absent, unknown name, no
    stand-in) is skipped with the reason; ``motion-*`` judges are per-video magnitudes."""
    import cmdbench.metrics.catalog  # noqa: F401  (the built-in metrics)
    from cmdbench.metrics.motion import make_flow
    from cmdbench.registry import METRICS

    judges: dict[str, SetJudge | VideoJudge] = {}
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(names):
        try:
            if name.startswith("motion-"):
                flow = make_flow(name.removeprefix("motion-").replace("-", "_"), device=device,
                                 **(options or {}).get(name, {}))
                judges[name] = VideoJudge(name, flow)
                continue
            factory = METRICS.get(name)
            allowed = getattr(factory, "options", None)
            opts: dict[str, Any] = {k: v for k, v in (("strict", False), ("allow_singular", True), ("device", device))
                                    if allowed is None or k in allowed}
            extractor = None
            if stand_in:
                extra = stand_in_options(name)
                if extra is None:
                    skipped[name] = "no random-weight stand-in known for it (run with real weights)"
                    continue
                opts.update(extra)
                extractor = extra["extractor"]
            opts.update((options or {}).get(name, {}))
            judges[name] = SetJudge(name, factory(**opts), extractor)
        except Exception as err:  # missing weights, unknown names, ...: named, the others still run
            skipped[name] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return judges, skipped


def judge_rows(judges: dict[str, Any], videos: VideoSet, *, progress: str | None = None) -> dict[str, np.ndarray]:
    """Every judge's feature row of every video (one read per video): ``{judge: (N, D)}``."""
    from tqdm import tqdm

    rows: dict[str, list[np.ndarray]] = {n: [] for n in judges}
    need = max((j.min_frames for j in judges.values()), default=1)
    for i in tqdm(range(len(videos)), desc=progress, disable=progress is None, leave=False):
        video = videos[i]
        if video.shape[0] < need:
            raise ValueError(f"{videos.ids[i]} has {video.shape[0]} frames; the judges need {need}")
        for name, judge in judges.items():
            rows[name].append(judge.features(video))
    return {n: np.stack(r) if r else np.zeros((0, 1)) for n, r in rows.items()}


# --- strata ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Strata:
    """Bucket edges (px/frame): ``slow`` below ``lo``, ``medium`` in ``[lo, hi)``, ``fast`` from ``hi``."""

    lo: float
    hi: float
    source: str  # "real terciles" or "fixed"

    def assign(self, magnitudes: np.ndarray) -> np.ndarray:
        """Bucket index (0 slow, 1 medium, 2 fast) of every magnitude."""
        return np.digitize(np.asarray(magnitudes, dtype=np.float64), [self.lo, self.hi])


def tercile_strata(real_magnitudes: np.ndarray) -> Strata:
    """Edges at the real set's 1/3 and 2/3 quantiles (needs at least 3 real videos)."""
    m = np.asarray(real_magnitudes, dtype=np.float64)
    if len(m) < 3:
        raise ValueError(f"tercile buckets need at least 3 real videos; got {len(m)}")
    lo, hi = np.quantile(m, [1 / 3, 2 / 3])
    return Strata(float(lo), float(hi), "real terciles")


def fixed_strata(lo: float, hi: float) -> Strata:
    """Fixed edges in px/frame at the 256-px analysis size (``0 <= lo < hi``)."""
    if not 0 <= lo < hi:
        raise ValueError(f"motion bucket edges ({lo}, {hi}); allowed 0 <= lo < hi (px/frame)")
    return Strata(float(lo), float(hi), "fixed")


def compare_distributions(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """Two-sample KS statistic and p-value, 1-Wasserstein distance (px/frame), means and medians."""
    from scipy.stats import ks_2samp, wasserstein_distance

    ks = ks_2samp(real, fake)
    return {"ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "wasserstein": float(wasserstein_distance(real, fake)),
            "real_mean": float(np.mean(real)), "generated_mean": float(np.mean(fake)),
            "real_median": float(np.median(real)), "generated_median": float(np.median(fake))}


@dataclass
class StrataResult:
    """What :func:`motion_strata` measured (``rows`` are result-schema fields without run bookkeeping)."""

    strata: Strata
    flow: str
    real_motion: np.ndarray
    fake_motion: np.ndarray
    rows: list[dict[str, Any]]
    skipped: dict[str, str]


def motion_strata(real: VideoSet, fake: VideoSet, judges: dict[str, SetJudge | VideoJudge], *,
                  flows: Sequence[Any], strata: Strata | None = None, progress: bool = False) -> StrataResult:
    """Per-bucket values of every judge, and the motion distributions of both sets.

    flows: flow estimators (:func:`cmdbench.metrics.motion.make_flow`); the first sets the buckets, the others
    add their own distribution rows. strata: fixed edges, or ``None`` for the real set's terciles.
    """
    from cmdbench.metrics.frechet import InsufficientSamplesError

    if not flows:
        raise ValueError("motion_strata needs at least one flow estimator")
    motion = {f.name: VideoJudge(f"motion-{f.name}", f) for f in flows}
    everything = {**{f"@{k}": v for k, v in motion.items()}, **judges}
    real_rows = judge_rows(everything, real, progress="real videos" if progress else None)
    fake_rows = judge_rows(everything, fake, progress="generated videos" if progress else None)
    primary = flows[0].name
    rm, fm = real_rows[f"@{primary}"][:, 0], fake_rows[f"@{primary}"][:, 0]
    strata = strata or tercile_strata(rm)
    rb, fb = strata.assign(rm), strata.assign(fm)
    base_notes = {"flow": primary, "edges_px_per_frame": [strata.lo, strata.hi], "buckets": strata.source,
                  "real_set": real.name, "generated_set": fake.name}
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name, judge in judges.items():
        for bucket in ("all", *BUCKETS):
            ri = np.arange(len(rb)) if bucket == "all" else np.flatnonzero(rb == BUCKETS.index(bucket))
            fi = np.arange(len(fb)) if bucket == "all" else np.flatnonzero(fb == BUCKETS.index(bucket))
            notes = {**base_notes, "bucket": bucket, "n_real": len(ri), "n_generated": len(fi),
                     "stand_in": judge.stand_in}
            try:
                if len(ri) < 2 or len(fi) < 2:
                    raise InsufficientSamplesError(f"{len(ri)} real / {len(fi)} generated videos in the bucket; "
                                                   "a set judge needs at least 2 per side")
                mv = judge.value(real_rows[name][ri], fake_rows[name][fi])
            except Exception as err:
                skipped[f"{name}/motion_{bucket}"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                continue
            rows.append({"metric": f"{name}/motion_{bucket}", "value": float(mv.value), "std": mv.std,
                         "n": len(fi), "unit": mv.unit, "higher_is_better": mv.higher_is_better,
                         "protocol": mv.protocol, "notes": notes, "extra": mv.extra})
    for flow in flows:
        suffix = "" if flow.name == primary else f"@{flow.name}"
        r, f = real_rows[f"@{flow.name}"][:, 0], fake_rows[f"@{flow.name}"][:, 0]
        for side, vals in (("real", r), ("generated", f)):
            rows.append({"metric": f"motion_magnitude/{side}{suffix}", "value": float(np.median(vals)),
                         "std": float(vals.std(ddof=1)) if len(vals) > 1 else None, "n": len(vals),
                         "unit": "px/frame", "protocol": f"{flow.name}@{flow.size}", "values": vals.tolist(),
                         "notes": {**base_notes, "flow": flow.name, "mean": float(vals.mean()), **flow.describe()}})
        cmp = compare_distributions(r, f)
        rows.append({"metric": f"motion_ks{suffix}", "value": cmp["ks"], "n": len(f), "unit": "",
                     "protocol": f"{flow.name}@{flow.size}", "notes": {**base_notes, **cmp, "flow": flow.name}})
        rows.append({"metric": f"motion_wasserstein{suffix}", "value": cmp["wasserstein"], "n": len(f),
                     "unit": "px/frame", "protocol": f"{flow.name}@{flow.size}",
                     "notes": {**base_notes, **cmp, "flow": flow.name}})
    for k, bucket in enumerate(BUCKETS):
        rows.append({"metric": f"motion_fraction/{bucket}", "value": float(np.mean(fb == k)) if len(fb) else math.nan,
                     "n": int(np.sum(fb == k)), "unit": "fraction", "protocol": f"{primary}@{flows[0].size}",
                     "notes": {**base_notes, "n_real": int(np.sum(rb == k)), "real_fraction": float(np.mean(rb == k))}})
    for edge, v in (("lo", strata.lo), ("hi", strata.hi)):
        rows.append({"metric": f"motion_edge/{edge}", "value": v, "n": len(rm), "unit": "px/frame",
                     "protocol": f"{primary}@{flows[0].size}", "notes": base_notes})
    return StrataResult(strata, primary, rm, fm, rows, skipped)


# --- records ----------------------------------------------------------------------------------------------


def write_records(rows: list[dict[str, Any]], records: str | Path, run_id: str, *, generator: str, dataset: str,
                  device: str = "cpu", context: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Append ``rows`` (metric, value, std, n, unit, protocol, notes, [extra, values]) as result-schema rows of
    one run; returns the CSV. ``context`` enters every row's ``config_hash`` (stand-ins, options)."""
    from cmdbench.bench.results import RecordWriter, config_hash, make_row, now_utc
    from cmdbench.env import capture_environment

    env = capture_environment(device)
    writer = RecordWriter(records, run_id)
    out = []
    for r in rows:
        base = {"generator": generator, "dataset": dataset, "metric": r["metric"], "protocol": r.get("protocol", "")}
        extra = r.get("extra") or {}
        out.append(make_row(
            run_id=run_id, created_utc=now_utc(), source="measured", git_sha=env["git_sha"],
            git_dirty=env["git_dirty"], generator=generator, dataset=dataset, protocol=r.get("protocol", ""),
            metric=r["metric"], value=float(r["value"]), std=r.get("std"), n=r.get("n"), unit=r.get("unit", ""),
            higher_is_better=r.get("higher_is_better"), device_name=env["device_name"],
            torch_version=env["torch_version"], cuda_version=env["cuda_version"], values=r.get("values"),
            notes=json.dumps(r.get("notes") or {}, sort_keys=True, default=str),
            config_hash=config_hash(base, env, extra=extra, context=context),
        ))
    writer.append(out)
    if meta is not None:
        writer.write_meta({**meta, "environment": env})
    return writer.csv_path


def _newest_run(records: Any) -> Any:
    if records.empty:
        raise ValueError("no records to render")
    newest = records.sort_values("created_utc")["run_id"].iloc[-1]
    return records[records["run_id"] == newest]


def _notes(row: Any) -> dict[str, Any]:
    try:
        return json.loads(row["notes"]) if isinstance(row["notes"], str) and row["notes"] else {}
    except json.JSONDecodeError:
        return {}


def render_motion_strata(records: Any, table: str | Path, figure: str | Path) -> list[Path]:
    """``<table>.md`` and ``<figure>.png/.pdf`` of the newest motion-strata run in ``records`` (a DataFrame)."""
    import pandas as pd

    from cmdbench.bench.plots import plt, save_figure
    from cmdbench.bench.results import decode_values
    from cmdbench.bench.tables import format_number, to_markdown, write_text_atomic

    run = _newest_run(records)
    by_metric = {m: r for m, r in zip(run["metric"], run.to_dict("records"), strict=True)}
    scores = run[run["metric"].str.contains("/motion_", regex=False)]
    judges = list(dict.fromkeys(m.rsplit("/motion_", 1)[0] for m in scores["metric"]))
    stand_in = any(_notes(r).get("stand_in") for r in scores.to_dict("records"))
    frac = {b: by_metric.get(f"motion_fraction/{b}") for b in BUCKETS}
    counts = {"all": (None, None)}
    counts.update({b: (_notes(r).get("n_real"), r["n"]) if r is not None else (None, None) for b, r in frac.items()})
    score_rows = []
    for judge in judges:
        cells = {"judge": judge, "protocol": ""}
        for bucket in ("all", *BUCKETS):
            r = by_metric.get(f"{judge}/motion_{bucket}")
            if r is None:  # too few videos on a side for the judge (the run's meta names why)
                n_real, n_gen = counts[bucket]
                cells[bucket] = f"n/a ({n_real if n_real is not None else '?'}/{n_gen if n_gen is not None else '?'})"
                continue
            n = _notes(r)
            cells[bucket] = f"{format_number(r['value'])} ({n.get('n_real', '?')}/{n.get('n_generated', '?')})"
            if n.get("stand_in"):
                cells["judge"] = f"{judge} [random weights: {n['stand_in']}]"
            cells["protocol"] = r["protocol"]
        score_rows.append(cells)
    real_m, fake_m = by_metric.get("motion_magnitude/real"), by_metric.get("motion_magnitude/generated")
    lo, hi = by_metric.get("motion_edge/lo"), by_metric.get("motion_edge/hi")
    notes = _notes(real_m) if real_m is not None else {}
    lines = [f"# Motion-stratified evaluation (run {run['run_id'].iloc[0]})", ""]
    if stand_in:
        lines += [f"**{RANDOM_LABEL}.**", ""]
    lines += [f"Real set `{run['dataset'].iloc[0]}`, generated set `{run['generator'].iloc[0]}`; motion = mean "
              f"{notes.get('flow', '?')} optical-flow magnitude, px/frame at a {notes.get('analysis_short_side', '?')}-px "
              f"short side; buckets by "
              f"{notes.get('buckets', '?')}: slow < {format_number(lo['value']) if lo is not None else '?'} <= medium < "
              f"{format_number(hi['value']) if hi is not None else '?'} <= fast. Cells: value (real/generated videos).",
              "", to_markdown(pd.DataFrame(score_rows)) if score_rows else "(no judge values)", ""]
    dist = []
    for b in BUCKETS:
        r = frac[b]
        if r is not None:
            dist.append({"bucket": b, "real videos": _notes(r).get("n_real"), "generated videos": r["n"],
                         "generated share": format_number(r["value"]),
                         "real share": format_number(_notes(r).get("real_fraction"))})
    if dist:
        lines += ["Motion distribution per bucket:", "", to_markdown(pd.DataFrame(dist)), ""]
    for m in sorted(by_metric):
        if m.startswith("motion_ks"):
            r, n = by_metric[m], _notes(by_metric[m])
            w = by_metric.get(m.replace("motion_ks", "motion_wasserstein"))
            lines.append(f"- {n.get('flow')}: real mean {format_number(n.get('real_mean'))}, generated mean "
                         f"{format_number(n.get('generated_mean'))} px/frame; KS D = {format_number(r['value'])} "
                         f"(p = {format_number(n.get('ks_pvalue'))}), Wasserstein-1 = "
                         f"{format_number(w['value']) if w is not None else '?'} px/frame")
    md = write_text_atomic(Path(table).with_suffix(".md"), "\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 1 + len(judges), figsize=(3.6 * (1 + len(judges)), 3.2), squeeze=False)
    ax = axes[0, 0]
    if real_m is not None and fake_m is not None:
        r_vals, f_vals = decode_values(real_m["values"]), decode_values(fake_m["values"])
        top = max([*r_vals, *f_vals, 1e-6])
        bins = np.linspace(0, top, 16)
        ax.hist(r_vals, bins=bins, alpha=0.55, label=f"real ({len(r_vals)})")
        ax.hist(f_vals, bins=bins, alpha=0.55, label=f"generated ({len(f_vals)})")
        for edge in (lo, hi):
            if edge is not None:
                ax.axvline(edge["value"], color="k", lw=0.8, ls="--")
        ax.set_xlabel("motion magnitude [px/frame]")
        ax.set_ylabel("videos")
        ax.legend(fontsize=7)
    ax.set_title("motion distribution")
    for ax, judge in zip(axes[0, 1:], judges, strict=True):
        vals = [by_metric.get(f"{judge}/motion_{b}") for b in ("all", *BUCKETS)]
        heights = [v["value"] if v is not None else np.nan for v in vals]
        ax.bar(["all", *BUCKETS], heights, color=["0.5", "tab:blue", "tab:orange", "tab:red"])
        unit = next((v["unit"] for v in vals if v is not None and isinstance(v["unit"], str) and v["unit"]), "")
        ax.set_title(judge + (" [random weights]" if stand_in else ""), fontsize=9)
        ax.set_ylabel(f"value{f' [{unit}]' if unit else ''}")
    if stand_in:
        fig.suptitle(RANDOM_LABEL, fontsize=8, color="tab:red")
    fig.tight_layout()
    return [md, *save_figure(fig, figure)]


def render_motion_strata_root(root: Path) -> list[Path]:
    """``nox -s tables`` hook: the newest run under ``<root>/results/records/motion_strata``."""
    from cmdbench.bench.results import load_records

    records_dir = Path(root) / RECORDS
    if not records_dir.is_dir() or not list(records_dir.glob("*.csv")):
        print(f"motion_strata: no records in {records_dir}")
        return []
    return render_motion_strata(load_records(records_dir), Path(root) / TABLE, Path(root) / FIGURE)


# --- command-line hook (e.g. `cmdbench evaluate --motion-strata`) ------------------------------------------


def add_strata_arguments(parser: Any) -> None:
    """The ``--motion-strata`` options (for a command that has ``--real``, ``--videos``, ``--metric``,
    ``--records``, ``--device`` and ``--policy``)."""
    g = parser.add_argument_group("motion-stratified evaluation (--motion-strata)")
    g.add_argument("--motion-strata", action="store_true",
                   help="also score every set judge per motion bucket (slow/medium/fast) and compare the real and "
                        "generated motion distributions (table + figure)")
    g.add_argument("--strata-edges", default=None, metavar="LO,HI",
                   help="fixed bucket edges in px/frame at a 256-px short side (default: the real set's terciles)")
    g.add_argument("--strata-flow", action="append", default=None, choices=("farneback", "raft_small", "raft_large"),
                   help="flow estimator(s); the first sets the buckets (default: farneback, plus RAFT when its "
                        "weights are present)")
    g.add_argument("--strata-stand-in", action="store_true",
                   help="random-weight stand-in extractors for the judges (offline; labelled, values mean nothing)")
    g.add_argument("--strata-out", default=None, help="folder for the table and figure (default: <records>/motion_strata)")


def run_strata(args: Any, *, run_id: str) -> list[Path]:
    """Read ``args.real`` and ``args.videos``, compute :func:`motion_strata` for ``args.metrics`` (set judges
    and ``motion-*``), append the rows to run ``run_id`` in ``args.records`` and render the table and figure.
    Judges that cannot run and buckets too small are printed with their reasons and kept in the run's notes."""
    from cmdbench.bench.results import load_records
    from cmdbench.metrics.motion import available_flows, make_flow

    frames = 16
    real = folder_set(args.real, frames, policy=getattr(args, "policy", "strict"))
    fake = folder_set(args.videos, frames, policy=getattr(args, "policy", "strict"))
    for s in [*real.skipped, *fake.skipped]:
        print(f"skipped {s['source']}: {s['reason']} [{s['stage']}]")
    wanted = args.strata_flow or ["farneback", "raft_small"]
    names, why = available_flows(wanted)
    if args.strata_flow is None:  # RAFT only when present; Farneback always
        why = {k: v for k, v in why.items() if k == "farneback"}
    for name, reason in why.items():
        print(f"flow {name} skipped: {reason}")
    if not names:
        raise ValueError(f"no flow estimator can run ({why})")
    device = getattr(args, "device", "cpu")
    flows = [make_flow(n, device=device) for n in names]
    judges, skipped = build_judges(args.metrics, stand_in=args.strata_stand_in, device=device)
    for name, reason in skipped.items():
        print(f"motion strata: judge {name} skipped: {reason}")
    strata = None
    if args.strata_edges:
        try:
            lo, hi = (float(x) for x in args.strata_edges.split(","))
        except ValueError:
            raise ValueError(f"--strata-edges {args.strata_edges!r}: allowed two numbers LO,HI (px/frame)") from None
        strata = fixed_strata(lo, hi)
    result = motion_strata(real, fake, judges, flows=flows, strata=strata)
    for cell, reason in result.skipped.items():
        print(f"motion strata: no value for {cell}: {reason}")
    csv = write_records(result.rows, args.records, run_id, generator=fake.name, dataset=real.name, device=device,
                        context={"motion_strata": True, "stand_in": args.strata_stand_in,
                                 "edges": args.strata_edges, "flows": names})
    out = Path(args.strata_out) if args.strata_out else Path(args.records) / "motion_strata"
    paths = render_motion_strata(load_records(csv), out / f"{run_id}_motion_strata", out / f"{run_id}_motion_strata")
    print(f"motion strata: {', '.join(str(p) for p in paths)}")
    return paths
