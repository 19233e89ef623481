"""``cmdbench train {autoencoder,content,motion} --config CFG.json``: train one stage of CMD;
``cmdbench train assemble --autoencoder DIR --content DIR --motion DIR --out OUT``: join three finished
stages into one sampling pipeline folder (``cmdbench sample PRESET --checkpoint OUT``).

One process trains on one device; ``accelerate launch -m cmdbench train ...`` (or ``torchrun
--nproc_per_node N -m cmdbench train ...``; on CPUs add ``ACCELERATE_USE_CPU=1`` for gloo) spreads it
over GPUs, CPU processes and nodes. A run restarted with the same config and ``output_dir`` resumes from
its newest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

STAGES = ("autoencoder", "content", "motion")  # == cmdbench.cmd.training.STAGES (imported lazily: heavy)
EXAMPLE = {
    "stage": "motion", "preset": "cmd-ucf101-64", "dataset": "ucf101", "data_dir": "/data/UCF-101",
    "output_dir": "runs/ucf101-motion", "autoencoder": "runs/ucf101-ae",
    "batch_size": 32, "global_batch_size": 256, "max_steps": 400000, "mixed_precision": "bf16",
    "clips_per_video": 4, "num_workers": 4, "precompute_latents": True,
}
EPILOG = """examples:
  cmdbench train autoencoder --config ae.json
  cmdbench train content --config content.json --max-steps 200000
  cmdbench train motion --config motion.json
  cmdbench train assemble --autoencoder runs/ae --content runs/content --motion runs/motion --out runs/cmd
  cmdbench sample cmd-ucf101-64 --checkpoint runs/cmd --seeds 0-7 --out samples/
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a CMD stage (autoencoder, content model, motion model) with accelerate; assemble the stages",
        description="Train one CMD stage from a JSON TrainConfig, or assemble three trained stages.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage in STAGES:
        p = stages.add_parser(
            stage, help=f"train the {stage} stage",
            description=(
                f"Train the {stage} stage from a JSON TrainConfig (see cmdbench.cmd.training.TrainConfig). "
                "Command-line options override the file. Example config:\n" + json.dumps(EXAMPLE, indent=2)
            ),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", required=True, metavar="CFG.json", help="TrainConfig fields as JSON")
        p.add_argument("--output-dir", help="override output_dir")
        p.add_argument("--max-steps", type=int, help="override max_steps (optimizer steps)")
        p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), help="override mixed_precision")
        p.add_argument("--precompute-latents", action="store_true", default=None,
                       help="encode the dataset once with the frozen autoencoder (diffusion stages)")
        p.add_argument("--tiny", action="store_true", default=None, help="train the preset's random miniature")
        p.set_defaults(func=run)
    a = stages.add_parser(
        "assemble", help="join three finished stages into a CMDPipeline folder for sampling",
        description=(
            "Write a CMDPipeline.save_pretrained folder from a finished autoencoder, content and motion run "
            "(each DIR: the run's output_dir or its final/<component> folder): EMA weights by default, the "
            "frozen parts the diffusion stages trained with, the preset's DDIM schedulers and "
            "cmdbench_assembly.json. Refuses stages of different presets, autoencoders or frozen parts."
        ),
    )
    a.add_argument("--autoencoder", required=True, metavar="DIR", help="the autoencoder run")
    a.add_argument("--content", required=True, metavar="DIR", help="the content-model run")
    a.add_argument("--motion", required=True, metavar="DIR", help="the motion-model run")
    a.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder to write")
    a.add_argument("--raw", action="store_true", help="the diffusion stages' raw weights instead of their EMA")
    a.set_defaults(func=run_assemble)
    return parser


def build_dataset(cfg):
    """The training batch source of ``cfg``: fresh random windows of the listed videos
    (:func:`cmdbench.data.train_clips.build_train_clips`, nothing opened before step 0) behind the
    DataLoader of :class:`~cmdbench.data.train_clips.ClipBatchSource`, cut at the preset's clip length and
    frame size. A dataset registered by a plugin gives its fixed evaluation clips (one per video) instead."""
    from cmdbench.cmd.training import TrainConfigError
    from cmdbench.data.policy import DatasetError
    from cmdbench.data.train_clips import LISTING_OPTIONS, ClipBatchSource, TrainClipSpec, build_train_clips

    preset = cfg.resolved_preset()
    if not cfg.data_dir:
        raise TrainConfigError("TrainConfig.data_dir is empty; set the dataset root folder")
    size = (preset.height, preset.width)
    if cfg.dataset not in LISTING_OPTIONS:
        return _plugin_dataset(cfg, size)
    spec = TrainClipSpec(num_frames=preset.num_frames, size=size, stride=cfg.stride, fps=cfg.fps,
                         clips_per_video=cfg.clips_per_video, seed=cfg.seed, policy=cfg.policy)
    try:
        dataset = build_train_clips(cfg.dataset, cfg.data_dir, spec, **cfg.dataset_options)
    except DatasetError:
        raise
    except (TypeError, ValueError) as err:  # unknown or malformed listing options
        raise TrainConfigError(f"TrainConfig.dataset_options for {cfg.dataset!r}: {err}") from None
    pin = cfg.pin_memory if cfg.pin_memory is not None else _cuda()
    return ClipBatchSource(dataset, num_workers=cfg.num_workers, prefetch_factor=cfg.prefetch_factor, pin_memory=pin)


