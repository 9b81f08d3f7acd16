"""Speed of training and inference on this machine, in images per second (``make bench``).

One run measures, at one input size (416 px by default) and on real BCCD smears:

(a) training yolov3-tiny: forward, loss, backward, gradient clipping and optimizer step on batches
    of 8 letterboxed images (the configured batch; COCO-pretrained, new 3-class heads, the trainer's
    SGD), images already in memory; in fp32, fp32 with channels-last memory, bf16 autocast, and bf16
    with channels-last (``--quick``: fp32 and bf16 with channels-last only), their steps taken in
    turns (one of each per round: a drift of the machine's speed moves them alike); under the trainer's
    allocator setting (``keep_freed_memory``: glibc keeps freed memory for reuse), which then holds
    for the rest of the bench process;
(b) inference with the torch back-end at batch 1 and at the configured batch;
(c) inference with the onnxruntime and the OpenVINO back-ends (the same weights exported with
    ``blastscope export``), fp32 (OpenVINO: bf16 where the CPU has it, after its parity check) and
    statically quantized to int8 (``export --int8``'s quantizer, calibrated on the BCCD frames; no
    accuracy check here: the COCO classes mean nothing on smears);
(d) OpenCV DNN (``cv2.dnn.readNetFromDarknet``) running Darknet's own COCO yolov3-tiny ``.cfg`` and
    ``.weights``, an independent reference implementation of the same network;
(e) the two-stage pipeline's cell classifier (MobileNetV2, ImageNet-pretrained, a new 7-class head)
    on 160 px crops of real PBC cells, at batch 1 and 32 (``--quick``: 8), in torch, onnxruntime,
    OpenVINO and onnxruntime int8 (calibrated on other PBC cells): "network" on the ready crops, "end to end"
    :class:`CropClassifier` (crop, normalise, network, softmax) on one PBC image or a frame tiled
    with that many PBC cells;
(f) whole processes, what a user waits for: wall time and peak resident memory (``RUSAGE_CHILDREN``
    of a small launcher) of ``blastscope predict CKPT FOLDER --no-draw`` (default backend) and of
    ``scripts/opencv_dnn_predict.py`` (OpenCV DNN alone, the same weights, letterbox, NMS, a CSV)
    on the first 120 BCCD smears; each run three times, the least wall time and the least peak memory
    count (warm file cache; the first blastscope run also exports ONNX to its cache and checks it);
(g) with ``--paper``: the wall time of the paper arm of ``blastscope reproduce`` (300 SYNTHETIC
    cells, 25 epochs, ``--imgsz``), from process start to the end of that arm's evaluation (the
    process is stopped there, before the patient arm).

For (b) and (c), "network" is the forward pass on the ready input tensor, "end to end" is
``predict_batch`` on decoded RGB frames (letterbox, network, decoding, NMS, boxes back to image
pixels): for (c) that of :class:`~blastscope.inference.lite.LitePredictor` (what ``blastscope
predict`` runs for a detector: NumPy decoding, no torch) and that of :class:`Predictor` (the Python
API, the GUI and two-stage prediction: torch decoding). (b)-(d) run the same COCO weights (80 classes); OpenCV's number is its forward
pass, which includes its YOLO-layer decoding but no NMS. Warm-up iterations are excluded; a rate is
``batch / median seconds per iteration``. Nothing here asserts a speed.

Writes ``bench_out/bench.json`` and ``bench_out/bench.md`` (``--out``) and prints the table.

Usage::

    python scripts/bench.py            # full run without (g) (a few minutes on 2 CPU cores)
    python scripts/bench.py --paper    # and (g) (``make bench``; tens of minutes on 2 CPU cores)
    python scripts/bench.py --quick    # a few iterations of each, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BLASTSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_BCCD, DEFAULT_PBC = SHARED_DATA / "bccd", SHARED_DATA / "pbc-sample"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    import cv2
    import torch
    import torchvision

    import blastscope

    out = {
        "python": platform.python_version(),
        "blastscope": blastscope.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        out["onnxruntime"] = "not installed"
    try:
        import openvino

        out["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        out["openvino"] = "not installed"
    return out


def timeit(step: Callable[[], object], *, warmup: int, iters: int) -> list[float]:
    """Seconds of each of ``iters`` calls of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def row(what: str, batch: int, times: list[float] | None, note: str = "") -> dict:
    if not times:
        return {"what": what, "batch": batch, "images_per_s": None, "ms_per_batch": None, "iters": 0, "note": note}
    med = statistics.median(times)
    return {
        "what": what,
        "batch": batch,
        "images_per_s": batch / med,
        "ms_per_batch": 1000 * med,
        "iters": len(times),
        "times_s": times,
        "note": note,
    }


