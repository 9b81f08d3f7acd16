"""Open the desktop app: detect ALL/HEM cells in an image (or a folder to step through), a video
file or a live camera, with boxes, a table of detections, counts per class and CSV export.

The app starts offline. It remembers the last model and confidence threshold; --model and --conf
override them. Needs PySide6: pip install 'blastscope[gui]'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "open the desktop app (image, video and camera detection with a live table and CSV export)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, default=None, metavar="CKPT", help="detector checkpoint (.pt) to load (default: the last one used)"
    )
    parser.add_argument(
        "--classifier",
        type=Path,
        default=None,
        metavar="CKPT",
        help="cell classifier checkpoint: classify each white cell the detector finds (two stages)",
    )
    parser.add_argument(
        "--conf", type=float, default=None, help="confidence threshold, 0.01..1 (default: the last one used, else 0.25)"
    )


def check_display(environ=None, platform: str | None = None) -> None:
    """Raise :class:`BlastscopeError` when Qt would find no display (it aborts the process instead).

    Only Linux and other X11/Wayland systems need one; a ``QT_QPA_PLATFORM`` other than ``xcb`` or
    ``wayland`` (``offscreen``, ``vnc``, ...) needs none.
    """
    import os
    import sys

    from blastscope._problems import BlastscopeError

    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform.startswith(("win", "darwin", "cygwin")):
        return
    qpa = environ.get("QT_QPA_PLATFORM", "").split(":")[0].strip()
    if qpa and not qpa.startswith(("xcb", "wayland")):
        return
    if environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return
    raise BlastscopeError(
        "no display found (DISPLAY and WAYLAND_DISPLAY are not set), so the desktop app cannot open a window; "
        "run it on a desktop session, over X forwarding (ssh -X HOST, then blastscope gui), or without a screen "
        "with QT_QPA_PLATFORM=offscreen blastscope gui"
    )


def run(args: argparse.Namespace) -> int:
    from blastscope._problems import BlastscopeError

    if args.conf is not None and not 0.01 <= args.conf <= 1.0:
        raise BlastscopeError(f"--conf {args.conf}: must be between 0.01 and 1")
    if args.model is not None and not args.model.is_file():
        raise BlastscopeError(f"{args.model}: checkpoint not found; give a runs/NAME/best.pt (or last.pt) path")
    try:
        import PySide6  # noqa: F401
    except ImportError:
        raise BlastscopeError(
            "the desktop app needs PySide6, which is not installed; install it with: pip install 'blastscope[gui]'"
        ) from None
    if args.classifier is not None and not args.classifier.is_file():
        raise BlastscopeError(f"{args.classifier}: classifier checkpoint not found; give a runs/NAME/best.pt path")
    if args.classifier is not None and args.model is None:
        raise BlastscopeError("--classifier: needs --model, the detector whose white cells it classifies")
    check_display()
    from blastscope.gui.app import run_app

    return run_app(model=args.model, conf=args.conf, classifier=args.classifier)
