"""``cmdbench sample GEN``: sample one video per seed, write mp4s and a frame-grid PNG.

The videos go to ``<out>/seed-NNNNNN.mp4``; the grid goes *beside* the folder (``<out>-grid.png``), so the
folder holds videos only and ``cmdbench evaluate --videos <out>`` scores it as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmdbench.commands.progress import add_progress_argument

# == cmdbench.interfaces.DTYPES (not imported: that module imports torch; tests/test_cli.py checks they agree)
DTYPES = ("float32", "float16", "bfloat16")

EPILOG = """examples:
  cmdbench sample tiny-unet3d --tiny --seeds 0-3 --out samples/
  cmdbench sample tiny-unet3d --tiny --seeds 0,5 --prompt "a red car" --steps 8 --out samples/
  cmdbench sample tiny-unet3d-class --tiny --seeds 0-1 --label 3 --out samples/
"""


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    """Generator and sampling flags shared by ``sample`` and ``bench``."""
    parser.add_argument("--seeds", help="seed range, one video per seed, e.g. 0-7 or 0,3,5-9")
    parser.add_argument("--tiny", action="store_true", default=None, help="random-weight miniature (CPU tests)")
    parser.add_argument("--checkpoint", help="local checkpoint path or hub id (default: random weights)")
    parser.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                        help="text prompt, repeatable; cycled over seeds (default: the generator's eval prompts)")
    parser.add_argument("--label", action="append", dest="labels", type=int, metavar="INT",
                        help="class label, repeatable; cycled over seeds (default: seed %% num_classes)")
    parser.add_argument("--frames", type=int, dest="num_frames", help="frames per video (default: generator's)")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--steps", type=int, help="sampling steps (default: generator's)")
    parser.add_argument("--guidance", type=float, dest="guidance_scale", help="classifier-free guidance scale")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="videos per sample() call (default 1)")
    parser.add_argument("--device", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=DTYPES, help="compute dtype (default float32)")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sample", help="sample videos for seeds; write mp4s and a frame grid",
        description="Sample one video per seed with a registered generator; write <out>/seed-NNNNNN.mp4 "
                    "and the frame grid <out>-grid.png beside the folder (rows = seeds).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("generator", help="registered generator name (see `cmdbench list generators`)")
    add_generation_args(parser)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--grid", type=Path, default=None,
                        help="frame-grid PNG (default: <out>-grid.png beside the folder, so the folder holds only "
                             "videos)")
    add_progress_argument(parser)
    parser.set_defaults(func=run)
    return parser


def grid_path(out: Path, grid: Path | None = None) -> Path:
    """``grid`` or ``<out>-grid.png`` beside the video folder ``out`` (outside it: the folder stays videos only)."""
    if grid is not None:
        return grid
    out = out.resolve()
    return out.with_name(f"{out.name}-grid.png")


def run(args: argparse.Namespace) -> int:
    import torch

    from cmdbench.bench.runner import conditions_for, resolve
    from cmdbench.commands.progress import progress_bar, progress_enabled
    from cmdbench.config import BenchConfig, SamplingConfig
    from cmdbench.interfaces import GeneratorSpec, check_device
    from cmdbench.registry import GENERATORS, load_plugins
    from cmdbench.seeding import make_generators, parse_seeds
    from cmdbench.video import save_frame_grid, write_mp4

    check_device(args.device or "cpu", what="--device")
    load_plugins()
    factory = GENERATORS.get(args.generator)
    sampling = SamplingConfig(**{k: getattr(args, k) for k in ("num_frames", "height", "width", "steps",
                                                               "guidance_scale") if getattr(args, k) is not None},
                              batch_size=args.batch_size or 1)
    cfg = BenchConfig(generator=args.generator, seeds=args.seeds or "0-3", sampling=sampling,
                      checkpoint=args.checkpoint, tiny=bool(args.tiny), device=args.device or "cpu",
                      dtype=args.dtype or "float32", prompts=tuple(args.prompts) if args.prompts else None,
                      labels=tuple(args.labels) if args.labels else None)
    seeds = parse_seeds(cfg.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    gen = factory(GeneratorSpec(checkpoint=cfg.checkpoint, device=cfg.device, dtype=cfg.dtype, tiny=cfg.tiny))
    res = resolve(cfg, gen)
    settings = {"num_frames": res.num_frames, "height": res.height, "width": res.width, "steps": res.steps,
                "guidance_scale": res.guidance_scale}
    videos = []
    bar = progress_bar(total=len(seeds), desc=f"sample {args.generator}", unit="video",
                       enabled=progress_enabled(args))
    for start in range(0, len(seeds), res.batch_size):
        idx = list(range(start, min(start + res.batch_size, len(seeds))))
        batch = gen.sample(**conditions_for(res, seeds, idx), **settings,
                           generator=make_generators([seeds[i] for i in idx]))
        for j, i in enumerate(idx):
            write_mp4(args.out / f"seed-{seeds[i]:06d}.mp4", batch[j], fps=args.fps)
        videos.append(batch)
        bar.update(len(idx))
    bar.close()
    grid = save_frame_grid(grid_path(args.out, args.grid), torch.cat(videos))
    print(f"wrote {len(seeds)} videos ({res.num_frames}x{res.height}x{res.width}, {res.steps} steps) and {grid}")
    return 0
