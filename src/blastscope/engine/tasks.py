"""The task-specific half of training: data, model, loss and validation metrics of one task.

:func:`blastscope.engine.trainer.train` knows nothing about boxes or labels; it asks a
:class:`Task` for

* ``build_datasets(config, manifest, classes, log) -> (train_ds, val_ds)`` (datasets with
  ``set_epoch(epoch)``, ``collate_fn`` batching them, ``train_sampler`` optionally re-weighting),
* ``build_model(config, classes, pretrained) -> nn.Module`` (through ``create_model``),
* ``loss(model, batch, device) -> (loss, parts)`` for one training batch (``model`` may be a
  ``DistributedDataParallel`` wrapper: forward through it, read attributes from :func:`unwrap`),
* ``evaluate(model, loader, config, device) -> {"val_loss": ..., metric: ...}`` under
  ``torch.inference_mode()``,
* the names of the loss parts, of the metrics for ``metrics.csv`` and of the metric that picks
  ``best.pt`` (higher is better).

Adding a task is a new subclass registered in :data:`TASKS`; the trainer does not change.
:class:`DetectTask` trains YOLO detectors, :class:`ClassifyTask` cell classifiers.

A task may carry ``defaults``: settings that suit it better than the shared ones of
``configs/default.yaml`` (which are tuned for detection). :func:`apply_task_defaults` puts them into
a config for the keys the user did not set (``blastscope train`` does this).
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
from blastscope.annotate.autobox import cell_box
from blastscope.annotate.finder import cell_box_function, cells_record
from blastscope.data.dataset import ClassificationDataset, DetectionDataset, collate_fn
from blastscope.data.preprocess import Preprocess
from blastscope.data.stain import fit_reinhard_target, stain_norm_target
from blastscope.data.transforms import build_transforms
from blastscope.metrics.calibration import expected_calibration_error, fit_temperature, select_threshold, softmax
from blastscope.metrics.detection import evaluate_detections
from blastscope.models.registry import create_model

__all__ = ["Task", "unwrap", "DetectTask", "ClassifyTask", "TASKS", "get_task", "apply_task_defaults", "classification_scores"]


class Task:
    """Base class: what :func:`~blastscope.engine.trainer.train` needs from a task."""

    name: ClassVar[str] = ""
    #: parts of the training loss reported as ``train_<part>`` columns
    loss_parts: ClassVar[tuple[str, ...]] = ()
    #: validation metrics written to ``metrics.csv`` (after ``val_loss``)
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: the metric that selects ``best.pt``; higher is better
    best_metric: ClassVar[str] = ""
    #: what one training sample is, for messages ("images", "cells")
    sample_noun: ClassVar[str] = "images"
    #: validation runs in the training precision (bf16 autocast when the run trains in bf16); False:
    #: always in fp32 (a classifier's calibration must fit the fp32 inference of predict)
    validate_in_training_precision: ClassVar[bool] = False

    def check_config(self, config: Any) -> None:
        """Raise :class:`BlastscopeError` for settings this task cannot use."""

    def build_datasets(self, config: Any, manifest: pd.DataFrame, classes: Sequence[str], log: ProblemLog):
        raise NotImplementedError

    def model_kwargs(self, config: Any) -> dict[str, Any]:
        """Extra ``create_model`` keyword arguments (plain data; recorded in checkpoints)."""
        return {}

    def build_model(self, config: Any, classes: Sequence[str], *, pretrained: bool) -> nn.Module:

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

    def checkpoint_extras(self) -> dict[str, Any]:
        """Plain data the task adds to each epoch's checkpoint (e.g. a classifier's calibration)."""
        return {}


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper (or ``model``).

    :meth:`Task.loss` runs the forward pass through the wrapper (which synchronises the gradients)
    and reads the model's own attributes (``info``, ``loss``) from the network.
    """
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _detach_parts(parts: dict[str, Any], names: Sequence[str]) -> dict[str, float]:
    return {k: float(parts[k]) for k in names if k in parts}


