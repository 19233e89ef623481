"""``cmdbench train {autoencoder,content,motion} --config CFG.json``: train one stage of CMD.

One process trains on one device; ``accelerate launch -m cmdbench train ...`` (or ``torchrun
--nproc_per_node N -m cmdbench train ...``; on CPUs add ``ACCELERATE_USE_CPU=1`` for gloo) spreads it
over GPUs, CPU processes and nodes. A run restarted with the same config and ``output_dir`` resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

from cmdbench.cmd.training import STAGES, TrainConfig, TrainConfigError, describe_steps, train
from cmdbench.data.clips import ClipSpec
from cmdbench.registry import DATASETS, load_plugins

EXAMPLE = {
    "stage": "motion", "preset": "cmd-ucf101-64", "dataset": "ucf101", "data_dir": "/data/UCF-101",
    "output_dir": "runs/ucf101-motion", "autoencoder": "runs/ucf101-ae/final/autoencoder",
    "batch_size": 32, "max_steps": 400000, "mixed_precision": "bf16", "precompute_latents": True,
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a CMD stage (autoencoder, content model, motion model) with accelerate",
        description=(
            "Train one CMD stage from a JSON TrainConfig (see cmdbench.cmd.training.TrainConfig). "
            "Command-line options override the file. Example config:\n" + json.dumps(EXAMPLE, indent=2)
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--config", required=True, metavar="CFG.json", help="TrainConfig fields as JSON")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--max-steps", type=int, help="override max_steps")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), help="override mixed_precision")
    parser.add_argument("--precompute-latents", action="store_true", default=None,
                        help="encode the dataset once with the frozen autoencoder (diffusion stages)")
    parser.add_argument("--tiny", action="store_true", default=None, help="train the preset's random miniature")
    parser.set_defaults(func=run)
    return parser


def build_dataset(cfg: TrainConfig):
    """The configured dataset at the preset's clip length and frame size."""
    load_plugins()
    preset = cfg.resolved_preset()
    if not cfg.data_dir:
        raise TrainConfigError("TrainConfig.data_dir is empty; set the dataset root folder")
    clip = ClipSpec(num_frames=preset.num_frames, size=(preset.height, preset.width), seed=cfg.seed)
    return DATASETS.get(cfg.dataset)(cfg.data_dir, clip=clip, **cfg.dataset_options)


def run(args: argparse.Namespace) -> int:
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
    if main_process:
        print(f"cmdbench train {cfg.stage}: preset {cfg.preset}{' (tiny)' if cfg.tiny else ''}, "
              f"{len(dataset)} clips, per process {describe_steps(cfg, len(dataset))}")
    final = train(cfg, dataset)
    if main_process:
        print(f"cmdbench train {cfg.stage}: final EMA weights in {final}")
        print(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k in ("stage", "output_dir")}))
    return 0
