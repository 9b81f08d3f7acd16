"""blastscope.engine: the training loop, its configuration, transforms and checkpoints.

>>> from blastscope.engine import load_config, train  # doctest: +SKIP
>>> result = train(load_config("my.yaml"))            # doctest: +SKIP

Modules: :mod:`~blastscope.engine.config` (``TrainConfig``, YAML defaults),
:mod:`~blastscope.data.transforms` (box-aware augmentations, letterbox),
:mod:`~blastscope.models.checkpoint` (self-describing checkpoints, ``load_model``),
:mod:`~blastscope.engine.tasks` (what is specific to detection / classification) and
:mod:`~blastscope.engine.trainer` (``train``, ``train_one_epoch``), :mod:`~blastscope.engine.evaluate`
(``evaluate_checkpoint``). Names are imported
lazily, so ``import blastscope.engine.config`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "TrainConfig",
    "load_config",
    "merge_cli",
    "save_config",
    "train",
    "train_one_epoch",
    "RunResult",
    "load_model",
    "load_checkpoint",
    "get_task",
    "cpu_has_native_bf16",
]

_WHERE = {
    "TrainConfig": "config",
    "load_config": "config",
    "merge_cli": "config",
    "save_config": "config",
    "train": "trainer",
    "train_one_epoch": "trainer",
    "RunResult": "trainer",
    "load_model": "checkpoint",
    "load_checkpoint": "checkpoint",
    "get_task": "tasks",
    "cpu_has_native_bf16": "_accel",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"blastscope.engine.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'blastscope.engine' has no attribute {name!r}")
