"""Adapt a cell classifier to a new lab from its unlabelled images (AdaBN; optionally TENT and a class-prior correction).

  blastscope adapt runs/pbc/best.pt --images NEW_LAB/ --out runs/pbc/adapted.pt --weight 0.5

Every BatchNorm layer's running mean and variance become (1 - w) x the training lab's + w x the new
lab's, measured on the cells of --images (a folder of single-cell images, each taken whole, or a
manifest CSV whose boxes give the cells; labels are not used). --weight 0 keeps the checkpoint,
1 is full AdaBN. The output is a normal classifier checkpoint for 'predict' and 'evaluate', with
the provenance (weight, images, number of cells, the source checkpoint and its sha256) under
"adaptation". Its temperature and threshold are still those of the training lab's validation cells.
--method tent also fits the BatchNorm scales and shifts by entropy minimisation; --prior estimates the
new lab's class frequencies by EM and shifts the probabilities to them.

No free win: re-estimated statistics can lower accuracy where the new lab differs little or has
few cells; measure it (scripts/bench_shifts.py --adapt) before relying on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "adapt a classifier's BatchNorm statistics to a new lab's unlabelled images (AdaBN)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("checkpoint", type=Path, help="classifier checkpoint (.pt) written by 'blastscope train --task classify'")
    a("--images", type=Path, required=True, metavar="DIR|CSV", help="the new lab's cells: a folder of images or a manifest CSV")
    a("--out", type=Path, required=True, metavar="FILE", help="the adapted checkpoint")
    a(
        "--weight",
        type=float,
        required=True,
        help="share of the new lab's statistics in [0, 1]; no default: on the PBC lab-shift benchmark every weight tried "
        "lost on some shift (README), so adaptation is off unless asked for",
    )
    a(
        "--method",
        choices=("adabn", "tent"),
        default="adabn",
        help="adabn: BatchNorm statistics only (default); tent: then fit the BatchNorm scales and shifts by entropy "
        "minimisation on the same cells (Wang et al. 2021)",
    )
    a("--tent-steps", type=int, default=1, help="passes over the cells with --method tent (default 1)")
    a(
        "--tent-lr",
        type=float,
        default=1e-4,
        help="Adam learning rate of --method tent (default 1e-4; 1e-3 collapsed a PBC classifier to one or two classes "
        "on the lab-shift benchmark)",
    )
    a(
        "--prior",
        action="store_true",
        help="also estimate the new lab's class frequencies by EM (Saerens et al. 2002) and shift the calibrated "
        "probabilities to them (stored in the checkpoint's calibration)",
    )
    a("--batch", type=int, default=32, help="cells per batch when measuring (default 32)")
    a("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    a("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    from blastscope.engine.adapt import adapt_checkpoint

    p = adapt_checkpoint(
        args.checkpoint,
        args.images,
        args.out,
        weight=args.weight,
        method=args.method,
        tent_steps=args.tent_steps,
        tent_lr=args.tent_lr,
        prior=args.prior,
        batch=args.batch,
        overwrite=args.overwrite,
        device=args.device,
    )
    extra = f"; TENT {p['tent_steps']} pass(es) at lr {p['tent_lr']:g}" if p["method"] == "tent" else ""
    if "new_prior" in p:
        extra += (
            "; class prior "
            + ", ".join(f"{v:.2f}" for v in p["source_prior"])
            + " -> "
            + ", ".join(f"{v:.2f}" for v in p["new_prior"])
        )
    print(
        f"wrote {args.out}: BatchNorm statistics {1 - p['weight']:.2f} training lab + {p['weight']:.2f} "
        f"new lab ({p['n_cells']} cells of {p['images']}){extra}"
    )
    return 0
