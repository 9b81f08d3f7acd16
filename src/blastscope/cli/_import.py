"""Index a dataset into one manifest CSV (image, label, patient_id, fold, split, annotation, width,
height, sha256, source).

The layout is detected (or given with --layout):
  cnmc    the C-NMC 2019 tree: training_data/fold_k/{all,hem}, the preliminary test images with
          their label CSV (split 'test'), the unlabeled final test images (split 'unlabeled')
  folder  one subfolder per class (ALL/, HEM/, any names), images anywhere below
  voc     Annotations/*.xml + JPEGImages/ (ImageSets/Main/{train,val,test}.txt fill 'split')
  yolo    images/ + labels/*.txt (class names from data.yaml, classes.txt or --names)
  coco    a .json file (or annotations/*.json)

Every image is fully decoded and hashed; corrupt, truncated or missing files and paths leading out
of the dataset folder are reported one line each and left out. The exit status is 0 when usable
images were imported, 2 when none were (or at the first problem with --strict), 1 when --verify
finds missing or changed files.

examples:
  blastscope import ../shared/data/cnmc-sample/C-NMC_Leukemia --out data/cnmc.csv
  blastscope import ~/C-NMC --out cnmc.csv --verify ../shared/data/cnmc-manifest.csv
  blastscope import my_cells/ --out cells.csv --patient-regex '(?P<patient>P\\d+)_'
"""

from __future__ import annotations

import argparse
import sys

HELP = "index a dataset (C-NMC, class folders, VOC, YOLO, COCO) into a manifest CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="dataset folder (or a COCO .json file)")
    parser.add_argument("--out", required=True, metavar="CSV", help="manifest CSV to write")
    parser.add_argument("--layout", choices=["cnmc", "folder", "voc", "yolo", "coco"], help="dataset layout (default: detected)")
    parser.add_argument(
        "--names", metavar="A,B,C", help="class names in index order (YOLO class ids; class order of the folder layout)"
    )
    parser.add_argument(
        "--patient-regex",
        metavar="RE",
        help="folder layout: regex with a named group 'patient' searched in each image path "
        "below SRC, e.g. '(?P<patient>P\\d+)_' (default: C-NMC file names UID_<patient>_...)",
    )
    parser.add_argument(
        "--verify",
        metavar="REF_CSV",
        help="reference manifest (path,lfs_sha256 or image,sha256) to check the files' sha256 "
        "against, e.g. ../shared/data/cnmc-manifest.csv",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first problem instead of skipping the file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out manifest")
    parser.add_argument(
        "--no-follow-links",
        dest="follow_links",
        action="store_false",
        help="refuse images and folders that are links to places outside the dataset folder "
        "(default: links you made are followed, as torchvision's ImageFolder does)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def summary_tables(df) -> tuple[str, str]:
    """Text tables: images per split (and fold) x label, and patients per split x label."""
    import pandas as pd

    label = df["label"].replace("", "(none)")
    split = df["split"].replace("", "(none)")
    fold = ("fold " + df["fold"]).where(df["fold"] != "", "")
    group = (df["split"] + " " + fold).str.strip().replace("", "(none)")
    images = pd.crosstab(group.rename("split"), label.rename("images"), margins=True, margins_name="total")
    has_patient = df["patient_id"] != ""
    if has_patient.any():
        patients = (
            df[has_patient]
            .assign(split=split[has_patient], label=label[has_patient])
            .pivot_table(index="split", columns="label", values="patient_id", aggfunc="nunique", fill_value=0)
        )
        patients.columns.name = "patients"
        patients_text = patients.to_string()
    else:
        patients_text = "patients: no patient ids in this dataset (folder layout: see --patient-regex)"
    return images.to_string(), patients_text


def run(args: argparse.Namespace) -> int:
    from blastscope._atomic import refuse_overwrite
    from blastscope._problems import ProblemLog
    from blastscope.data.importer import import_dataset, verify_manifest
    from blastscope.data.manifest import write_manifest

    refuse_overwrite(args.out, args.overwrite)
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    log = ProblemLog(strict=args.strict)
    df = import_dataset(
        args.src,
        args.layout,
        names=names,
        log=log,
        progress=not args.no_progress,
        patient_regex=args.patient_regex,
        follow_links=args.follow_links,
    )
    out = write_manifest(df, args.out)

    images, patients = summary_tables(df)
    print(
        f"imported {len(df)} images from {df.attrs['source_root']} (layout {df.attrs['layout']}, "
        f"classes {', '.join(df.attrs['classes'])})"
    )
    print(images)
    print(patients)
    print(f"manifest: {out}")
    if len(log):
        print(f"{len(log)} files skipped, listed above as 'skipped:'", file=sys.stderr)
    if args.verify:
        report = verify_manifest(df, args.verify, df.attrs["source_root"])
        print(report.summary())
        if not report.ok:
            return 1
    return 0
