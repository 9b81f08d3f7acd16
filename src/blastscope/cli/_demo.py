"""Run the whole pipeline on the embedded default data and print where everything went.

The default data are synthetic C-NMC-like cells made by ``blastscope synth`` (every file and
number from them says "synthetic"), plus the 8 real C-NMC sample images from ``../shared/data``
when that folder is present. Each step is the same command a user would type; the demo prints it
before running it (in this process, no subprocesses):

  synth -> import -> split (by patient) -> annotate (VOC boxes) -> train a small YOLOv3-tiny
  (transfer learning, few epochs, small images) -> evaluate (metrics.json, report.html) ->
  predict on folders (predictions.csv) -> a tiny 'reproduce' (the paper's image-level protocol next
  to a patient-disjoint split, comparison.csv)

The settings are small so the demo ends in a few minutes on two CPU cores; its numbers are
numbers on SYNTHETIC cells from a few epochs of training, not results.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from pathlib import Path

HELP = "run the pipeline end to end on the embedded default (synthetic cells + real C-NMC sample)"

_DEFAULT_SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    a("--shared-data", type=Path, default=_DEFAULT_SHARED, help="folder with the real sample data")
    a("--n-per-class", type=int, default=60, help="synthetic images per class (default 60)")
    a("--patients", type=int, default=6, help="synthetic patients per class (default 6)")
    a("--epochs", type=int, default=3, help="training epochs of the demo detector (default 3)")
    a("--imgsz", type=int, default=160, help="network input size of the demo detector, a multiple of 32 (default 160)")
    a("--reproduce-per-class", type=int, default=20, help="images per class of the tiny reproduce run (default 20)")
    a("--reproduce-epochs", type=int, default=2, help="epochs of each protocol in the tiny reproduce run (default 2)")
    a("--reproduce-imgsz", type=int, default=128, help="input size of the tiny reproduce run (default 128)")
    a("--seed", type=int, default=0)


def _step(title: str, argv: list[str]) -> float:
    """Print the command, run it in this process, return its seconds; a failure stops the demo."""
    from blastscope._problems import BlastscopeError
    from blastscope.cli.main import main

    print(f"\n== {title}\n$ blastscope {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    rc = main(argv)
    if rc not in (0, None):
        raise BlastscopeError(f"demo step '{title}' failed with exit status {rc}; see the messages above")
    seconds = time.perf_counter() - t0
    print(f"   ({seconds:.1f} s)", flush=True)
    return seconds


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    from blastscope._problems import BlastscopeError

    if args.imgsz % 32 or args.reproduce_imgsz % 32:
        raise BlastscopeError(f"--imgsz {args.imgsz} / --reproduce-imgsz {args.reproduce_imgsz}: must be multiples of 32")
    t_start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    seed = str(args.seed)

    synth_dir = out / "synthetic"
    _step(
        "1. make synthetic C-NMC-like cells (SYNTHETIC data)",
        [
            "synth",
            "--out",
            str(synth_dir),
            "--n-per-class",
            str(args.n_per_class),
            "--patients",
            str(args.patients),
            "--seed",
            seed,
            "--no-progress",
        ],
    )
    manifest = out / "synthetic_manifest.csv"
    _step(
        "2. import the synthetic tree (C-NMC layout)",
        ["import", str(synth_dir / "synthetic_C-NMC"), "--out", str(manifest), "--overwrite", "--no-progress"],
    )
    _step("3. patient-disjoint split (default protocol)", ["split", str(manifest), "--seed", seed])
    ann_dir = out / "annotations"
    _step("4. automatic VOC boxes for every cell", ["annotate", str(manifest), "--out", str(ann_dir), "--no-progress"])
    done = [("SYNTHETIC manifest (split by patient)", manifest), ("VOC annotations + annotated manifest", ann_dir)]

    real = args.shared_data / "cnmc-sample" / "C-NMC_Leukemia"
    has_real = real.is_dir()
    if has_real:
        real_manifest = out / "cnmc_sample_manifest.csv"
        _step(
            "5. import the 8 real C-NMC sample images",
            ["import", str(real), "--out", str(real_manifest), "--overwrite", "--no-progress"],
        )
        _step(
            "6. automatic VOC boxes for the real sample",
            ["annotate", str(real_manifest), "--out", str(out / "cnmc_sample_annotations"), "--no-progress"],
        )
        done += [
            ("real C-NMC sample manifest", real_manifest),
            ("real C-NMC sample VOC annotations", out / "cnmc_sample_annotations"),
        ]
    else:
        print(f"\n(real C-NMC sample not found at {real}: skipped; the demo runs on synthetic data alone)")

    run_dir = out / "runs" / "synthetic_yolov3-tiny"
    _step(
        f"7. transfer-learn YOLOv3-tiny from COCO weights, {args.epochs} epochs at {args.imgsz} px (SYNTHETIC data)",
        [
            "train",
            "--task",
            "detect",
            "--data",
            str(ann_dir / "manifest.csv"),
            "--model",
            "yolov3-tiny",
            "--epochs",
            str(args.epochs),
            "--imgsz",
            str(args.imgsz),
            "--batch",
            "8",
            "--out",
            str(run_dir),
            "--seed",
            seed,
            "--exist-ok",
            "--no-progress",
        ],
    )
    done.append(("training run (metrics.csv, best.pt, last.pt)", run_dir))

    eval_dir = out / "eval_synthetic_test"
    _step(
        "8. evaluate best.pt on the held-out SYNTHETIC test patients",
        [
            "evaluate",
            str(run_dir / "best.pt"),
            "--data",
            str(run_dir / "splits.csv"),
            "--split",
            "test",
            "--out",
            str(eval_dir),
            "--overwrite",
            "--no-progress",
        ],
    )
    done.append(("evaluation (metrics.json, report.html)", eval_dir))

    new_dir = out / "synthetic_new_patients"
    _step(
        "9a. a folder of cells from new SYNTHETIC patients (another seed)",
        ["synth", "--out", str(new_dir), "--n-per-class", "4", "--patients", "2", "--seed", str(args.seed + 1), "--no-progress"],
    )
    pred_dir = out / "predict_synthetic"
    _step(
        "9b. predict on that folder (SYNTHETIC cells)",
        [
            "predict",
            str(run_dir / "best.pt"),
            str(new_dir / "synthetic_C-NMC" / "training_data"),
            "--out",
            str(pred_dir),
            "--overwrite",
            "--no-progress",
        ],
    )
    done.append(("predictions on new SYNTHETIC patients (predictions.csv, summary.csv)", pred_dir))
    if has_real:
        real_pred = out / "predict_cnmc_sample"
        _step(
            "9c. predict on the real C-NMC sample folder (detector trained on SYNTHETIC cells only)",
            ["predict", str(run_dir / "best.pt"), str(real), "--out", str(real_pred), "--overwrite", "--no-progress"],
        )
        done.append(("predictions on the 8 real images (model trained on SYNTHETIC cells)", real_pred))

    repro_dir = out / "reproduce_SYNTHETIC"
    _step(
        "10. tiny 'reproduce': the paper's image-level protocol vs a patient-disjoint split (SYNTHETIC data)",
        [
            "reproduce",
            "--out",
            str(repro_dir),
            "--per-class",
            str(args.reproduce_per_class),
            "--epochs",
            str(args.reproduce_epochs),
            "--imgsz",
            str(args.reproduce_imgsz),
            "--seed",
            seed,
            "--overwrite",
            "--no-progress",
        ],
    )
    done.append(("reproduce (comparison.csv, comparison.md, both runs)", repro_dir))

    _summary(out, done, eval_dir, repro_dir, has_real, time.perf_counter() - t_start)
    return 0


def _summary(out: Path, done: list[tuple[str, Path]], eval_dir: Path, repro_dir: Path, has_real: bool, seconds: float) -> None:
    import pandas as pd

    print(f"\n== demo finished in {seconds / 60:.1f} min; everything is under {out.resolve()}")
    for what, where in done:
        print(f"   {what:70s} {where}")
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    shown = ", ".join(f"{k} {_fmt(metrics.get(k))}" for k in ("map50_voc", "accuracy", "sensitivity", "specificity"))
    print(f"\nSYNTHETIC test patients (step 8, a few epochs on synthetic cells): {shown}")
    print(f"   report: {eval_dir / 'report.html'}")
    table = pd.read_csv(repro_dir / "comparison.csv", dtype=str, keep_default_na=False).set_index("metric")
    print("SYNTHETIC reproduce (step 10): paper protocol (image-level) vs patient-disjoint")
    for key in ("patients shared between train and evaluation", "map50_voc", "accuracy"):
        if key in table.index:
            paper, patient = table.loc[key].iloc[0], table.loc[key].iloc[1]
            if key != "patients shared between train and evaluation":
                paper, patient = (_fmt(float(v)) if v else "n/a" for v in (paper, patient))
            print(f"   {key:46s} {paper:>8s} vs {patient:>8s}")
    print(f"   table: {repro_dir / 'comparison.md'} (the paper reported mAP 0.998 on real C-NMC images)")
    if has_real:
        print(
            "The real C-NMC sample was imported, boxed and predicted on; a detector trained on SYNTHETIC cells "
            "says nothing about those real cells."
        )
    print(
        "All numbers above are on SYNTHETIC data from a tiny demo training; they are not results. "
        "For the real protocol: blastscope reproduce --data C-NMC_Leukemia --out runs/reproduce"
    )
