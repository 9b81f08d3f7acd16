"""PBC under lab shifts: a cell classifier trained on the clean PBC sample, tested on fixed shifted copies.

Like ImageNet-C: train on the clean ``pbc-sample/train`` split through blastscope's own engine (what
``blastscope train --task classify`` does, with the given image size and epochs), then score
accuracy on the clean ``pbc-sample/test`` cells and on each of the 18 shifted copies that the shared
``lab_shifts.py`` tool makes (stain in HED space, magnification, blur, JPEG, gamma, white balance; 3
strengths each). The tool's shifts are fixed (the same images on every machine); the training
augmentations of the variants are blastscope's own random draws (:mod:`blastscope.data.stain`).

Variants (``--variants``, comma-separated; each one training run):

* ``plain``: the classifier defaults of ``configs/default.yaml`` with every lab augmentation off
  (flips, 90-degree turns, HSV jitter, scale jitter of the crop);
* ``stain``: plain + HED stain jitter, random LAB normalisation and grey levels;
* ``all``: stain + gamma/brightness, white balance, resolution loss, blur and JPEG;
* ``all-half``: ``all`` applied to half of the training cells (``lab_p: 0.5``), the other half clean;
* ``default``: whatever ``configs/default.yaml`` now says (the shipped defaults);
* ``blur6``: the defaults with defocus blur on half of the jittered cells and sigma up to 6 px;
* ``reinhard``, ``blur6-reinhard``: ``default`` and ``blur6`` with Reinhard stain normalisation of
  every crop in training and testing (``stain_norm: reinhard``).

Writes ``OUT/shifts.md`` (the table), ``OUT/shifts.json`` (every accuracy, settings and times) and
prints the table. The shifted sets are made once into ``WORK/pbc-shifts`` (a few minutes); trained
runs are kept in ``WORK/runs/VARIANT-IMGSZ-EPOCHS`` and reused when their ``config.yaml`` matches.

Usage::

    python scripts/bench_shifts.py --imgsz 128 --epochs 6 --variants plain,stain,all
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BLASTSCOPE_SHARED", REPO.parent / "shared"))
PBC_NAMES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil"]

#: augmentation settings of each variant on top of the classifier defaults (AugmentConfig fields);
#: lab_p and blur_sigma in OFF do nothing while the jitters are off (kept as the runs were made)
OFF = {
    "lab_p": 1.0,
    "blur_sigma": 3.0,
    "hed": 0.0,
    "lab": 0.0,
    "grayscale": 0.0,
    "gamma": 0.0,
    "white_balance": 0.0,
    "downscale": 0.0,
    "blur": 0.0,
    "jpeg": 0.0,
}
STAIN = {"hed": 0.3, "lab": 0.25, "grayscale": 0.1}
QUALITY = {"gamma": 0.8, "white_balance": 0.3, "downscale": 0.25, "blur": 0.3, "blur_sigma": 4.0, "jpeg": 0.3, "jpeg_quality": 10}
VARIANTS = {
    "plain": OFF,
    "stain": {**OFF, **STAIN},
    "all": {**OFF, **STAIN, **QUALITY},
    "all-half": {**OFF, **STAIN, **QUALITY, "lab_p": 0.5},
    "default": {},
    # more frequent and stronger defocus than the first default (blur on half of the jittered cells, sigma up to 6 px)
    "blur6": {"blur": 0.5, "blur_sigma": 6.0},
}
#: settings added later whose default is what runs without them did (a run made before them is still reusable)
NEUTRAL_NEW_SETTINGS = {"stain_norm"}
#: settings other than augmentation per variant (TrainConfig fields)
VARIANT_SETTINGS = {"reinhard": {"stain_norm": "reinhard"}, "blur6-reinhard": {"stain_norm": "reinhard"}}
VARIANTS["reinhard"] = {}
VARIANTS["blur6-reinhard"] = dict(VARIANTS["blur6"])


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_shifts(work: Path, python: str) -> Path:
    """``WORK/pbc-shifts`` with its ``index.csv``, made by the shared tool when missing."""
    out = work / "pbc-shifts"
    if (out / "index.csv").is_file():
        return out
    tool = SHARED / "tools" / "lab_shifts.py"
    src = SHARED / "data" / "pbc-sample" / "test"
    print(f"making the shifted test sets: {tool} {src} {out} (a few minutes)", flush=True)
    subprocess.run([python, str(tool), str(src), str(out)], check=True)
    return out


def import_folder(folder: Path, split: str | None = None):
    from blastscope._problems import ProblemLog
    from blastscope.data.importer import import_dataset

    df = import_dataset(folder, layout="yolo", names=PBC_NAMES, progress=False, log=ProblemLog(stream=sys.stderr))
    if split is not None:
        df = df[df["split"] == split].copy()
    df.attrs["classes"] = PBC_NAMES
    return df


def label_only(df):
    """The manifest with each single-cell image's box removed (its class kept as the image label).

    Scored so, the cell is found by the checkpoint's own rule (the stain finder) instead of the
    dataset's box: the whole pipeline as a new lab runs it.
    """
    from blastscope.data.formats import load_annotation

    out = df.copy()
    labels = []
    for spec, image in zip(out["annotation"].astype(str), out["image"].astype(str), strict=True):
        ann = load_annotation(spec, classes=PBC_NAMES, image=image)
        if len(ann.labels) != 1:
            raise SystemExit(f"{spec}: {len(ann.labels)} boxes; --test-boxes finder needs single-cell images")
        labels.append(str(ann.labels[0]))
    out["label"], out["annotation"] = labels, ""
    return out


def _resolved(config):
    """``config`` with ``precision``/``channels_last`` as this machine resolves "auto" (a run records them resolved)."""
    import torch

    from blastscope.engine._accel import resolve_channels_last, resolve_precision

    device = torch.device("cpu")
    precision = resolve_precision(config.precision, device)
    return dataclasses.replace(
        config, precision=precision, channels_last=resolve_channels_last(config.channels_last, precision, device)
    )


def train_variant(name: str, work: Path, manifest: Path, args) -> tuple[Path, float]:
    """Train ``name`` (or reuse an identical earlier run); returns ``(best.pt, seconds)``."""
    from blastscope.engine.config import config_from_dict, load_config, merge_cli
    from blastscope.engine.tasks import apply_task_defaults
    from blastscope.engine.trainer import train

    run_dir = work / "runs" / f"{name}-{args.imgsz}-{args.epochs}-s{args.seed}"
    given = {
        "task": "classify",
        "data": str(manifest),
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "out": str(run_dir),
        "seed": args.seed,
    }
    given |= VARIANT_SETTINGS.get(name, {})
    config = apply_task_defaults(merge_cli(load_config(), given), set(given))
    config = dataclasses.replace(config, aug=config_from_dict(VARIANTS[name], base=config.aug, cls=type(config.aug))).validate()
    # an earlier run with the same settings (under any variant name) is reused
    candidates = [run_dir, *sorted(p for p in (work / "runs").glob("*") if p != run_dir)] if not args.retrain else []
    for other in candidates:
        done = other / "best.pt"
        if not (done.is_file() and (other / "config.yaml").is_file() and (other / "bench_time.json").is_file()):
            continue
        import yaml

        written = yaml.safe_load((other / "config.yaml").read_text()) or {}
        # made before a setting existed whose default changes what is trained (the cells record): not the same run
        if (set(dataclasses.asdict(config)) - set(written)) - NEUTRAL_NEW_SETTINGS:
            continue
        old = load_config(other / "config.yaml")
        if _resolved(dataclasses.replace(old, out=config.out)) == _resolved(dataclasses.replace(config, data=old.data)):
            print(f"{name}: reusing {done}", flush=True)
            return done, float(json.loads((other / "bench_time.json").read_text())["seconds"])
    done = run_dir / "best.pt"
    t0 = time.perf_counter()
    train(config, exist_ok=True, progress=False)
    seconds = time.perf_counter() - t0
    (run_dir / "bench_time.json").write_text(json.dumps({"seconds": seconds}))
    for p in run_dir.glob("epoch_*.pt"):  # 9 MB each; best.pt and last.pt stay
        p.unlink()
    return done, seconds


class CachedBoxes:
    """``box_fn`` of a checkpoint's ``cells`` record with the boxes kept on disk, keyed by the image's bytes.

    The boxes depend only on the image and the finder's settings, so every model scored on the same
    sets shares them (the stain finder takes about 0.1 s an image; 19 sets x 280 cells).
    """

    def __init__(self, cells: dict | None, work: Path):
        import hashlib

        from blastscope.annotate.finder import cell_box_function

        self.fn = cell_box_function(cells)
        finder = {k: v for k, v in (cells or {}).items() if k != "stain_norm"}  # the boxes do not depend on it
        key = hashlib.sha256(json.dumps(finder, sort_keys=True).encode()).hexdigest()[:16]
        self.path = work / f"boxes-{key}.json"
        self.boxes = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.new = 0

    def __bool__(self) -> bool:
        return self.fn is not None

    def __call__(self, image):
        import hashlib

        import numpy as np

        k = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        if k not in self.boxes:
            box = self.fn(image)
            self.boxes[k] = None if box is None else [float(v) for v in box]
            self.new += 1
        box = self.boxes[k]
        return None if box is None else np.asarray(box, np.float32)

    def save(self) -> None:
        if self.new:
            self.path.write_text(json.dumps(self.boxes))
            self.new = 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--work", type=Path, default=Path.home() / ".cache" / "blastscope" / "bench", help="shifted sets and runs (reused)"
    )
    ap.add_argument("--out", type=Path, default=Path("bench_out"), help="where shifts.md and shifts.json go")
    ap.add_argument("--variants", default="plain,stain,all", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on a shared 2-core machine one thread trained 6x faster than two)",
    )
    ap.add_argument("--retrain", action="store_true", help="train again even when an identical run exists")
    ap.add_argument(
        "--adapt",
        default="",
        metavar="W,W,...",
        help="also score AdaBN adaptation of the last variant to each shifted set's own cells (unlabelled), at these weights",
    )
    ap.add_argument(
        "--adapt-levels",
        default="0,1,2,3",
        metavar="L,L,...",
        help="shift levels on which --adapt is scored (0 is clean; fewer levels, less time)",
    )
    ap.add_argument(
        "--test-boxes",
        choices=("labels", "finder"),
        default="labels",
        help="cut each test cell around its labelled box (default), or let the checkpoint's cell finder find it",
    )
    ap.add_argument(
        "--tent", action="store_true", help="with --adapt: also each weight followed by TENT (BatchNorm affine, entropy)"
    )
    ap.add_argument("--tent-steps", type=int, default=1, help="passes of TENT over each set's cells (default 1)")
    ap.add_argument("--tent-lr", type=float, default=1e-4, help="Adam learning rate of TENT (default 1e-4, adapt's default)")
    ap.add_argument("--prior", action="store_true", help="with --adapt: also each row with the EM class-prior correction")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PT", help="also score an existing checkpoint")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))

    import torch

    torch.set_num_threads(args.threads)
    from blastscope.data.manifest import write_manifest
    from blastscope.engine.shifts import (
        classify_manifest,
        markdown_table,
        read_shift_index,
        summarise,
    )
    from blastscope.models.checkpoint import load_model

    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    shifts_root = ensure_shifts(args.work, sys.executable)
    sets = read_shift_index(shifts_root)
    manifests = {(s.shift, s.level): import_folder(s.folder) for s in sets}
    if args.test_boxes == "finder":
        manifests = {k: label_only(df) for k, df in manifests.items()}
    train_csv = write_manifest(import_folder(SHARED / "data" / "pbc-sample", "train"), args.work / "pbc-train.csv")

    checkpoints = {}
    times = {}
    for name in names:
        checkpoints[name], times[name] = train_variant(name, args.work, train_csv, args)
        print(f"{name}: trained in {times[name] / 60:.1f} min", flush=True)
    for spec in args.checkpoint:
        key, _, path = spec.partition("=")
        checkpoints[key] = Path(path)

    results: dict[str, dict[tuple[str, int], float]] = {}
    eval_times = {}
    for name, ckpt in checkpoints.items():
        suffix = ".shifts.json" if args.test_boxes == "labels" else ".shifts-finder.json"
        cache = Path(ckpt).with_name(Path(ckpt).stem + suffix)  # scores of this very file, reused
        digest = _sha256(Path(ckpt))
        has_cells = (torch.load(ckpt, map_location="cpu", weights_only=False)["model"].get("cells") or {}).get("mode") == "finder"
        saved = json.loads(cache.read_text()) if cache.is_file() else {}
        # scores made before the scoring cut cells as the checkpoint records are kept only for whole-image models
        if saved.get("sha256") == digest and (saved.get("cells_cut") or not has_cells):
            acc = {(k.rsplit("-", 1)[0], int(k.rsplit("-", 1)[1])): v for k, v in saved["accuracy"].items()}
            eval_times[name] = saved["seconds"]
            print(f"{name}: scores of {ckpt} reused from {cache}", flush=True)
        else:
            model, meta = load_model(ckpt, task="classify")
            classes = list(model.info.class_names)
            boxes = CachedBoxes(meta["model"].get("cells"), args.work)
            t0 = time.perf_counter()
            acc = {}
            with torch.inference_mode():
                for key, df in manifests.items():
                    y, p = classify_manifest(model, df, classes, box_fn=boxes or None, cells=meta["model"].get("cells"))
                    boxes.save()
                    acc[key] = float((p.argmax(1) == y).mean())
            eval_times[name] = time.perf_counter() - t0
            cache.write_text(
                json.dumps(
                    {
                        "sha256": digest,
                        "cells_cut": True,
                        "seconds": eval_times[name],
                        "accuracy": {f"{k[0]}-{k[1]}": v for k, v in acc.items()},
                    }
                )
            )
        results[name] = acc
        s = summarise(acc)
        print(
            f"{name}: clean {s['clean']:.3f}, mean {s['mean']:.3f}, min {s['min']:.3f} ({eval_times[name]:.0f} s to score)",
            flush=True,
        )

    weights = [float(w) for w in args.adapt.split(",") if w]
    if weights:
        import copy

        import numpy as np
        from torch.utils.data import DataLoader

        from blastscope.annotate.finder import evaluation_cells
        from blastscope.engine.adapt import (
            estimate_prior,
            mix_statistics,
            new_lab_statistics,
            source_statistics,
            tent,
        )

        base_name = list(checkpoints)[-1]
        model, meta = load_model(checkpoints[base_name], task="classify")
        classes = list(model.info.class_names)
        cal = meta.get("calibration") or {}
        temperature = float(cal.get("temperature") or 1.0)
        source_prior = np.asarray(cal.get("prior") or [1 / len(classes)] * len(classes))
        boxes = CachedBoxes(meta["model"].get("cells"), args.work)
        src = source_statistics(model)
        t0 = time.perf_counter()
        rows = [(f"AdaBN w={w:g}", w, False) for w in weights]
        if args.tent:
            rows += [(f"AdaBN w={w:g} + TENT lr {args.tent_lr:g}", w, True) for w in weights]
        labels = [f"{base_name} + {r[0]}" for r in rows] + ([f"{base_name} + {r[0]} + prior" for r in rows] if args.prior else [])
        for label in labels:
            results[label] = {}
        levels = {int(v) for v in args.adapt_levels.split(",") if v}
        for key, df in manifests.items():  # transductive: each set's own cells, labels unused
            if key[1] not in levels:
                continue
            ds = evaluation_cells(df, classes, model.info.input_size, meta["model"].get("cells"), box_fn=boxes or None)
            loader = DataLoader(ds, batch_size=32, shuffle=False)
            target = new_lab_statistics(model, loader)
            boxes.save()
            for name, w, use_tent in rows:
                adapted = mix_statistics(copy.deepcopy(model), src, target, w)
                if use_tent:
                    torch.manual_seed(0)
                    tent(adapted, loader, steps=args.tent_steps, lr=args.tent_lr)
                y, p = classify_manifest(adapted, df, classes, box_fn=boxes or None, cells=meta["model"].get("cells"))
                results[f"{base_name} + {name}"][key] = float((p.argmax(1) == y).mean())
                if args.prior:  # the calibrated probabilities moved to the set's EM-estimated class mix
                    z = np.log(np.maximum(p, 1e-12)) / temperature
                    q = np.exp(z - z.max(1, keepdims=True))
                    q /= q.sum(1, keepdims=True)
                    shifted = q * (estimate_prior(q, source_prior) / source_prior)
                    results[f"{base_name} + {name} + prior"][key] = float((shifted.argmax(1) == y).mean())
        eval_times["adapt"] = time.perf_counter() - t0
        if levels != {0, 1, 2, 3}:  # the unadapted model on the same sets, for a fair comparison
            results[f"{base_name} (sets of the AdaBN rows)"] = {k: v for k, v in results[base_name].items() if k[1] in levels}
        for label in labels:
            s = summarise(results[label])
            print(f"{label}: clean {s['clean']:.3f}, mean {s['mean']:.3f}, min {s['min']:.3f}", flush=True)

    table = markdown_table(results)
    note = (
        f"\nMobileNetV2 (ImageNet-pretrained), {args.imgsz} px, {args.epochs} epochs, seed {args.seed}, trained on the "
        f"{len(import_folder(SHARED / 'data' / 'pbc-sample', 'train'))} clean pbc-sample train cells (10% carved as val); "
        "accuracy on the 280 test cells, clean and under each lab_shifts.py shift at levels 1/2/3; each test cell cut "
        f"{'around its labelled box' if args.test_boxes == 'labels' else 'around the white cell the stain finder finds'}.\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shifts.md").write_text(table + note)
    (args.out / "shifts.json").write_text(
        json.dumps(
            {
                "imgsz": args.imgsz,
                "epochs": args.epochs,
                "seed": args.seed,
                "variants": {n: VARIANTS.get(n, "checkpoint") for n in checkpoints},
                "accuracy": {n: {f"{k[0]}-{k[1]}": v for k, v in acc.items()} for n, acc in results.items()},
                "summary": {n: summarise(acc) for n, acc in results.items()},
                "train_seconds": times,
                "score_seconds": eval_times,
                "total_seconds": time.perf_counter() - t_start,
            },
            indent=1,
        )
    )
    print(table + note)
    print(f"total {(time.perf_counter() - t_start) / 60:.1f} min; written {args.out / 'shifts.md'}, {args.out / 'shifts.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
