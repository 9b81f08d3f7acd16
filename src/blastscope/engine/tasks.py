"""The task-specific half of training: data, model, loss and validation metrics of one task.

:func:`blastscope.engine.trainer.train` knows nothing about boxes or labels; it asks a
:class:`Task` for

* ``build_datasets(config, manifest, classes, log) -> (train_ds, val_ds)`` (datasets with
  ``set_epoch(epoch)``, ``collate_fn`` batching them, ``train_sampler`` optionally re-weighting),
* ``build_model(config, classes, pretrained) -> nn.Module`` (through ``create_model``),
* ``loss(model, batch, device) -> (loss, parts)`` for one training batch,
* ``evaluate(model, loader, config, device) -> {"val_loss": ..., metric: ...}`` under
  ``torch.inference_mode()``,
* the names of the loss parts, of the metrics for ``metrics.csv`` and of the metric that picks
  ``best.pt`` (higher is better).

Adding a task (classification) is a new subclass registered in :data:`TASKS`; the trainer does
not change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from blastscope._problems import BlastscopeError, ProblemLog

__all__ = ["Task", "DetectTask", "TASKS", "get_task"]


class Task:
    """Base class: what :func:`~blastscope.engine.trainer.train` needs from a task."""

    name: ClassVar[str] = ""
    #: parts of the training loss reported as ``train_<part>`` columns
    loss_parts: ClassVar[tuple[str, ...]] = ()
    #: validation metrics written to ``metrics.csv`` (after ``val_loss``)
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: the metric that selects ``best.pt``; higher is better
    best_metric: ClassVar[str] = ""

    def check_config(self, config: Any) -> None:
        """Raise :class:`BlastscopeError` for settings this task cannot use."""

    def build_datasets(self, config: Any, manifest: pd.DataFrame, classes: Sequence[str], log: ProblemLog):
        raise NotImplementedError

    def model_kwargs(self, config: Any) -> dict[str, Any]:
        """Extra ``create_model`` keyword arguments (plain data; recorded in checkpoints)."""
        return {}

    def build_model(self, config: Any, classes: Sequence[str], *, pretrained: bool) -> nn.Module:
        from blastscope.models.registry import create_model

        model = create_model(
            config.model, num_classes=len(classes), class_names=list(classes), pretrained=pretrained, **self.model_kwargs(config)
        )
        if model.info.task != self.name:
            raise BlastscopeError(
                f"{config.model}: a '{model.info.task}' model, but the task is '{self.name}'; "
                f"pass --task {model.info.task} or choose a {self.name} model"
            )
        return model

    @staticmethod
    def collate_fn(batch):
        from torch.utils.data import default_collate

        return default_collate(batch)

    def train_sampler(self, dataset, generator: torch.Generator):
        """A sampler for the training loader, or None for a plain shuffle."""
        return None

    def loss(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader, config: Any, device: torch.device) -> dict[str, float]:
        raise NotImplementedError


def _detach_parts(parts: dict[str, Any], names: Sequence[str]) -> dict[str, float]:
    return {k: float(parts[k]) for k in names if k in parts}


class DetectTask(Task):
    """Object detection (YOLO): boxes from the manifest, VOC mAP@0.5 selects the best epoch."""

    name = "detect"
    loss_parts = ("box", "obj", "cls")
    metric_names = ("map50_voc", "map50_voc07", "map50_coco", "map50_95_coco")
    best_metric = "map50_voc"
    stride = 32  # YOLOv3-tiny's coarsest feature map

    def check_config(self, config: Any) -> None:
        if config.imgsz % self.stride:
            raise BlastscopeError(
                f"imgsz {config.imgsz}: must be a multiple of {self.stride} for {config.model}; "
                f"use e.g. --imgsz {max(self.stride, round(config.imgsz / self.stride) * self.stride)}"
            )

    def model_kwargs(self, config: Any) -> dict[str, Any]:
        return {"input_size": int(config.imgsz)}  # sets the objectness prior of fresh heads

    def build_datasets(self, config: Any, manifest: pd.DataFrame, classes: Sequence[str], log: ProblemLog):
        from blastscope.data.dataset import DetectionDataset
        from blastscope.engine.transforms import build_transforms

        def make(split: str, train: bool) -> DetectionDataset:
            return DetectionDataset(
                manifest,
                split,
                classes,
                imgsz=config.imgsz,
                transform=build_transforms(config.imgsz, train=train, augment=config.augment, aug=config.aug, pad_value=config.pad_value),
                auto_boxes=config.auto_boxes,
                seed=config.seed,
                log=log,
                pad_value=config.pad_value,
            )

        return make("train", True), make("val", False)

    @staticmethod
    def collate_fn(batch):
        from blastscope.data.dataset import collate_fn

        return collate_fn(batch)

    @staticmethod
    def _to_device(batch, device: torch.device):
        images, targets = batch
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        return images.to(device, non_blocking=True), targets

    def loss(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = self._to_device(batch, device)
        loss, parts = model.loss(model(images), targets)
        return loss, _detach_parts(parts, self.loss_parts)

    def evaluate(self, model: nn.Module, loader, config: Any, device: torch.device) -> dict[str, float]:
        """Validation loss and VOC / COCO mAP of the letterboxed validation images.

        Boxes are compared in the letterboxed frame (IoU does not change under the letterbox's
        uniform scale). When the loss is not finite the metrics are NaN and not computed.
        """
        from blastscope.metrics.detection import evaluate_detections

        model.eval()
        total, n = 0.0, 0
        preds: list[dict[str, np.ndarray]] = []
        gts: list[dict[str, np.ndarray]] = []
        with torch.inference_mode():
            for batch in loader:
                images, targets = self._to_device(batch, device)
                raw = model(images)
                loss, _ = model.loss(raw, targets)
                total += float(loss) * len(images)
                n += len(images)
                if not math.isfinite(total):
                    break
                for p in model.predict(raw, conf=config.val_conf, iou=config.val_iou, max_det=config.max_det):
                    preds.append({k: p[k].detach().cpu().numpy() for k in ("boxes", "scores", "labels")})
                gts.extend({"boxes": t["boxes"].cpu().numpy(), "labels": t["labels"].cpu().numpy()} for t in targets)
        out = {"val_loss": total / max(n, 1)}
        if not math.isfinite(out["val_loss"]):
            return out | dict.fromkeys(self.metric_names, math.nan)
        classes = list(model.info.class_names)
        return out | evaluate_detections(preds, gts, classes).as_dict()


#: task name -> class; ``--task`` chooses from these
TASKS: dict[str, type[Task]] = {"detect": DetectTask}


def get_task(name: str) -> Task:
    """The :class:`Task` registered as ``name`` (BlastscopeError listing the known ones otherwise)."""
    try:
        return TASKS[name]()
    except KeyError:
        raise BlastscopeError(f"task '{name}': unknown; choose one of {', '.join(sorted(TASKS))}") from None
