"""Write a leave-one-source-out TXL-PBC manifest: the train and val rows of three sources.

Usage::

    blastscope import ../shared/data/txl-pbc --out runs/txl/manifest.csv
    python scripts/loso_manifest.py runs/txl/manifest.csv --held-out Raabin-WBC --out runs/txl/loso-raabin.csv

The held-out source's images (all splits) and the other sources' test rows are left out; its
``test`` split is what ``scripts/bench_finder.py --detector SOURCE=best.pt`` scores.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from blastscope.annotate.bench import TXL_PBC_SOURCES
from blastscope.data.manifest import read_manifest, write_manifest


def main(argv=None) -> int:
    repo = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest", type=Path, help="manifest of 'blastscope import' on the TXL-PBC folder")
    p.add_argument("--held-out", required=True, choices=TXL_PBC_SOURCES)
    p.add_argument(
        "--root", type=Path, default=Path(os.environ.get("BLASTSCOPE_SHARED_DATA", repo.parent / "shared" / "data")) / "txl-pbc"
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    with open(args.root / "sources.csv", newline="", encoding="utf-8") as f:
        source = {Path(r["image"]).name: r["source"] for r in csv.DictReader(f)}
    df = read_manifest(args.manifest)
    keep = [
        source.get(Path(p).name) not in (None, args.held_out) and s in ("train", "val") for p, s in zip(df["image"], df["split"])
    ]
    out = df[keep].reset_index(drop=True)
    write_manifest(out, args.out)
    print(
        f"{args.out}: {len(out)} rows (train {int((out['split'] == 'train').sum())}, val "
        f"{int((out['split'] == 'val').sum())}) without {args.held_out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