def _plugin_dataset(cfg, size: tuple[int, int]):
    import cmdbench.data.datasets  # noqa: F401  (registers the built-in datasets)
    from cmdbench.cmd.training import TrainConfigError
    from cmdbench.data.clips import ClipSpec
    from cmdbench.registry import DATASETS, load_plugins

    if cfg.dataset not in DATASETS:
        load_plugins()  # a dataset registered by a plugin
    if cfg.dataset not in DATASETS:
        raise TrainConfigError(f"TrainConfig.dataset={cfg.dataset!r} is not known; training reads folder, ucf101 "
                               f"and webvid, or a dataset a plugin registers ({sorted(DATASETS)})")
    if (cfg.stride, cfg.fps, cfg.clips_per_video) != (1, None, 1):
        raise TrainConfigError(f"dataset {cfg.dataset!r} comes from a plugin and gives one fixed clip per video: "
                               "stride, fps and clips_per_video apply to folder, ucf101 and webvid only")
    logging.getLogger(__name__).warning(
        "dataset %s (a plugin's) gives one fixed clip per video, the same every epoch (folder, ucf101 and webvid "
        "draw a fresh window on every access)", cfg.dataset)
    clip = ClipSpec(num_frames=cfg.resolved_preset().num_frames, size=size, seed=cfg.seed)
    policy = {"policy": cfg.policy} if cfg.policy != "strict" else {}
    return DATASETS.get(cfg.dataset)(cfg.data_dir, clip=clip, **policy, **cfg.dataset_options)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args: argparse.Namespace) -> int:
    from cmdbench.cmd.training import TrainConfig, TrainConfigError, describe_steps, train

    data = json.loads(Path(args.config).read_text()) if Path(args.config).is_file() else None
    if data is None:
        raise FileNotFoundError(f"training config {args.config} does not exist")
    if data.get("stage", args.stage) != args.stage:
        raise TrainConfigError(f"{args.config} is for stage {data['stage']!r}, not {args.stage!r}")
    data["stage"] = args.stage
    overrides = {"output_dir": args.output_dir, "max_steps": args.max_steps, "mixed_precision": args.mixed_precision,
                 "precompute_latents": args.precompute_latents, "tiny": args.tiny}
    data.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(data, args.config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dataset = build_dataset(cfg)
    main_process = os.environ.get("RANK", "0") == "0"  # set by torchrun / accelerate launch
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if main_process:
        report = getattr(getattr(dataset, "dataset", dataset), "report", None)
        print(f"cmdbench train {cfg.stage}: preset {cfg.preset}{' (tiny)' if cfg.tiny else ''}, "
              f"{len(dataset)} clips per epoch, {describe_steps(cfg, len(dataset), world)}")
        if report is not None:
            print(f"cmdbench train {cfg.stage}: data {report.summary()}")
            for item in report.skipped:
                print(f"cmdbench train {cfg.stage}: skipped {item.source} ({item.stage}): {item.reason}")
    final = train(cfg, dataset)
    if main_process:
        print(f"cmdbench train {cfg.stage}: final EMA weights in {final}")
        print(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k in ("stage", "output_dir")}))
    return 0


def run_assemble(args: argparse.Namespace) -> int:
    from cmdbench.cmd.assemble import assemble, read_assembly

    out = assemble(args.autoencoder, args.content, args.motion, args.out, raw=args.raw)
    meta = read_assembly(out)
    steps = ", ".join(f"{stage} {info['steps']} steps" for stage, info in meta["stages"].items())
    print(f"cmdbench train assemble: {meta['preset']}{' (tiny)' if meta['tiny'] else ''} pipeline "
          f"({meta['weights']} weights; {steps}) in {out}")
    print(f"sample it with: cmdbench sample {meta['preset']} --checkpoint {out} --seeds 0-3 --out samples/")
    return 0
