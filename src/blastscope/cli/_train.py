"""Train a detector or a cell classifier on a manifest; checkpoints and metrics go to a run folder.

Settings: the packaged defaults (blastscope/configs/default.yaml), then --config FILE, then the
flags below. The resolved settings are saved as RUN/config.yaml. The packaged defaults suit
detection; with --task classify, the settings not given in --config or on the command line are
the classifier's: --model mobilenet_v2 --imgsz 160 --batch 32 --epochs 12 --optimizer adamw
--lr 0.001 --weight-decay 0.01 (momentum 0.9).

Examples:
  blastscope train --task detect --data data/manifest.csv --model yolov3-tiny --epochs 25 --imgsz 416 --out runs/yolo
  blastscope train --data cells.csv --auto-boxes --no-augment --out runs/paper     # the paper's setting
  blastscope train --resume runs/yolo                                                # after Ctrl-C or a crash
  blastscope train --task classify --data pbc.csv --model mobilenet_v2 --epochs 12 --out runs/pbc

Classification trains on square crops of the annotated cells (one per box, labelled with the box's
class; margin 0.1 of the box's longer side), or on whole images for rows without annotation
(labelled with the row's label), cut as 'evaluate' and 'predict --classifier' cut them.

Several processes (DistributedDataParallel; gloo on CPU, NCCL on GPUs; --batch is per process):
  torchrun --nproc-per-node 2 -m blastscope train --data data/manifest.csv --out runs/ddp
  blastscope train --resume runs/ddp            # a DDP run resumes in one process, or in several

The run folder holds metrics.csv (a row per epoch), epoch_NNN.pt, best.pt (best validation
mAP@0.5, VOC, for detectors; weighted F1 for classifiers), last.pt (for --resume), config.yaml and
splits.csv (the train/val split used).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from blastscope._problems import BlastscopeError

HELP = "train a detector or a cell classifier on a manifest (checkpoints, metrics.csv, resume)"

#: settings that may change when a run is resumed; the rest must stay as the run started


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # every default is None: only flags given on the command line override the config
    a = parser.add_argument
    a("--task", choices=["detect", "classify"], default=None, help="what to train (default: detect)")
    a("--data", default=None, metavar="CSV", help="manifest CSV (from 'blastscope import' / 'annotate')")
    a(
        "--model",
        default=None,
        help="model name: yolov3-tiny (detect), mobilenet_v2 or efficientnet_lite0 (classify) "
        "(default: yolov3-tiny; classify: mobilenet_v2)",
    )
    a("--epochs", type=int, default=None, help="epochs (default: 25; classify: 12)")
    a(
        "--imgsz",
        type=int,
        default=None,
        help="square input size in pixels; a multiple of 32 for detectors (default: 416; classify: 160)",
    )
    a("--batch", type=int, default=None, help="images per batch (default: 8; classify: 32)")
    a("--out", default=None, metavar="DIR", help="run folder (default: runs/train)")
    a("--config", default=None, metavar="YAML", help="settings file (keys of blastscope/configs/default.yaml)")
    a("--seed", type=int, default=None, help="random seed; the same seed gives the same metrics on CPU (default: 0)")
    a("--lr", type=float, default=None, help="peak learning rate (default: 0.01; classify: 0.001)")
    a("--optimizer", choices=["sgd", "adamw"], default=None, help="optimizer (default: sgd; classify: adamw)")
    a("--weight-decay", type=float, default=None, help="weight decay (default: 0.0005; classify: 0.01)")
    a("--workers", type=int, default=None, help="data-loading processes (default: 0)")
    a(
        "--cache",
        choices=("auto", "ram", "none"),
        default=None,
        help="keep the decoded images in memory for the run: auto (when they fit in a quarter of the free memory, "
        "at most 8 GiB; the default), ram (always) or none",
    )
    a("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    a(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="bf16: forward pass and loss under bf16 autocast, weights and optimizer in fp32; auto: bf16 where the "
        "CPU (avx512_bf16 / amx_bf16) or GPU has it natively, else fp32 (default: auto)",
    )
    a(
        "--channels-last",
        dest="channels_last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the model and its inputs in channels-last memory (default: on with bf16, off with fp32)",
    )
    a(
        "--val-fraction",
        type=float,
        default=None,
        help="val share carved from train when the manifest has no val rows (default: 0.1)",
    )
    a("--patience", type=int, default=None, help="stop after N epochs without improvement (default: 0, never)")
    a(
        "--cells",
        choices=("finder", "whole"),
        default=None,
        help="classify: cut images without a box around the white cell the stain finder finds (default), or take "
        "them whole; segmented cells on black are taken whole either way",
    )
    a(
        "--stain-norm",
        choices=("none", "reinhard"),
        default=None,
        help="classify: Reinhard stain normalisation of every crop, in training and at prediction, to the median LAB "
        "statistics of the training cells (recorded in the checkpoint; default none)",
    )
    a(
        "--save-period",
        type=int,
        default=None,
        metavar="N",
        help="also keep every Nth epoch's weights as epoch_NNN.pt (default 0: only best.pt and last.pt)",
    )
    a(
        "--freeze",
        type=int,
        default=None,
        metavar="N",
        help="detection: keep the first N darknet convolutions frozen (COCO weights) for the whole run (default 0)",
    )
    a("--freeze-backbone-epochs", type=int, default=None, metavar="N", help="train only neck and heads for the first N epochs")
    a(
        "--balance",
        choices=["none", "sampler", "loss"],
        default=None,
        help="classify: counter class imbalance by a class-balanced sampler of the training cells (when the "
        "largest class has over 1.2x the cells of the smallest), a class-weighted loss, or not at all (default: sampler)",
    )
    a(
        "--no-augment",
        dest="augment",
        action="store_const",
        const=False,
        default=None,
        help="no augmentation (the paper's setting)",
    )
    a(
        "--auto-boxes",
        dest="auto_boxes",
        action="store_const",
        const=True,
        default=None,
        help="box single cells on black on the fly (C-NMC)",
    )
    a("--no-pretrained", dest="pretrained", action="store_const", const=False, default=None, help="start from random weights")
    a("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last.pt")
    a(
        "--init",
        default=None,
        metavar="CKPT",
        help="start from the weights of a blastscope checkpoint (few-shot calibration to a new lab: fine-tune on a "
        "small labelled sample; its architecture, task and input size are the defaults)",
    )
    a(
        "--exist-ok",
        action="store_true",
        help="start a new run in an --out folder that holds checkpoints (they are replaced once the new run has written its first checkpoint)",
    )
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from blastscope.engine.config import TrainConfig
    from blastscope.engine.resolve import resolve_config, resume_config
    from blastscope.engine.trainer import train

    settings = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if args.resume:
        if args.config:
            raise BlastscopeError(
                f"--config {args.config}: a resumed run keeps its own {Path(args.resume) / 'config.yaml'}; drop --config"
            )
        config = resume_config(args.resume, **settings)
    else:
        config = resolve_config(args.config, **settings)
    result = train(config, resume=bool(args.resume), exist_ok=args.exist_ok, progress=args.progress)
    if os.environ.get("RANK", "0") not in ("", "0"):  # one of several torchrun processes: process 0 reports
        return 130 if result.interrupted else 0
    if result.best_epoch is not None:
        row = result.best_row
        keys = [result.best_metric] + [
            k for k in row if k not in ("epoch", "lr", "seconds", result.best_metric) and not k.startswith("train_")
        ]
        shown = ", ".join(f"{k} {row[k]:.4f}" for k in keys if k in row)
        print(f"best epoch {result.best_epoch}: {shown} -> {result.run_dir / 'best.pt'}")
    if result.interrupted:
        return 130
    print(f"done: {result.epochs_done} epochs in {result.run_dir} (metrics.csv, best.pt, last.pt)")
    if config.init and result.best_epoch is not None and os.environ.get("RANK", "0") == "0":
        from blastscope.engine.finetune import compare_init, comparison_markdown

        print(comparison_markdown(compare_init(result.run_dir, config.init, device=config.device)), end="")
        print(f"written {result.run_dir / 'init_comparison.md'} and init_comparison.json")
    return 0
