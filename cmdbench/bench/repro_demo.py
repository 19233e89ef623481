"""Reproduction "demo": a tiny CPU benchmark of the tiny-unet3d miniatures, rendered as a table and figure.

It exercises the whole harness (runner -> records -> table -> figure) in well under a minute on a CPU;
it reproduces no paper number. Records go to ``<out-root>/results/records/demo/``, the table to
``<out-root>/results/tables/demo.{md,tex}``, the figure to ``<out-root>/results/figures/demo_sampling_time.{png,pdf}``.
The table and figure always show the newest demo run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmdbench.bench.reproduce import REPRODUCTIONS

GENERATORS = ("tiny-unet3d", "tiny-unet3d-class", "tiny-unet3d-uncond")
RECORDS = Path("results/records/demo")
TABLE = Path("results/tables/demo")
FIGURE = Path("results/figures/demo_sampling_time")


def render_demo(root: Path) -> list[Path]:
    """Table and figure of the newest demo run under ``root`` (nothing when no demo records exist)."""
    from cmdbench.bench.plots import bar_chart
    from cmdbench.bench.results import load_records
    from cmdbench.bench.tables import pivot, write_table

    records_dir = Path(root) / RECORDS
    if not records_dir.is_dir() or not list(records_dir.glob("*.csv")):
        print(f"demo: no records in {records_dir}; run `cmdbench reproduce demo` first")
        return []
    df = load_records(records_dir)
    group = df["run_id"].str.split("--").str[0]  # one demo = one run per generator: <demo id>--<generator>
    newest = df.groupby(group)["created_utc"].max().sort_values().index[-1]
    latest = df[group == newest]
    table = pivot(latest, ["metric", "unit"], "generator")
    caption = (f"tiny-unet3d demo on {latest['device_name'].iloc[0]}: per-video cost, "
               f"{latest['num_frames'].iloc[0]}x{latest['height'].iloc[0]}x{latest['width'].iloc[0]}, "
               f"{latest['steps'].iloc[0]} steps (run {newest})")
    paths = write_table(table, Path(root) / TABLE, caption=caption, label="tab:demo")
    paths += bar_chart(latest, "sampling_time", Path(root) / FIGURE, title="tiny-unet3d demo: sampling time per video")
    return paths


@REPRODUCTIONS.register("demo", description="tiny CPU benchmark of the tiny-unet3d miniatures -> table + figure "
                        "(harness smoke run; no paper number)")
def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cmdbench reproduce demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out-root", type=Path, default=Path("."), help="root holding results/ (default .)")
    parser.add_argument("--seeds", default="0-3")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="default: the generator's (4)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from cmdbench.bench.results import new_run_id
    from cmdbench.bench.runner import run_bench
    from cmdbench.config import BenchConfig, SamplingConfig

    run_id = new_run_id("demo")
    for name in GENERATORS:
        cfg = BenchConfig(generator=name, seeds=args.seeds, tiny=True, device="cpu",
                          sampling=SamplingConfig(steps=args.steps, batch_size=args.batch_size),
                          notes="demo: harness smoke run")
        run_bench(cfg, args.out_root / RECORDS, run_id=f"{run_id}--{name}", progress=not args.no_progress)
    for path in render_demo(args.out_root):
        print(f"wrote {path}")
    return 0
