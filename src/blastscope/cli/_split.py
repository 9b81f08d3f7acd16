"""Fill the manifest's 'split' column (train / val / test) and print the per-split counts.

protocols:
  patient  (default) whole patients go to train, val or test, stratified by class, reproducible
           with --seed; rows that already have a split (C-NMC's preliminary test set 'test', the
           unlabeled final test set) keep it unless --resplit, and a patient that already has rows
           in a kept split gets its new rows there too. --val and --test are fractions of the
           images being assigned.
  paper    the paper's protocol: a balanced random subset of --n-per-class images per class split
           80/20 at image level (120+120 train, 30+30 val by default). The same patient ends up on
           both sides, so its validation scores overstate accuracy on new patients (a warning says
           how many patients leak in this draw).

--folds K adds a 'cv_fold' column (0..K-1): patient-grouped, class-stratified K-fold over the
labelled rows outside the test split. The protocol and seed are recorded in the manifest's sidecar
(<name>.meta.yaml, key 'split').

examples:
  blastscope split data/cnmc.csv
  blastscope split data/cnmc.csv --val 0.2 --test 0 --folds 5 --seed 1
  blastscope split data/cnmc.csv --protocol paper --out data/cnmc_paper.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "fill the split column: by patient (default), the paper's image-level 80/20, or K folds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST", type=Path, help="manifest CSV (from 'blastscope import')")
    parser.add_argument(
        "--protocol",
        choices=["patient", "paper"],
        default="patient",
        help="patient-disjoint split (default) or the paper's image-level protocol",
    )
    parser.add_argument("--val", type=float, default=0.15, help="patient protocol: fraction of images for val (0.15)")
    parser.add_argument("--test", type=float, default=0.15, help="patient protocol: fraction of images for test (0.15)")
    parser.add_argument(
        "--n-per-class", type=int, default=150, help="paper protocol: images drawn per class (150: 120 train + 30 val)"
    )
    parser.add_argument(
        "--folds", type=int, metavar="K", help="also assign patient-grouped K-fold cross-validation folds (column cv_fold)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--resplit", action="store_true", help="ignore existing splits of labelled rows and split them all again")
    parser.add_argument(
        "--out", type=Path, metavar="CSV", help="write here instead of rewriting MANIFEST in place (its sidecar metadata is kept)"
    )


def run(args: argparse.Namespace) -> int:
    import warnings

    from blastscope._problems import BlastscopeError
    from blastscope.data import splits
    from blastscope.data.manifest import read_manifest, write_manifest

    if args.folds is not None and args.protocol == "paper":
        raise BlastscopeError(f"{args.manifest}: --folds works with --protocol patient only; drop one of them")
    df = read_manifest(args.manifest)
    record: dict = {"protocol": args.protocol, "seed": args.seed}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", splits.SplitWarning)
            if args.protocol == "paper":
                df, warning = splits.paper_split(df, n_per_class=args.n_per_class, seed=args.seed)
                warnings.warn(warning, splits.SplitWarning, stacklevel=1)
                record.update(n_per_class=args.n_per_class, train_fraction=0.8, image_level=True)
            else:
                df = splits.patient_split(df, val=args.val, test=args.test, seed=args.seed, keep_existing=not args.resplit)
                record.update(val=args.val, test=args.test, kept_existing=not args.resplit)
            if args.folds is not None:
                df = splits.patient_kfold(df, args.folds, seed=args.seed)
                record["folds"] = args.folds
    except ValueError as e:  # bad fractions or fold counts
        raise BlastscopeError(f"{args.manifest}: {e}; check --val, --test and --folds") from None
    for w in caught:
        if issubclass(w.category, splits.SplitWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    df.attrs["split"] = record
    out = write_manifest(df, args.out or args.manifest)
    print(splits.split_summary(df))
    if args.folds is not None:
        folds = df.loc[df["cv_fold"] != ""]
        has_pid = (folds["patient_id"] != "").any()
        if has_pid:
            per_fold = folds.groupby("cv_fold").agg(images=("image", "size"), patients=("patient_id", "nunique"))
            kind = "patient-grouped folds"
        else:  # "patients 1" per fold would be wrong: every image is its own group
            per_fold = folds.groupby("cv_fold").agg(images=("image", "size"))
            kind = "folds (no patient ids: grouped by image)"
        print(f"\n{args.folds} {kind} (column cv_fold):\n{per_fold.to_string()}")
        outside = df.loc[df["cv_fold"] == "", "split"].replace("", "(none)")
        if len(outside):
            where = ", ".join(f"{n} {s}" for s, n in outside.value_counts().sort_index().items())
            print(
                f"rows without a fold (cv_fold empty): {len(outside)} ({where}); the held-out test split and "
                "unlabelled rows stay out of cross-validation, for a final check after it"
            )
        else:
            print("every row has a fold (no held-out test split)")
    leaking = splits.patients_in_several_splits(df)
    if args.protocol == "patient" and not (df["patient_id"] != "").any():
        print("patient-disjoint: cannot be checked (no patient ids)")
    elif args.protocol == "patient":
        print(
            "patient-disjoint: yes"
            if not leaking
            else f"patient-disjoint: NO, {len(leaking)} patients in several splits ({', '.join(leaking[:10])})"
        )
    print(f"wrote {out}")
    return 0
