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
    parser.add_argument("--model", type=Path, default=None, metavar="CKPT",
                        help="detector checkpoint (.pt) to load (default: the last one used)")
    parser.add_argument("--conf", type=float, default=None,
                        help="confidence threshold, 0.01..1 (default: the last one used, else 0.25)")


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
    from blastscope.gui.app import run_app

    return run_app(model=args.model, conf=args.conf)
