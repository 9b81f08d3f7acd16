"""Self-describing checkpoints: plain data that ``torch.load(path, weights_only=True)`` accepts.

A checkpoint is a dict::

    {
      "format": "blastscope-checkpoint/1",
      "model": {"arch", "task", "class_names", "input_size", "mean", "std", "kwargs"},
      "state_dict": {name: tensor},
      "epoch": int,                # 1-based number of the completed epoch (0: not trained)
      "metrics": {name: float},    # that epoch's metrics.csv row and per-class values
      "config": {...},             # the TrainConfig as a plain nested dict
      "optimizer": {...} | None,   # optimizer.state_dict()
      "scheduler": {...} | None,   # scheduler.state_dict()
      "rng": {...} | None,         # python / numpy / torch RNG states (exact resume)
      "best_metric": float | None, # best validation value so far (of config's task's metric)
      "best_epoch": int | None,    # the epoch that reached it
    }

``model.input_size`` is the size the model was *trained* at (the run's ``imgsz``), which is what
prediction must letterbox to. :func:`load_model` rebuilds the network from the checkpoint alone
through :func:`blastscope.models.create_model`, so ``predict`` and ``evaluate`` need only the path.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blastscope._atomic import atomic_save_torch
from blastscope._problems import BlastscopeError
from blastscope.models.record import CHECKPOINT_FORMAT
from blastscope.models.registry import create_model

__all__ = [
    "FORMAT",
    "make_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "get_rng_state",
    "set_rng_state",
]

FORMAT = CHECKPOINT_FORMAT


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global) and torch CPU RNG states as plain data."""
    np_state = np.random.get_state(legacy=False)
    version, py_state, gauss = random.getstate()
    return {
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python numbers, recursively (YAML- and weights_only-safe)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def make_checkpoint(
    model: torch.nn.Module,
    *,
    epoch: int,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    input_size: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    rng: dict[str, Any] | None = None,
    best_metric: float | None = None,
    best_epoch: int | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of ``model`` (which must carry ``model.info`` from ``create_model``).

    ``input_size`` overrides ``model.info.input_size`` (the training ``imgsz``).
    """
    info = getattr(model, "info", None)
    if info is None:
        raise ValueError("model has no .info; build it with blastscope.models.create_model")
    meta = _plain(dataclasses.asdict(info))
    if input_size is not None:
        meta["input_size"] = int(input_size)
    return {
        "format": FORMAT,
        "model": meta,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "epoch": int(epoch),
        "metrics": _plain(dict(metrics or {})),
        "config": _plain(dict(config or {})),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng,
        "best_metric": None if best_metric is None else float(best_metric),
        "best_epoch": None if best_epoch is None else int(best_epoch),
    }


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write ``ckpt`` atomically (a killed process leaves the previous file intact)."""
    atomic_save_torch(ckpt, path)
    return Path(path)


def load_checkpoint(path: str | Path, *, task: str | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a blastscope checkpoint with ``weights_only=True`` (no code is unpickled).

    Raises
    ------
    BlastscopeError
        Missing file, not a torch file, pickled objects, another format (a darknet ``.weights``, a
        bare state dict, an ultralytics ``.pt``) or, when ``task`` is given, a checkpoint of
        another task. The message names the file and the fix.
    """
    path = Path(path)
    if path.suffix.lower() in (".weights", ".cfg"):
        raise BlastscopeError(
            f"{path}: a darknet file, not a blastscope checkpoint; train on it with "
            "'blastscope train --model yolov3-tiny' (pretrained weights load automatically) and use runs/NAME/best.pt"
        )
    if not path.is_file():
        raise BlastscopeError(f"{path}: checkpoint not found; give a runs/NAME/best.pt (or last.pt) path")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] != b"\x80" and head != b"PK":  # neither a (truncated) zip archive nor a pickle stream
            what = "an empty file" if not head else "random bytes or text"
            raise BlastscopeError(
                f"{path}: not a torch checkpoint at all ({what}, not a torch zip archive); the file is damaged "
                "or of another kind: use a runs/NAME/best.pt written by 'blastscope train'"
            )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # a broken stream, not a refused object
            raise BlastscopeError(
                f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0]}); the file is truncated or "
                "of another kind: use a runs/NAME/best.pt written by 'blastscope train'"
            ) from None
        raise BlastscopeError(
            f"{path}: holds pickled Python objects, which blastscope does not load ({str(e).splitlines()[0]}); "
            "it is not a blastscope checkpoint: use a runs/NAME/best.pt written by 'blastscope train'"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise BlastscopeError(
            f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "the file is truncated or of another kind: use a runs/NAME/best.pt written by 'blastscope train'"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        kind = (
            "a bare state dict"
            if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
            else (f"format {ckpt.get('format')!r}" if isinstance(ckpt, dict) and "format" in ckpt else f"a {type(ckpt).__name__}")
        )
        raise BlastscopeError(
            f"{path}: not a blastscope checkpoint ({kind}, expected format {FORMAT!r}); "
            "use a runs/NAME/best.pt or last.pt written by 'blastscope train'"
        )
    ckpt_task = ckpt.get("model", {}).get("task")
    if task is not None and ckpt_task != task:
        raise BlastscopeError(
            f"{path}: a '{ckpt_task}' checkpoint where a '{task}' one is needed; "
            f"give a checkpoint trained with 'blastscope train --task {task}'"
        )
    return ckpt


def load_model(
    path: str | Path, *, task: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint and load its weights.

    Returns
    -------
    model : nn.Module
        In eval mode, on ``map_location``; ``model.info.input_size`` is the training size.
    ckpt : dict
        The checkpoint (see the module docstring).
    """

    ckpt = load_checkpoint(path, task=task, map_location=map_location)
    meta = ckpt["model"]
    names = list(meta["class_names"])
    kwargs = dict(meta.get("kwargs") or {})
    try:
        model = create_model(meta["arch"], num_classes=len(names), class_names=names, pretrained=False, **kwargs)
    except TypeError as e:  # model arguments the architecture does not take (a hand-edited or foreign file)
        raise BlastscopeError(
            f"{path}: its model arguments {sorted(kwargs)} do not fit the '{meta['arch']}' architecture "
            f"({str(e).splitlines()[0]}); re-train, or use the blastscope version that wrote it"
        ) from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:  # state dict of another shape: the registry's model changed
        raise BlastscopeError(
            f"{path}: its weights do not fit the '{meta['arch']}' model of this blastscope version "
            f"({str(e).splitlines()[0]}); re-train or use the blastscope version that wrote it"
        ) from None
    model.info.input_size = int(meta.get("input_size", model.info.input_size))
    model.to(map_location)
    model.eval()
    return model, ckpt
