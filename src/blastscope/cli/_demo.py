"""Run the whole pipeline on the embedded default data and print where everything went.

The default data are synthetic C-NMC-like cells made by ``blastscope synth`` (every file and
number from them says "synthetic"), plus the 8 real C-NMC sample images from ``../shared/data``
when that folder is present. Each step is the same command a user would type; the demo prints it
before running it.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

HELP = "run the pipeline end to end on the embedded default (synthetic cells + real C-NMC sample)"

_DEFAULT_SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--shared-data", type=Path, default=_DEFAULT_SHARED, help="folder with the real sample data")
    parser.add_argument("--n-per-class", type=int, default=60, help="synthetic images per class")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs for the demo detector")
    parser.add_argument("--seed", type=int, default=0)


def _step(title: str, argv: list[str]) -> None:
    from blastscope._problems import BlastscopeError
    from blastscope.cli.main import main

    print(f"\n== {title}\n$ blastscope {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    rc = main(argv)
    if rc not in (0, None):
        raise BlastscopeError(f"demo step '{title}' failed with exit status {rc}; see the messages above")
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def run(args: argparse.Namespace) -> int:
    from blastscope.cli.main import COMMANDS

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    synth_dir = out / "synthetic"
    _step("1. make synthetic C-NMC-like cells (SYNTHETIC data)",
          ["synth", "--out", str(synth_dir), "--n-per-class", str(args.n_per_class), "--patients", "6",
           "--seed", str(args.seed)])
    manifest = out / "synthetic_manifest.csv"
    _step("2. import the synthetic tree (C-NMC layout)",
          ["import", str(synth_dir / "synthetic_C-NMC"), "--out", str(manifest), "--overwrite", "--no-progress"])
    _step("3. patient-disjoint split (default protocol)", ["split", str(manifest), "--seed", str(args.seed)])
    ann_dir = out / "annotations"
    _step("4. automatic VOC boxes for every cell", ["annotate", str(manifest), "--out", str(ann_dir), "--no-progress"])
    done = [("synthetic manifest", manifest), ("VOC annotations + annotated manifest", ann_dir)]

    real = args.shared_data / "cnmc-sample" / "C-NMC_Leukemia"
    if real.is_dir():
        real_manifest = out / "cnmc_sample_manifest.csv"
        _step("5. import the 8 real C-NMC sample images",
              ["import", str(real), "--out", str(real_manifest), "--overwrite", "--no-progress"])
        _step("6. automatic VOC boxes for the real sample",
              ["annotate", str(real_manifest), "--out", str(out / "cnmc_sample_annotations"), "--no-progress"])
        done.append(("real C-NMC sample manifest", real_manifest))
    else:
        print(f"\n(real C-NMC sample not found at {real}: skipped; the demo runs on synthetic data alone)")

    if "train" in COMMANDS:
        run_dir = out / "runs" / "synthetic_yolov3-tiny"
        _step("7. transfer-learn YOLOv3-tiny from COCO weights (SYNTHETIC data)",
              ["train", "--task", "detect", "--data", str(ann_dir / "manifest.csv"), "--model", "yolov3-tiny",
               "--epochs", str(args.epochs), "--imgsz", "224", "--batch", "8", "--out", str(run_dir),
               "--seed", str(args.seed), "--exist-ok"])
        done.append(("training run (metrics.csv, best.pt, last.pt)", run_dir))

    print("\n== demo finished; everything is under", out.resolve())
    for what, where in done:
        print(f"   {what:45s} {where}")
    return 0
