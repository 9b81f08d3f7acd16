"""Make a SYNTHETIC C-NMC-like dataset for tests and demos (no download needed).

Writes OUT/synthetic_C-NMC/training_data/fold_{0,1,2}/{all,hem}/UID_<patient>_<image>_<cell>_<all|hem>.bmp
(one cell on black per image, synthetic patient ids syn1.. for ALL and synH1.. for HEM, each
patient in one fold), a README.txt and OUT/synthetic_manifest.csv. The classes differ by nuclear
morphology; stain and cell size vary per patient independently of the class. With --smears N it
also writes OUT/synthetic_smears, a Pascal VOC tree of N multi-cell smear images with boxes.

Nothing here is real patient data: every number computed on it is a number on synthetic data.
Re-running replaces the synthetic folders it made before.

examples:
  blastscope synth --out data/synthetic
  blastscope synth --out data/synthetic --n-per-class 60 --patients 6 --smears 20
  blastscope import data/synthetic/synthetic_C-NMC --out data/synthetic.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "make a synthetic C-NMC-like dataset (and optional multi-cell smears) for tests and demos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--n-per-class", type=int, default=150, help="images per class (default 150)")
    parser.add_argument("--patients", type=int, default=10, help="synthetic patients per class (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=450, help="image width and height in pixels (default 450)")
    parser.add_argument(
        "--smears", type=int, default=0, metavar="N", help="also write N synthetic multi-cell smear images with VOC boxes"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace output folders that blastscope synth did not make")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from blastscope._problems import BlastscopeError
    from blastscope.data.synth import generate_dataset, generate_smears

    for flag, value, low in (
        ("--n-per-class", args.n_per_class, 1),
        ("--patients", args.patients, 1),
        ("--size", args.size, 32),
        ("--smears", args.smears, 0),
    ):
        if value < low:
            raise BlastscopeError(f"{args.out}: {flag} {value} is too small; use {low} or more")
    if args.patients > args.n_per_class:
        raise BlastscopeError(
            f"{args.out}: --patients {args.patients} is more than --n-per-class {args.n_per_class}; "
            "every synthetic patient needs at least one image"
        )
    manifest = generate_dataset(
        args.out,
        n_per_class=args.n_per_class,
        n_patients_per_class=args.patients,
        seed=args.seed,
        size=args.size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    n = 2 * args.n_per_class
    print(
        f"wrote {n} SYNTHETIC images ({args.n_per_class} ALL, {args.n_per_class} HEM) of {2 * args.patients} "
        f"synthetic patients to {manifest.parent / 'synthetic_C-NMC'}"
    )
    print(f"wrote the manifest {manifest}")
    if args.smears:
        root = generate_smears(args.out, args.smears, args.seed, overwrite=args.overwrite)
        print(f"wrote {args.smears} SYNTHETIC smear images with VOC boxes to {root}")
    print("these images are synthetic (not real cells): numbers computed on them must say so")
    return 0
