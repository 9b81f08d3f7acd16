"""blastscope: computer-aided diagnosis of acute lymphoblastic leukemia from blood-cell images.

The Python API (the CLI and the GUI are thin layers over it)::

    import blastscope
    run = blastscope.train("cells.csv", task="classify", epochs=5)   # -> Run (run_dir, best, metrics)
    model = blastscope.load(run.best)                                # detector, classifier, or both
    for result in model.predict("new_cells/"):                       # image, folder, video, camera, array
        print(result.source, result.labels())
    model.export("onnx")
    metrics = blastscope.evaluate(run.best, "cells.csv", split="test")

The pipeline, one sub-package per stage (imports point one way, low to high)::

    data, metrics < models, annotate < inference < engine < api, cli, gui

Names are imported on first use, so ``import blastscope`` is fast and does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope._version import __version__

__all__ = ["train", "load", "evaluate", "Run", "Model", "Metrics", "BlastscopeError", "ProblemLog", "__version__"]

_API = {"train", "load", "evaluate", "Run", "Model", "Metrics"}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("blastscope.api"), name)
    raise AttributeError(f"module 'blastscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
