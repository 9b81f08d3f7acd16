"""``blastscope`` command-line entry point.

Each command lives in its own module ``blastscope.cli._<name>`` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries (torch, Qt)
inside ``run`` only, so ``blastscope --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from blastscope._problems import BlastscopeError, describe_os_error
from blastscope._version import __version__

__all__ = ["main", "COMMANDS"]

# command name -> module; the order is the order of ``blastscope --help``.
COMMANDS: dict[str, str] = {
    "import": "blastscope.cli._import",
    "split": "blastscope.cli._split",
    "annotate": "blastscope.cli._annotate",
    "convert": "blastscope.cli._convert",
    "synth": "blastscope.cli._synth",
    "train": "blastscope.cli._train",
    "evaluate": "blastscope.cli._evaluate",
    "adapt": "blastscope.cli._adapt",
    "predict": "blastscope.cli._predict",
    "export": "blastscope.cli._export",
    "reproduce": "blastscope.cli._reproduce",
    "weights": "blastscope.cli._weights",
    "gui": "blastscope.cli._gui",
    "demo": "blastscope.cli._demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blastscope",
        description="Computer-aided diagnosis of acute lymphoblastic leukemia from blood-cell images.",
    )
    parser.add_argument("--version", action="version", version=f"blastscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # command not built yet
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=(module.__doc__ or module.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.add_argument(
            "--max-pixels",
            type=_pixel_count,
            default=None,
            metavar="N",
            help="refuse images of more than N pixels (width x height) before decoding them: a decompression "
            "bomb is one skipped file (default: 64e6, or the environment variable BLASTSCOPE_MAX_PIXELS; 0: no limit)",
        )
        p.set_defaults(_run=module.run)
    return parser


def _pixel_count(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pixel count (e.g. 64e6; 0: no limit)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a pixel count cannot be negative")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from blastscope.data.images import set_max_pixels

    set_max_pixels(getattr(args, "max_pixels", None))  # None: the environment's or the default limit
    try:
        return int(args._run(args) or 0)
    except BlastscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a program that stopped reading (``| head``)
        return 141
    except OSError as e:  # a write (or read) the command could not do: the disk, not the code
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