def bccd_manifest(root: Path, n: int):
    """The first ``n`` training images of BCCD (real smears, VOC boxes) as a manifest and its classes."""
    from blastscope._problems import ProblemLog
    from blastscope.data.importer import import_dataset
    from blastscope.data.manifest import manifest_classes

    df = import_dataset(root, progress=False, log=ProblemLog(stream=None))
    classes = manifest_classes(df)
    train = df[df["split"] == "train"].head(n)
    train.attrs.update(df.attrs)
    return train, classes


#: (precision, channels-last) of the training rows; ``--quick`` measures the first and the last
TRAIN_VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def timeit_interleaved(steps: dict[str, Callable[[], object]], *, warmup: int, iters: int) -> dict[str, list[float]]:
    """:func:`timeit` of several steps taken in turns (one call of each per round), so a machine that
    speeds up or slows down during the run shifts all of them alike and their ratios hold."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return times


def training_step(root: Path, imgsz: int, batch: int, *, precision: str = "fp32", channels_last: bool = False):
    """(a): ``(what, step, note)``, one training step of ``precision`` ``"fp32"`` or ``"bf16"`` (autocast
    of forward and loss, as the trainer does) per call of ``step``."""
    import contextlib

    import torch

    from blastscope.data.dataset import DetectionDataset, collate_fn
    from blastscope.engine import cpu_has_native_bf16
    from blastscope.engine._accel import keep_freed_memory
    from blastscope.engine.config import load_config
    from blastscope.engine.trainer import build_optimizer
    from blastscope.models import create_model

    kept = keep_freed_memory()  # as the trainer does (process-wide: the rows after this one too)

    config = load_config()
    df, classes = bccd_manifest(root, batch * 2)
    dataset = DetectionDataset(df, None, classes, imgsz=imgsz)
    batches = [collate_fn([dataset[i] for i in range(k, k + batch)]) for k in range(0, len(dataset) - batch + 1, batch)]
    memory = torch.channels_last if channels_last else torch.contiguous_format
    batches = [(images.contiguous(memory_format=memory), targets) for images, targets in batches]
    torch.manual_seed(0)
    model = create_model(config.model, class_names=classes, pretrained=True, input_size=imgsz).train()
    model = model.to(memory_format=memory)
    optimizer = build_optimizer(model, config)
    state = {"i": 0}

    def step() -> None:
        images, targets = batches[state["i"] % len(batches)]
        state["i"] += 1
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with amp:
            loss, _ = model.loss([r.float() for r in model(images)], targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

    variant = {"fp32": "", "bf16": ", bf16 autocast"}[precision] + (", channels-last" if channels_last else "")
    note = f"{config.optimizer}, lr {config.lr}, grad clip {config.grad_clip}; data loading excluded"
    note += "; freed memory kept for reuse (glibc mallopt, as the trainer)" if kept else "; glibc malloc defaults"
    note += "; the variants' steps taken in turns"
    if precision == "bf16":
        note += f"; native bf16 on this CPU: {'yes' if cpu_has_native_bf16() else 'no (emulated)'}"
    return f"(a) training {config.model}, fwd+bwd+step ({len(classes)} BCCD classes){variant}", step, note


def bench_training(root: Path, imgsz: int, batch: int, warmup: int, iters: int, variants) -> list[dict]:
    """(a): every ``(precision, channels_last)`` of ``variants``, their steps timed in turns."""
    made = [training_step(root, imgsz, batch, precision=p, channels_last=c) for p, c in variants]
    times = timeit_interleaved({what: step for what, step, _ in made}, warmup=warmup, iters=iters)
    return [row(what, batch, times[what], note) for what, _, note in made]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations of each (smoke test)")
    parser.add_argument("--imgsz", type=int, default=416, help="square input size, a multiple of 32 (default 416)")
    parser.add_argument(
        "--iters",
        type=int,
        default=None,
        help="timed iterations per inference measurement (default 30, --quick 5); training uses a third",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads for torch, onnxruntime and OpenCV (default: torch's default)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_BCCD, help=f"BCCD folder (default {DEFAULT_BCCD})")
    parser.add_argument("--pbc", type=Path, default=DEFAULT_PBC, help=f"PBC folder, for (e) (default {DEFAULT_PBC})")
    parser.add_argument(
        "--process-images",
        type=int,
        default=None,
        metavar="N",
        help="BCCD smears of the whole-process rows (f) (default 120, --quick 8)",
    )
    parser.add_argument(
        "--paper",
        action="store_true",
        help="also time the paper arm of 'blastscope reproduce' (g): 300 SYNTHETIC cells, 25 epochs, --imgsz "
        "(many minutes; with --quick: 20 cells, 1 epoch)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench_out", help="output folder (default bench_out)")
    args = parser.parse_args(argv)
    if args.imgsz % 32:
        parser.error(f"--imgsz {args.imgsz}: must be a multiple of 32")
    if not (args.data / "JPEGImages").is_dir():
        parser.error(f"{args.data}: BCCD not found (JPEGImages/ missing); pass --data or set BLASTSCOPE_SHARED_DATA")
    if not (args.pbc / "train" / "images").is_dir():
        parser.error(f"{args.pbc}: PBC not found (train/images/ missing); pass --pbc or set BLASTSCOPE_SHARED_DATA")

    import cv2
    import torch

    from blastscope._atomic import atomic_write
    from blastscope.data.images import read_image
    from blastscope.data.preprocess import Preprocess
    from blastscope.engine.config import load_config
    from blastscope.inference import Predictor
    from blastscope.inference.lite import LitePredictor
    from blastscope.models import create_model, resolve_weights
    from blastscope.models.checkpoint import make_checkpoint, save_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cv2.setNumThreads(threads)
    iters = args.iters or (5 if args.quick else 30)
    warmup = 1 if args.quick else 3
    train_iters = max(2, iters // 3)
    batch = int(load_config().batch)  # the configured batch (configs/default.yaml)
    size = args.imgsz
    load_start = _loadavg()
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    results: list[dict] = []
    variants = (TRAIN_VARIANTS[0], TRAIN_VARIANTS[-1]) if args.quick else TRAIN_VARIANTS
    names = ", ".join(f"{p}{' channels-last' if c else ''}" for p, c in variants)
    say(f"training ({names}): {warmup} warm-up + {train_iters} timed steps each of batch {batch} at {size} px, in turns")
    results.extend(bench_training(args.data, size, batch, warmup, train_iters, variants))

    # inference: the same COCO yolov3-tiny in every runtime, on real BCCD frames
    frames = [read_image(p) for p in sorted((args.data / "JPEGImages").glob("*.jpg"))[:batch]]
    x_all = Preprocess("letterbox", size)(frames)[0].numpy()
    model = create_model("yolov3-tiny", num_classes=80, pretrained=True).eval()
    with tempfile.TemporaryDirectory(prefix="blastscope-bench-") as tmp:
        ckpt = Path(tmp) / "yolov3-tiny-coco.pt"
        save_checkpoint(make_checkpoint(model, epoch=0, input_size=size), ckpt)
        torch_pred = Predictor.from_checkpoint(ckpt, imgsz=size, backend="torch")
        onnx_pred, onnx_note, int8_pred, int8_note = None, "", None, ""
        try:
            from blastscope.inference.onnx import export_model_onnx

            say("exporting to ONNX (dynamic batch) with the parity check")
            export = export_model_onnx(model, Path(tmp) / "yolov3-tiny-coco.onnx", imgsz=size, dynamic_batch=True)
            onnx_note = export.parity.line()
            onnx_pred = Predictor.from_checkpoint(export.path, backend="onnx")
        except Exception as e:  # noqa: BLE001 - a missing onnxruntime must not stop the other numbers
            onnx_note = f"skipped: {str(e).splitlines()[0]}"
            say(f"onnxruntime {onnx_note}")
        ov_pred, ov_note, ov8_pred, ov8_note = None, "", None, ""
        if onnx_pred is not None:
            try:
                from blastscope.inference._openvino import require_openvino

                require_openvino()
                say("OpenVINO: compiling the export (bf16 where native, after its bf16 parity check)")
                ov_pred = Predictor.from_checkpoint(export.path, backend="openvino")
                runner = ov_pred.backend.onnx_model
                ov_note = f"computes in {runner.precision}" + (f"; {runner.parity}" if runner.parity else "")
            except Exception as e:  # noqa: BLE001 - a missing OpenVINO must not stop the other numbers
                ov_note = f"skipped: {str(e).splitlines()[0]}"
                say(f"openvino {ov_note}")
        if onnx_pred is not None:
            try:
                from blastscope.inference.onnx import quantize_int8

                say(f"quantizing to int8 (static, QDQ, per-channel), calibrated on {len(frames)} BCCD frames")
                int8, n_calib = quantize_int8(export.path.read_bytes(), (x_all[i : i + 1] for i in range(len(x_all))))
                (Path(tmp) / "yolov3-tiny-coco.int8.onnx").write_bytes(int8)
                int8_pred = Predictor.from_checkpoint(Path(tmp) / "yolov3-tiny-coco.int8.onnx", backend="onnx")
                int8_note = f"static int8 (uint8 activations), QDQ, per-channel, calibrated on {n_calib} BCCD frames"
            except Exception as e:  # noqa: BLE001 - a failed quantization must not stop the other numbers
                int8_note = f"skipped: {str(e).splitlines()[0]}"
                say(f"int8 {int8_note}")
        if int8_pred is not None and ov_pred is not None:
            ov8_pred = Predictor.from_checkpoint(Path(tmp) / "yolov3-tiny-coco.int8.onnx", backend="openvino")
            ov8_note = f"the same int8 file; {ov8_pred.backend.onnx_model.precision} where not int8"
        from blastscope.inference._openvino import export_engine

        # what open_export(path, "auto") picks on the CPU, without compiling the model once more
        engine = export_engine("auto", "cpu")
        default_runtime = ("OpenVinoModel" if engine == "openvino" else "OnnxModel") if onnx_pred is not None else "torch"

        for b in sorted({1, batch}):
            n_it = iters if b == 1 else max(3, iters // 2)
            x = torch.from_numpy(x_all[:b].copy())
            say(f"inference at batch {b}: {warmup} warm-up + {n_it} timed iterations per runtime")

            def torch_net() -> None:
                with torch.inference_mode():
                    torch_pred.backend.model(x)

            results.append(row("(b) torch, network", b, timeit(torch_net, warmup=warmup, iters=n_it)))
            results.append(
                row("(b) torch, end to end", b, timeit(lambda: torch_pred.predict_batch(frames[:b]), warmup=warmup, iters=n_it))
            )
            for label, pred, note in (
                ("(c) onnxruntime", onnx_pred, onnx_note),
                ("(c) onnxruntime int8", int8_pred, int8_note),
                ("(c) openvino", ov_pred, ov_note),
                ("(c) openvino int8", ov8_pred, ov8_note),
            ):
                if pred is None:
                    results.append(row(label, b, None, note))
                    continue
                runner = pred.backend.onnx_model
                lite = LitePredictor(runner)  # what `blastscope predict` runs for a detector alone
                net = row(f"{label}, network", b, timeit(lambda: runner(x.numpy()), warmup=warmup, iters=n_it), note)
                e2e = row(f"{label}, end to end", b, timeit(lambda: lite.predict_batch(frames[:b]), warmup=warmup, iters=n_it))
                e2e["note"] = (
                    f"`predict`'s path (NumPy decoding, no torch), one batch at a time: "
                    f"{e2e['images_per_s'] / net['images_per_s']:.0%} of the network-only rate"
                    + ("; on a folder `predict` also keeps two batches in flight, see (f)" if "openvino" in label else "")
                )
                api = row(
                    f"{label}, end to end, Predictor",
                    b,
                    timeit(lambda: pred.predict_batch(frames[:b]), warmup=warmup, iters=n_it),
                )
                api["note"] = (
                    f"the Python API's, the GUI's and two-stage predict's path (torch decoding): "
                    f"{api['images_per_s'] / net['images_per_s']:.0%} of the network-only rate"
                )
                results += [net, e2e, api]
            results.append(bench_opencv(x_all[:b], warmup, n_it, resolve_weights))

        # the second stage: the cell classifier on real PBC cells
        clf_batches = (1, 8) if args.quick else (1, 32)
        results += bench_classifier(Path(args.pbc), Path(tmp), clf_batches, warmup, iters, 8 if args.quick else 32, say)

        # whole processes, as a user starts them: blastscope predict next to an OpenCV-only script
        n_proc = args.process_images or (8 if args.quick else 120)
        try:
            rows_f, process_ratio = bench_processes(
                ckpt, args.data, n_proc, 1 if args.quick else 3, size, Path(tmp), args.threads, say
            )
            results += rows_f
        except RuntimeError as e:
            process_ratio = None
            results.append(row(f"(f) whole processes, {n_proc} BCCD smears", n_proc, None, f"failed: {e}"))

    if args.paper:
        with tempfile.TemporaryDirectory(prefix="blastscope-bench-paper-") as tmp:
            epochs, per_class = (1, 10) if args.quick else (25, 150)
            results.append(bench_paper(Path(tmp), epochs=epochs, imgsz=size, per_class=per_class, say=say))

    meta = {
        "imgsz": size,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "onnxruntime_threads": threads if onnx_pred is not None else None,
        "opencv_threads": cv2.getNumThreads(),
        "configured_batch": batch,
        "loadavg_1min_start": load_start,
        "loadavg_1min_end": _loadavg(),
        "quick": bool(args.quick),
        "onnx_export": onnx_note,
        "default_runtime": default_runtime,
        "classifier": f"{CLASSIFIER} (ImageNet-pretrained, new 7-class head), {CROP} px crops of real PBC cells",
        "process_images": n_proc,
        "process_ratio_blastscope_over_opencv": process_ratio,
        "paper": bool(args.paper),
        "versions": versions(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    table = markdown(results, meta)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out / "bench.json") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
        f.write("\n")
    with atomic_write(args.out / "bench.md") as f:
        f.write(table + "\n")
    say(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0


def _loadavg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def bench_opencv(x: np.ndarray, warmup: int, iters: int, resolve_weights) -> dict:
    """(d): Darknet's own cfg and weights through OpenCV DNN, forward to the two YOLO layers."""
    import cv2

    what, b = "(d) OpenCV DNN darknet, network", len(x)
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        return row(what, b, None, f"OpenCV {cv2.__version__} has no Darknet importer")
    cfg, weights = resolve_weights("yolov3-tiny-coco-cfg"), resolve_weights("yolov3-tiny-coco")
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    names = net.getUnconnectedOutLayersNames()

    def step() -> None:
        net.setInput(x)
        net.forward(names)

    try:
        return row(what, b, timeit(step, warmup=warmup, iters=iters), "includes YOLO-layer decoding, no NMS")
    except cv2.error as e:
        return row(what, b, None, f"failed: {str(e).strip().splitlines()[-1]}")