class DetectTask(Task):
    """Object detection (YOLO): boxes from the manifest, VOC mAP@0.5 selects the best epoch."""

    name = "detect"
    loss_parts = ("box", "obj", "cls")
    metric_names = ("map50_voc", "map50_voc07", "map50_coco", "map50_95_coco")
    best_metric = "map50_voc"
    stride = 32  # YOLOv3-tiny's coarsest feature map
    #: the epoch's mAP only ranks the epochs (no calibration is fitted on it): in bf16 the forward
    #: pass costs a third of fp32's. Measured on a 5-epoch BCCD run (bf16 training, the same run
    #: validated both ways): val map50_voc per epoch within 0.0063 of fp32's; best.pt became epoch
    #: 4 (fp32 val mAP 0.4440) instead of 5 (0.4447). ``evaluate`` scores best.pt in fp32 as always
    validate_in_training_precision = True

    def check_config(self, config: Any) -> None:
        if config.imgsz % self.stride:
            raise BlastscopeError(
                f"imgsz {config.imgsz}: must be a multiple of {self.stride} for {config.model}; "
                f"use e.g. --imgsz {max(self.stride, round(config.imgsz / self.stride) * self.stride)}"
            )

    def model_kwargs(self, config: Any) -> dict[str, Any]:
        return {"input_size": int(config.imgsz)}  # sets the objectness prior of fresh heads

    def build_datasets(self, config: Any, manifest: pd.DataFrame, classes: Sequence[str], log: ProblemLog):

        def make(split: str, train: bool) -> DetectionDataset:
            return DetectionDataset(
                manifest,
                split,
                classes,
                imgsz=config.imgsz,
                transform=build_transforms(
                    config.imgsz, train=train, augment=config.augment, aug=config.aug, pad_value=config.pad_value
                ),
                box_fn=cell_box if config.auto_boxes else None,
                seed=config.seed,
                log=log,
                pad_value=config.pad_value,
            )

        return make("train", True), make("val", False)

    @staticmethod
    def collate_fn(batch):

        return collate_fn(batch)

    @staticmethod
    def _to_device(batch, device: torch.device):
        images, targets = batch
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        return images.to(device, non_blocking=True), targets

    def loss(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = self._to_device(batch, device)
        raw = [r.float() for r in model(images)]  # under bf16 autocast: the loss in fp32
        loss, parts = unwrap(model).loss(raw, targets)
        return loss, _detach_parts(parts, self.loss_parts)

    def evaluate(self, model: nn.Module, loader, config: Any, device: torch.device) -> dict[str, float]:
        """Validation loss and VOC / COCO mAP of the letterboxed validation images.

        Boxes are compared in the letterboxed frame (IoU does not change under the letterbox's
        uniform scale). When the loss is not finite the metrics are NaN and not computed.
        """

        model.eval()
        total, n = 0.0, 0
        preds: list[dict[str, np.ndarray]] = []
        gts: list[dict[str, np.ndarray]] = []
        with torch.inference_mode():
            for batch in loader:
                images, targets = self._to_device(batch, device)
                raw = [r.float() for r in model(images)]  # decoded in fp32 under bf16 autocast too
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


def classification_scores(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, positive: int | None = None
) -> dict[str, float]:
    """Validation metrics of a classifier from true class indices and class probabilities.

    Parameters
    ----------
    y_true : ndarray, shape (n,), int
        True class indices.
    probs : ndarray, shape (n, C)
        Class probabilities (softmax); the call is the arg-max.
    classes : sequence of str
        Class names, index order.
    positive : int, optional
        Two classes only: the index of the class of interest for ``sensitivity``,
        ``specificity`` and ``roc_auc`` (default 0).

    Returns
    -------
    dict of str to float
        ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present), ``weighted_f1``
        and ``macro_f1`` (over the classes present in truth or calls), ``recall.<class>`` (NaN for
        a class absent from ``y_true``), and with two classes ``sensitivity``, ``specificity`` and
        ``roc_auc`` (NaN when only one class is present). scikit-learn computes them.

    Examples
    --------
    >>> s = classification_scores(np.array([0, 0, 1, 1]), np.array([[.9, .1], [.4, .6], [.2, .8], [.3, .7]]), ["ALL", "HEM"])
    >>> s["accuracy"], s["sensitivity"], s["specificity"], s["roc_auc"]
    (0.75, 0.5, 1.0, 1.0)
    """
    from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    nan = math.nan
    if not len(y):
        return dict.fromkeys(("accuracy", "balanced_accuracy", "weighted_f1", "macro_f1"), nan)
    p = np.asarray(probs, dtype=np.float64).reshape(len(y), -1)
    pred = p.argmax(axis=1)
    present = sorted(set(y.tolist()))
    recalls = recall_score(y, pred, labels=list(range(len(classes))), average=None, zero_division=0)
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(np.mean([recalls[k] for k in present])),
        "weighted_f1": float(f1_score(y, pred, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }
    for k, name in enumerate(classes):
        out[f"recall.{name}"] = float(recalls[k]) if k in present else nan
    if len(classes) == 2:
        pos = 0 if positive is None else int(positive)
        neg = 1 - pos
        out["sensitivity"] = float(recalls[pos]) if pos in present else nan
        out["specificity"] = float(recalls[neg]) if neg in present else nan
        out["roc_auc"] = float(roc_auc_score(y == pos, p[:, pos])) if len(present) == 2 else nan
    return out


class ClassifyTask(Task):
    """Cell classification (MobileNetV2, EfficientNet-Lite0): square cell crops, cross-entropy.

    The data are :class:`blastscope.data.dataset.ClassificationDataset` crops: one per annotated
    box (labelled with the box's class), or the whole image for rows without annotation (labelled
    with the row's label), cut exactly as evaluation and the two-stage predictor cut them
    (:func:`blastscope.data.crops.square_crop`, margin 0.1 of a box's longer side, black padding;
    ``pad_value`` and ``auto_boxes`` are detection settings). Inputs are normalised with the
    model's ``info.mean`` / ``info.std`` here, on the device.

    Class imbalance (``config.balance``): ``"sampler"`` draws training cells with replacement,
    with probability inversely proportional to their class's frequency, so that batches are
    balanced on average (only when the classes are imbalanced, i.e. the largest has more than
    :attr:`IMBALANCE_RATIO` times the cells of the smallest; otherwise it is a plain shuffle);
    ``"loss"`` weights the cross-entropy of class ``c`` by ``n / (C * n_c)``; ``"none"`` does
    neither. The validation loss is always the plain cross-entropy.

    Metrics (``metrics.csv``): ``weighted_f1`` (selects ``best.pt``; the C-NMC 2019 ranking
    metric), ``accuracy``, ``balanced_accuracy``, ``macro_f1``, and for two classes
    ``sensitivity``, ``specificity`` and ``roc_auc`` of the positive class: ``ALL`` when it is one
    of the classes, else the first class. Per-class recalls go into the checkpoints' ``metrics``.
    """

    name = "classify"
    sample_noun = "cells"
    loss_parts = ("ce",)
    metric_names: tuple[str, ...] = ("weighted_f1", "accuracy", "balanced_accuracy", "macro_f1")
    best_metric = "weighted_f1"
    #: the largest class must have more than this many times the cells of the smallest for the
    #: ``sampler`` balance to re-weight (a balanced set is shuffled as usual)
    IMBALANCE_RATIO = 1.2
    #: training cells (evenly spaced) whose LAB statistics make the template of ``stain_norm: reinhard``
    STAIN_TEMPLATE_CELLS = 256
    #: grey level where a crop leaves the image: black, as :class:`CropClassifier` pads
    PAD_VALUE = 0
    #: settings that replace the shared (detection) defaults when the user did not set them.
    #: Measured with MobileNetV2 on the PBC sample (7 classes, 756 training cells, 10 epochs at
    #: 224 px, accuracy on the 280 test cells): AdamW lr 1e-3 0.982 and 0.961 (seeds 0 and 1),
    #: SGD lr 0.01 momentum 0.9 0.982, AdamW lr 3e-4 0.954, without augmentation 0.964, and the
    #: shared detection settings (SGD lr 0.01, momentum 0.937, weight decay 5e-4, batch 8) 0.943.
    #: The input size is the PBC lab-shift benchmark's (scripts/bench_shifts.py, the default
    #: augmentation): 160 px (8 epochs) clean 0.964, mean over 18 shifted sets 0.942, worst 0.843;
    #: 224 px (10 epochs) 0.957 / 0.901 / 0.664 (with the earlier augmentation 0.964 / 0.936 / 0.729
    #: against 0.936 / 0.903 / 0.575): the smaller input holds up better in other labs
    defaults: ClassVar[dict[str, Any]] = {
        "model": "mobilenet_v2",
        "imgsz": 160,
        "batch": 32,
        "epochs": 12,
        "optimizer": "adamw",
        "lr": 0.001,
        "momentum": 0.9,
        "weight_decay": 0.01,
    }

    def __init__(self) -> None:
        self.balance = "sampler"
        self.class_weights: torch.Tensor | None = None
        self.positive: int | None = None
        self.calibration: dict[str, Any] = {}

    def check_config(self, config: Any) -> None:
        # no multiple-of-32 rule: the classifiers pool globally (TrainConfig checks imgsz >= 32)
        if config.auto_boxes:
            raise BlastscopeError(
                "auto_boxes: a detection setting; a classifier trains on the whole images of rows without "
                "annotation (as it is evaluated), or on annotated boxes: drop --auto-boxes, or box the cells "
                "first with 'blastscope annotate'"
            )

    def build_datasets(self, config: Any, manifest: pd.DataFrame, classes: Sequence[str], log: ProblemLog):

        self.cells = cells_record(config.cells)  # recorded in the checkpoint: predict and evaluate redo it
        box_fn = cell_box_function(self.cells)
        stain_norm = None
        if getattr(config, "stain_norm", "none") == "reinhard":  # the template: the training cells themselves
            plain = ClassificationDataset(
                manifest, "train", classes, imgsz=config.imgsz, train=False, log=ProblemLog(stream=None), box_fn=box_fn
            )
            pick = np.unique(np.linspace(0, len(plain) - 1, min(len(plain), self.STAIN_TEMPLATE_CELLS)).round().astype(int))
            self.cells["stain_norm"] = fit_reinhard_target(plain.crop(int(i)) for i in pick)
            stain_norm = stain_norm_target(self.cells["stain_norm"])

        def make(split: str, train: bool) -> ClassificationDataset:
            return ClassificationDataset(
                manifest,
                split,
                classes,
                imgsz=config.imgsz,
                train=train,
                augment=config.augment,
                aug=config.aug,
                seed=config.seed,
                log=log,
                pad_value=self.PAD_VALUE,
                box_fn=box_fn,
                stain_norm=stain_norm,
            )

        train_ds, val_ds = make("train", True), make("val", False)
        self.balance = config.balance
        classes = [str(c) for c in classes]
        if len(classes) == 2:
            self.positive = classes.index("ALL") if "ALL" in classes else 0
            self.metric_names = (*type(self).metric_names, "sensitivity", "specificity", "roc_auc")
        counts = train_ds.class_counts()
        if self.balance == "loss":
            n_present = max(int((counts > 0).sum()), 1)
            w = np.where(counts > 0, counts.sum() / (n_present * np.maximum(counts, 1)), 1.0)
            self.class_weights = torch.tensor(w, dtype=torch.float32)
        return train_ds, val_ds

    def train_sampler(self, dataset, generator: torch.Generator):
        """With ``balance: sampler`` and imbalanced classes, a seeded :class:`WeightedRandomSampler`."""
        if self.balance != "sampler":
            return None
        counts = dataset.class_counts()
        present = counts[counts > 0]
        if len(present) < 2 or present.max() <= self.IMBALANCE_RATIO * present.min():
            return None
        from torch.utils.data import WeightedRandomSampler

        weights = torch.as_tensor(1.0 / counts[dataset.targets], dtype=torch.double)
        return WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True, generator=generator)

    def _normalise(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The model's own normalisation (:class:`~blastscope.data.preprocess.Preprocess`), on the device."""
        pre = getattr(self, "_preprocess", None)
        if pre is None or pre[0] is not model:  # built once per model, not every batch
            self._preprocess = pre = (model, Preprocess.from_info(model.info))
        return pre[1].normalize_tensor(images)

    def loss(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(self._normalise(unwrap(model), images))
        weight = self.class_weights.to(device) if self.class_weights is not None else None
        loss = nn.functional.cross_entropy(logits.float(), labels, weight=weight)
        return loss, {"ce": float(loss.detach())}

    def evaluate(self, model: nn.Module, loader, config: Any, device: torch.device) -> dict[str, float]:
        """Plain cross-entropy and :func:`classification_scores` of the validation crops."""
        model.eval()
        total, n = 0.0, 0
        ys: list[np.ndarray] = []
        ps: list[np.ndarray] = []
        zs: list[np.ndarray] = []
        with torch.inference_mode():
            for images, labels in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                logits = model(self._normalise(model, images)).float()
                total += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
                n += len(labels)
                ys.append(labels.cpu().numpy())
                ps.append(torch.softmax(logits, dim=1).cpu().numpy())
                zs.append(logits.cpu().numpy())
        out = {"val_loss": total / max(n, 1)}
        if not math.isfinite(out["val_loss"]):
            return out | dict.fromkeys(self.metric_names, math.nan)
        classes = list(model.info.class_names)
        y = np.concatenate(ys)
        self.calibration = self.calibrate(np.concatenate(zs), y, config, classes)
        extra = {k: self.calibration[k] for k in ("temperature", "ece", "ece_calibrated", "threshold") if k in self.calibration}
        return out | classification_scores(y, np.concatenate(ps), classes, positive=self.positive) | extra

    def calibrate(self, logits: np.ndarray, y: np.ndarray, config: Any, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Temperature, ECE before and after it, and (two classes) the operating threshold, from validation logits.

        ``logits`` are ``(n, C)``, ``y`` ``(n,)`` class indices. The threshold applies to the
        temperature-scaled probability of the positive class (``config.threshold_method`` at
        ``config.target_sensitivity``); it is NaN when the validation cells hold no positive.
        The result goes into the checkpoint as ``calibration`` (plain data).
        """

        t = fit_temperature(logits, y)
        cal = softmax(logits, t)
        out: dict[str, Any] = {
            "temperature": t,
            "n_val": int(len(y)),
            "ece": expected_calibration_error(softmax(logits), y),
            "ece_calibrated": expected_calibration_error(cal, y),
            # the classifier's own class frequencies on the training lab (mean calibrated probability):
            # the source prior of a label-free prior correction to a new lab (``blastscope adapt --prior``)
            "prior": [float(v) for v in cal.mean(0)],
        }
        if self.positive is not None and logits.shape[1] == 2:
            method = getattr(config, "threshold_method", "sensitivity")
            target = float(getattr(config, "target_sensitivity", 0.95))
            out |= {
                "positive": str(classes[self.positive]) if classes is not None else None,
                "positive_index": int(self.positive),
                "threshold_method": method,
                "target_sensitivity": target,
                "threshold": select_threshold(cal[:, self.positive], y == self.positive, method, target),
                "uncertain_band": float(getattr(config, "uncertain_band", 0.0)),
            }
        return out

    def checkpoint_extras(self) -> dict[str, Any]:
        """``{"calibration": ...}`` of the last :meth:`evaluate`, stored in that epoch's checkpoints."""
        return {"calibration": dict(self.calibration)} if self.calibration else {}


#: task name -> class; ``--task`` chooses from these
TASKS: dict[str, type[Task]] = {"detect": DetectTask, "classify": ClassifyTask}


def get_task(name: str) -> Task:
    """The :class:`Task` registered as ``name`` (BlastscopeError listing the known ones otherwise)."""
    try:
        return TASKS[name]()
    except KeyError:
        raise BlastscopeError(f"task '{name}': unknown; choose one of {', '.join(sorted(TASKS))}") from None


def apply_task_defaults(config: Any, given: set[str] | frozenset[str] = frozenset()) -> Any:
    """``config`` with its task's ``defaults`` for every key not in ``given`` (the keys the user set).

    The shared defaults (``configs/default.yaml``) suit detection; a task's ``defaults`` replace
    them, e.g. for ``classify`` MobileNetV2 at 160 px with AdamW. Keys set in a ``--config`` file or
    on the command line are kept.

    Examples
    --------
    >>> from blastscope.engine.config import TrainConfig
    >>> cfg = apply_task_defaults(TrainConfig(task="classify", lr=0.01), given={"task", "lr"})
    >>> cfg.model, cfg.imgsz, cfg.lr
    ('mobilenet_v2', 160, 0.01)
    """
    import dataclasses

    task_cls = TASKS.get(config.task)
    defaults = dict(getattr(task_cls, "defaults", {}) or {})
    changes = {k: v for k, v in defaults.items() if k not in given}
    return dataclasses.replace(config, **changes) if changes else config
