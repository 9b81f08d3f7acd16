"""Make the GUI screenshots of README.md and docs/gui.md with models trained on real data.

The pictures show the app with a detector trained on the real BCCD smears (RBC, WBC, Platelets)
and, for white cells, a classifier trained on the real PBC sample (7 white-cell classes):

* ``gui_image.png``   image mode, a BCCD *test-split* smear (not trained on), detector + classifier;
* ``gui_cell.png``    image mode, a real C-NMC sample cell, the same models;
* ``gui_video.png``   video mode, a short video of BCCD test-split smears, paused on frame 3;
* ``gui_camera.png``  camera mode on a machine without a camera (index 99): the message it gives.

Paths in the window (status bar, labels) are short relative ones: the script works inside
``--work`` and copies the models and images there under plain names, so no temporary-folder path
shows. The user's GUI settings are not touched (a settings file in ``--work``). The toy models of
the tests are not used here.

Usage (from the repository root)::

    # with models you have trained already
    python scripts/make_screenshots.py --detector runs/bccd/best.pt --classifier runs/pbc/best.pt \\
        --out docs/screenshots
    # or train them first with the README's commands (CPU: roughly an hour, most of it the detector)
    python scripts/make_screenshots.py --train --out docs/screenshots

Needs PySide6 (``pip install 'blastscope[gui]'``) and runs headless with ``QT_QPA_PLATFORM=offscreen``
(set here when no display is found). Real data from ``--shared-data`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 120.0


def _blastscope(*argv: str, cwd: Path) -> None:
    """Run one ``blastscope`` command (this checkout's code) and stop the script if it fails."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    print("+ blastscope " + " ".join(argv), flush=True)
    proc = subprocess.run([sys.executable, "-m", "blastscope.cli.main", *argv], cwd=cwd, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"blastscope {argv[0]} failed (exit {proc.returncode}); see its message above")


def train_models(shared: Path, work: Path, *, epochs_det: int, epochs_cls: int) -> tuple[Path, Path]:
    """Train the BCCD detector and the PBC classifier with the README's commands; return best.pt of each."""
    det, cls = work / "runs" / "bccd" / "best.pt", work / "runs" / "pbc" / "best.pt"
    if not det.is_file():
        _blastscope("import", str(shared / "bccd"), "--out", "bccd.csv", "--overwrite", "--no-progress", cwd=work)
        _blastscope(
            "train",
            "--task",
            "detect",
            "--data",
            "bccd.csv",
            "--model",
            "yolov3-tiny",
            "--epochs",
            str(epochs_det),
            "--imgsz",
            "416",
            "--batch",
            "8",
            "--out",
            "runs/bccd",
            "--exist-ok",
            "--no-progress",
            cwd=work,
        )
    if not cls.is_file():
        _blastscope("import", str(shared / "pbc-sample"), "--out", "pbc.csv", "--overwrite", "--no-progress", cwd=work)
        _blastscope(
            "train",
            "--task",
            "classify",
            "--model",
            "mobilenet_v2",
            "--data",
            "pbc.csv",
            "--epochs",
            str(epochs_cls),
            "--imgsz",
            "128",
            "--out",
            "runs/pbc",
            "--exist-ok",
            "--no-progress",
            cwd=work,
        )
    return det, cls


def _bccd_test_images(bccd: Path, n: int) -> list[Path]:
    """The first ``n`` images of BCCD's test split (ImageSets/Main/test.txt), else the last ones."""
    listing = bccd / "ImageSets" / "Main" / "test.txt"
    images = bccd / "JPEGImages"
    if listing.is_file():
        stems = [s.strip() for s in listing.read_text().split() if s.strip()]
        found = [images / f"{s}.jpg" for s in stems if (images / f"{s}.jpg").is_file()]
        if found:
            return found[:n]
    return sorted(images.glob("*.jpg"))[-n:]


def _write_video(frames: list[Path], path: Path, size=(640, 480), fps: float = 2.0) -> Path:
    import cv2

    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not vw.isOpened():
        raise SystemExit(f"{path}: OpenCV cannot write an MJPG video here")
    for p in frames:
        vw.write(cv2.resize(cv2.imread(str(p)), size, interpolation=cv2.INTER_AREA))
    vw.release()
    return path


def _wait(app, condition, what: str) -> None:
    """Process Qt events until ``condition()`` holds (or stop the script after WAIT_S seconds)."""
    end = time.monotonic() + WAIT_S
    while not condition():
        app.processEvents()
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)
    for _ in range(20):  # let the last paint happen
        app.processEvents()
        time.sleep(0.01)