#: the two-stage pipeline's cell classifier (``blastscope train --task classify``'s default) and its crop size
CLASSIFIER, CROP = "mobilenet_v2", 160


def pbc_cells(root: Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` real PBC cells evenly spread over the sorted train images (all seven classes): each an
    (HxWx3 uint8 RGB image, (1, 4) xyxy pixel box from its YOLO label; the whole image without one)."""
    from blastscope.data.images import read_image

    paths = sorted((root / "train" / "images").glob("*.jpg"))
    cells = []
    for i in np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int):
        image = read_image(paths[i])
        h, w = image.shape[:2]
        label = root / "train" / "labels" / f"{paths[i].stem}.txt"
        fields = label.read_text().split()[1:5] if label.is_file() else []
        if len(fields) == 4:
            cx, cy, bw, bh = map(float, fields)
            box = np.array([[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]], np.float32)
        else:
            box = np.array([[0, 0, w, h]], np.float32)
        cells.append((image, box))
    return cells


def mosaic(cells: list[tuple[np.ndarray, np.ndarray]], columns: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """One frame holding all ``cells`` in a grid (black between them) and their boxes in it: a
    smear-sized frame with ``len(cells)`` white cells for the classifier's batch."""
    th, tw = max(c[0].shape[0] for c in cells), max(c[0].shape[1] for c in cells)
    rows = -(-len(cells) // columns)
    frame = np.zeros((rows * th, min(columns, len(cells)) * tw, 3), np.uint8)
    boxes = []
    for k, (image, box) in enumerate(cells):
        y, x = (k // columns) * th, (k % columns) * tw
        frame[y : y + image.shape[0], x : x + image.shape[1]] = image
        boxes.append(box + np.array([x, y, x, y], np.float32))
    return frame, np.concatenate(boxes)


def bench_classifier(
    pbc: Path, tmp: Path, batches: tuple[int, ...], warmup: int, iters: int, n_calib: int, say: Callable[[str], None]
) -> list[dict]:
    """(e): the cell classifier in torch, onnxruntime and onnxruntime int8, network and end to end."""
    import torch

    from blastscope.inference.predictor import CropClassifier
    from blastscope.models import create_model

    torch.manual_seed(0)  # the new 7-class head
    model = create_model(CLASSIFIER, num_classes=7, pretrained=True).eval()
    info = model.info

    def classifier(runner) -> CropClassifier:
        return CropClassifier(runner, info.class_names, CROP, info.mean, info.std)

    cells = pbc_cells(pbc, 2 * max(max(batches), n_calib))
    timed, calib = cells[0::2], cells[1::2][:n_calib]
    runtimes: list[tuple[str, CropClassifier | None, str]] = [("torch", classifier(model), "")]
    try:
        from blastscope.inference.onnx import OnnxModel, export_model_onnx, quantize_int8

        say(f"classifier: exporting {CLASSIFIER} to ONNX (dynamic batch) with the parity check")
        export = export_model_onnx(model, tmp / f"{CLASSIFIER}.onnx", imgsz=CROP, dynamic_batch=True)
        runtimes.append(("onnxruntime", classifier(OnnxModel(export.path)), export.parity.line()))
    except Exception as e:  # noqa: BLE001 - a missing onnxruntime must not stop the other numbers
        runtimes.append(("onnxruntime", None, f"skipped: {str(e).splitlines()[0]}"))
    if runtimes[-1][1] is not None:
        try:
            from blastscope.inference._openvino import OpenVinoModel

            ov = OpenVinoModel(export.path)
            note = f"computes in {ov.precision}" + (f"; {ov.parity}" if ov.parity else "")
            runtimes.append(("openvino", classifier(ov), note))
        except Exception as e:  # noqa: BLE001 - a missing OpenVINO must not stop the other numbers
            runtimes.append(("openvino", None, f"skipped: {str(e).splitlines()[0]}"))
    if runtimes[1][1] is not None:
        try:
            say(f"classifier: quantizing to int8, calibrated on {len(calib)} PBC cells")
            pre = runtimes[0][1].preprocess
            int8, n = quantize_int8(export.path.read_bytes(), (pre.cells(image, box).numpy() for image, box in calib))
            (tmp / f"{CLASSIFIER}.int8.onnx").write_bytes(int8)
            int8_clf = classifier(OnnxModel(tmp / f"{CLASSIFIER}.int8.onnx"))
            frame, boxes = mosaic(timed)
            same = sum(
                a.class_id == b.class_id for a, b in zip(runtimes[1][1](frame, boxes), int8_clf(frame, boxes), strict=True)
            )
            note = f"static int8 (uint8 activations), QDQ, per-channel, calibrated on {n} PBC cells; top class = fp32's on {same}/{len(boxes)} cells"
            runtimes.append(("onnxruntime int8", int8_clf, note))
        except Exception as e:  # noqa: BLE001 - a failed quantization must not stop the other numbers
            runtimes.append(("onnxruntime int8", None, f"skipped: {str(e).splitlines()[0]}"))

    results = []
    for b in batches:
        frame, boxes = (timed[0][0], timed[0][1]) if b == 1 else mosaic(timed[:b])
        n_it = iters if b == 1 else max(3, iters // 2)
        say(f"classifier at batch {b}: {warmup} warm-up + {n_it} timed iterations per runtime")
        x = runtimes[0][1].preprocess.cells(frame, boxes)
        what = f"(e) classifier {CLASSIFIER} {CROP} px, {{}}, {{}} (cells/s)"
        for label, clf, note in runtimes:
            if clf is None:
                results.append(row(what.format(label, "skipped"), b, None, note))
                continue
            if label == "torch":

                def net() -> None:
                    with torch.inference_mode():
                        model(x)

            else:
                runner, xn = clf.model, x.numpy()

                def net() -> None:
                    runner(xn)

            net_row = row(what.format(label, "network"), b, timeit(net, warmup=warmup, iters=n_it), note)
            e2e = row(what.format(label, "end to end"), b, timeit(lambda: clf(frame, boxes), warmup=warmup, iters=n_it))
            where = "one PBC image" if b == 1 else f"a mosaic frame of {b} PBC cells"
            e2e["note"] = (
                f"crop, normalise, network, softmax on {where}; {e2e['images_per_s'] / net_row['images_per_s']:.0%} "
                "of the network-only rate"
            )
            results += [net_row, e2e]
    return results


#: starts ``argv[2:]`` from a small interpreter and writes that one child's peak RSS (``RUSAGE_CHILDREN``)
#: to ``argv[1]``: a child forked from this big process would inherit its high-water mark
_LAUNCHER = (
    "import os, resource, sys; code = os.spawnv(os.P_WAIT, sys.argv[2], sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)"
)


def run_process(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[float, float | None]:
    """Run ``cmd`` (``cmd[0]`` an executable path) to its end; (wall seconds, peak resident memory of
    that process in MiB, or None where the OS has no ``resource``). Its stdout and stderr go to ``log``."""
    import subprocess

    rss_file = log.with_suffix(".maxrss")
    try:
        import resource  # noqa: F401 - POSIX only

        argv = [sys.executable, "-c", _LAUNCHER, str(rss_file), *cmd]
    except ImportError:
        argv = cmd
    with open(log, "w") as f:
        t0 = time.perf_counter()
        code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        wall = time.perf_counter() - t0
    if code:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {code}: {tail[0]}")
    if not rss_file.is_file():
        return wall, None
    return wall, int(rss_file.read_text()) / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


def bench_processes(
    ckpt: Path, data: Path, n: int, runs: int, imgsz: int, tmp: Path, threads: int | None, say: Callable[[str], None]
) -> tuple[list[dict], dict]:
    """(f): wall time and peak memory of ``blastscope predict`` and of ``scripts/opencv_dnn_predict.py``
    on the first ``n`` BCCD smears, each process run ``runs`` times (the least time and memory count)."""
    import shutil

    from blastscope.models import resolve_weights

    folder = tmp / f"bccd-{n}"
    folder.mkdir()
    for p in sorted((data / "JPEGImages").glob("*.jpg"))[:n]:
        try:
            (folder / p.name).symlink_to(p.resolve())
        except OSError:
            shutil.copyfile(p, folder / p.name)
    env = dict(os.environ, BLASTSCOPE_ONNX_CACHE=str(tmp / "onnx-cache"), PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cfg, weights = resolve_weights("yolov3-tiny-coco-cfg"), resolve_weights("yolov3-tiny-coco")
    jobs = {
        "blastscope predict": lambda k: [
            *(sys.executable, "-m", "blastscope", "predict", str(ckpt), str(folder)),
            *("--out", str(tmp / f"predict-{k}"), "--imgsz", str(imgsz), "--no-draw", "--no-progress"),
        ],
        "scripts/opencv_dnn_predict.py": lambda k: [
            *(sys.executable, str(REPO / "scripts" / "opencv_dnn_predict.py"), str(cfg), str(weights), str(folder)),
            *("--out", str(tmp / f"opencv-{k}.csv"), "--imgsz", str(imgsz)),
            *(("--threads", str(threads)) if threads else ()),
        ],
    }
    walls: dict[str, list[float]] = {name: [] for name in jobs}
    rss: dict[str, list[float]] = {name: [] for name in jobs}
    for k in range(runs):
        for name, cmd in jobs.items():
            say(f"process {k + 1}/{runs}: {name} on {n} BCCD smears")
            wall, mem = run_process(cmd(k), tmp / f"{name.split('/')[-1]}-{k}.log", env)
            walls[name].append(wall)
            if mem is not None:
                rss[name].append(mem)
    a, b = jobs
    ratio = {
        "wall": min(walls[a]) / min(walls[b]),
        "max_rss": min(rss[a]) / min(rss[b]) if rss[a] and rss[b] else None,
    }
    what = {
        a: f"(f) process: blastscope predict --no-draw (default backend), {n} BCCD smears",
        b: f"(f) process: scripts/opencv_dnn_predict.py (OpenCV DNN darknet), {n} BCCD smears",
    }
    results = []
    for name in jobs:
        best = min(walls[name])
        peak = min(rss[name]) if rss[name] else None
        runs_note = (
            f"the least of {runs} runs ({', '.join(f'{t:.1f} s' for t in walls[name])}; "
            f"{', '.join(f'{m:.0f}' for m in rss[name])} MiB)"
            if runs > 1
            else "one run"
        )
        note = f"whole process: start, imports, model load, {n} JPEGs read, detect, CSV; peak RSS " + (
            f"{peak:.0f} MiB" if peak is not None else "n/a"
        )
        note += f"; {runs_note}"
        if name == a:
            note += "; the first run also exports ONNX to the cache (and checks it) unless the backend is torch"
            note += f"; {ratio['wall']:.2f}x the wall time" + (
                f" and {ratio['max_rss']:.2f}x the peak RSS of the OpenCV script" if ratio["max_rss"] else " of the OpenCV script"
            )
        results.append(
            {
                "what": what[name],
                "batch": n,
                "images_per_s": n / best,
                "ms_per_batch": 1000 * best,
                "iters": runs,
                "times_s": walls[name],
                "max_rss_mib": peak,
                "max_rss_mib_runs": rss[name],
                "note": note,
            }
        )
    return results, ratio


def bench_paper(tmp: Path, *, epochs: int, imgsz: int, per_class: int, say: Callable[[str], None]) -> dict:
    """(g): wall time of the paper arm of ``blastscope reproduce`` on SYNTHETIC cells: the process is
    started as a user would and stopped when it reaches the patient arm ("[5/6]")."""
    import re
    import subprocess

    cmd = [
        *(sys.executable, "-m", "blastscope", "reproduce", "--out", str(tmp / "reproduce")),
        *("--epochs", str(epochs), "--imgsz", str(imgsz), "--per-class", str(per_class), "--no-progress"),
    ]
    what = f"(g) blastscope reproduce, paper arm only: {2 * per_class} SYNTHETIC cells, {epochs} epoch{'s' * (epochs != 1)}, {imgsz} px"
    say(f"paper protocol: {' '.join(cmd[2:])} (stopped at the patient arm)")
    marks: dict[int, float] = {}
    log = tmp / "reproduce.stderr"
    with open(log, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            for line in proc.stdout:
                step = re.match(r"\[(\d)/6\]", line)
                if step:
                    marks[int(step.group(1))] = time.perf_counter() - t0
                    if int(step.group(1)) >= 5:
                        break
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait()
    if 5 not in marks:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return row(what, 2 * per_class, None, f"failed: {tail[0]}")
    wall = marks[5]
    note = (
        f"wall {wall:.1f} s from process start to the end of the paper arm's evaluation: "
        f"start, data, draw and VOC boxes {marks.get(4, math.nan):.1f} s, training and evaluation {wall - marks.get(4, math.nan):.1f} s"
    )
    return {
        "what": what,
        "batch": 2 * per_class,
        "images_per_s": None,
        "ms_per_batch": 1000 * wall,
        "iters": 1,
        "wall_s": wall,
        "phases_s": {str(k): v for k, v in sorted(marks.items())},
        "note": note,
    }


def markdown(results: list[dict], meta: dict) -> str:
    v = meta["versions"]
    lines = [
        f"## blastscope benchmark ({'quick' if meta['quick'] else 'full'} run, {meta['imgsz']} px, real BCCD images)",
        "",
        f"- CPU: {meta['cpu']} ({meta['cpu_count']} logical CPUs); threads: torch {meta['torch_threads']}, "
        f"onnxruntime {meta['onnxruntime_threads']}, OpenCV {meta['opencv_threads']}",
        f"- python {v['python']}, blastscope {v['blastscope']}, torch {v['torch']}, torchvision {v['torchvision']}, "
        f"onnxruntime {v['onnxruntime']}, openvino {v.get('openvino', 'n/a')}, opencv {v['opencv']}, numpy {v['numpy']}",
        f"- ONNX export: {meta['onnx_export']}",
        f"- the default back-end (``--backend auto``) runs the export with: {meta['default_runtime']} "
        "(OpenVinoModel: OpenVINO, rows '(c) openvino'; OnnxModel: onnxruntime)",
        f"- images/s = batch / median time per iteration, warm-up excluded; total run {meta['seconds']} s",
        f"- (e) the cell classifier, {meta['classifier']}: an image is one cell",
        "- (f), (g) whole processes: batch = images in the run, ms / batch = the process's wall time",
        f"- load average (1 min): {meta['loadavg_1min_start']} before the run, {meta['loadavg_1min_end']} at its end"
        + (
            " (other processes were busy on this CPU: the rates are lower bounds, compare rows of one run only)"
            if (meta["loadavg_1min_start"] or 0) > 0.5
            else ""
        ),
        "",
        "| measurement | batch | images/s | ms / batch | iters | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ips = f"{r['images_per_s']:.2f}" if r["images_per_s"] is not None else "n/a"
        ms = f"{r['ms_per_batch']:.1f}" if r["ms_per_batch"] is not None else "n/a"
        lines.append(f"| {r['what']} | {r['batch']} | {ips} | {ms} | {r['iters']} | {r['note']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