def make_screenshots(detector: Path, classifier: Path | None, shared: Path, work: Path, out: Path, conf: float) -> list[Path]:
    """Open the app on real images and save the four screenshots into ``out``; return their paths."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(REPO / "src"))
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from blastscope.gui import MainWindow
    from blastscope.inference.predictor import Predictor

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    models, smears = work / "models", work / "smears"
    models.mkdir(parents=True, exist_ok=True)
    smears.mkdir(parents=True, exist_ok=True)
    det = shutil.copy(detector, models / "bccd_yolov3-tiny.pt")
    cls = shutil.copy(classifier, models / "pbc_mobilenet_v2.pt") if classifier else None
    test_images = _bccd_test_images(shared / "bccd", 6)
    if not test_images:
        raise SystemExit(f"{shared / 'bccd'}: no BCCD images found; pass --shared-data")
    smear = Path(shutil.copy(test_images[0], smears / test_images[0].name))
    cells = sorted((shared / "cnmc-sample").rglob("*.bmp"))
    cell = Path(shutil.copy(cells[0], smears / cells[0].name)) if cells else None
    video = _write_video(test_images, smears / "bccd_test_smears.avi")

    os.chdir(work)  # relative paths in the window: models/..., smears/...
    app = QApplication.instance() or QApplication(sys.argv[:1])
    settings = QSettings(str(work / "blastscope-gui.ini"), QSettings.Format.IniFormat)
    settings.clear()
    window = MainWindow(settings, dialogs=False)
    window.resize(1200, 720)
    window.show()
    window.set_confidence(conf)
    window.load_model(Path("models") / Path(det).name)
    _wait(app, lambda: window.predictor is not None and window._loading is None, "the detector to load")
    if cls is not None:
        # the app loads a detector; the two-stage predictor (each WBC classified) is set the same way
        # 'blastscope predict --classifier' builds it
        window.predictor = Predictor.from_checkpoint(
            Path("models") / Path(det).name, conf=window.conf, classifier=Path("models") / Path(cls).name
        )
        window._update_model_label()
    written = []

    def shot(name: str) -> None:
        path = out / name
        window.grab().save(str(path))
        written.append(path)
        print(f"wrote {path}")

    window.open_image(Path("smears") / smear.name)
    _wait(app, lambda: window.current_result("image") is not None, "the smear's prediction")
    shot("gui_image.png")
    if cell is not None:
        window.open_image(Path("smears") / cell.name)
        _wait(
            app,
            lambda: window.current_result("image") is not None and Path(window.current_result("image").source).name == cell.name,
            "the cell's prediction",
        )
        shot("gui_cell.png")
    window.open_video(Path("smears") / video.name)
    _wait(app, lambda: window.current_result("video") is not None, "the first video frame")
    window.seek(3)
    _wait(app, lambda: window.current_result("video") is not None and window.current_result("video").frame == 3, "video frame 3")
    shot("gui_video.png")
    n = len(window.messages)
    window.start_camera(99)
    _wait(app, lambda: len(window.messages) > n and window.camera_panel.start_button.isEnabled(), "the camera message")
    shot("gui_camera.png")
    window.close()
    window.wait_idle(10)
    return written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detector", type=Path, help="detector trained on BCCD (runs/bccd/best.pt)")
    p.add_argument("--classifier", type=Path, help="classifier trained on PBC (runs/pbc/best.pt); optional")
    p.add_argument("--train", action="store_true", help="train the two models first (README commands) in --work")
    p.add_argument("--epochs-detector", type=int, default=20, help="with --train (default 20, as the README)")
    p.add_argument("--epochs-classifier", type=int, default=12, help="with --train (default 12, as the README)")
    p.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument(
        "--work",
        type=Path,
        default=REPO / "runs" / "screenshots",
        help="working folder: trained runs, copied models and images (default runs/screenshots, git-ignored)",
    )
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    p.add_argument("--conf", type=float, default=0.35, help="confidence threshold shown (default 0.35)")
    args = p.parse_args()
    shared, work = args.shared_data.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.train:
        args.detector, trained_cls = train_models(
            shared, work, epochs_det=args.epochs_detector, epochs_cls=args.epochs_classifier
        )
        args.classifier = args.classifier or trained_cls
    if args.detector is None or not args.detector.is_file():
        raise SystemExit("give --detector runs/bccd/best.pt (a detector trained on BCCD), or pass --train")
    sys.path.insert(0, str(REPO / "src"))
    from blastscope._problems import BlastscopeError
    from blastscope.models.checkpoint import load_checkpoint

    for path in (args.detector, args.classifier):
        try:
            epoch = int(load_checkpoint(path).get("epoch", 0)) if path is not None else None
        except BlastscopeError as e:
            raise SystemExit(f"error: {e}") from None
        if epoch == 0:
            raise SystemExit(
                f"{path}: an untrained checkpoint (epoch 0); the screenshots need models trained on "
                "real data (the toy models of the tests stay in the tests)"
            )
    make_screenshots(
        args.detector.resolve(), args.classifier.resolve() if args.classifier else None, shared, work, args.out, args.conf
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
