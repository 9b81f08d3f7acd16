"""The Python API: train, load, predict, export and evaluate without the shell.

>>> import blastscope                                                        # doctest: +SKIP
>>> run = blastscope.train("pbc.csv", task="classify", epochs=3)              # doctest: +SKIP
>>> model = blastscope.load(run.best)                                         # doctest: +SKIP
>>> for result in model.predict("new_cells/"):                                # doctest: +SKIP
...     print(result.source, result.counts())
>>> metrics = blastscope.evaluate(run.best, "pbc.csv", split="test")          # doctest: +SKIP
>>> metrics["accuracy"]                                                       # doctest: +SKIP

The CLI is a thin layer over these functions (``blastscope train`` calls :func:`train`, and so on),
so a script and a command line with the same settings give the same run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from blastscope._problems import BlastscopeError
from blastscope.engine.evaluate import EvaluationResult, evaluate_checkpoint
from blastscope.engine.finetune import compare_init
from blastscope.engine.report import write_report
from blastscope.engine.resolve import resolve_config, resume_config
from blastscope.engine.trainer import RunResult
from blastscope.engine.trainer import train as _engine_train
from blastscope.inference.onnx import export_onnx
from blastscope.inference.predictor import FrameResult, Predictor
from blastscope.inference.sources import Frame
from blastscope.models.checkpoint import load_checkpoint

__all__ = ["Run", "Model", "Metrics", "train", "load", "evaluate"]

PathLike = str | os.PathLike


@dataclass
class Run:
    """A finished (or interrupted) training run.

    Attributes
    ----------
    run_dir : Path
        The run folder (``metrics.csv``, ``best.pt``, ``last.pt``, ``config.yaml``, ``splits.csv``).
    best_epoch : int or None
    best_metric : str
        The selecting metric (``map50_voc`` for detectors, ``weighted_f1`` for classifiers).
    best_row : dict
        The ``metrics.csv`` row of the best epoch.
    epochs_done : int
    interrupted : bool
    """

    run_dir: Path
    best_epoch: int | None
    best_metric: str
    best_row: dict
    epochs_done: int
    interrupted: bool = False
    result: RunResult | None = field(default=None, repr=False)

    @property
    def best(self) -> Path:
        """``best.pt``: the checkpoint of the best validation epoch."""
        return self.run_dir / "best.pt"

    @property
    def last(self) -> Path:
        """``last.pt``: the checkpoint of the last completed epoch (what ``resume`` continues)."""
        return self.run_dir / "last.pt"

    @property
    def metrics(self) -> pd.DataFrame:
        """``metrics.csv``: one row per epoch."""
        return pd.read_csv(self.run_dir / "metrics.csv")

    def load(self, **kwargs: Any) -> Model:
        """:func:`load` of :attr:`best`."""
        return load(self.best, **kwargs)


def train(
    data: PathLike | None = None,
    *,
    task: str | None = None,
    model: str | None = None,
    out: PathLike | None = None,
    config: PathLike | None = None,
    resume: PathLike | None = None,
    exist_ok: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Run:
    """Train a detector or a cell classifier; the same run as ``blastscope train``.

    Parameters
    ----------
    data : path
        A manifest CSV (``blastscope import``); required unless ``resume``.
    task : {"detect", "classify"}, optional
        Default ``detect``. Settings not given take the task's defaults (for ``classify``:
        MobileNetV2, 160 px, AdamW), then the packaged ``configs/default.yaml``.
    model : str, optional
        ``yolov3-tiny`` (detect), ``mobilenet_v2`` or ``efficientnet_lite0`` (classify).
    out : path, optional
        Run folder (default ``runs/train``).
    config : path, optional
        A YAML file with any subset of the settings.
    resume : path, optional
        Continue the run in this folder from its ``last.pt`` (``epochs`` may be raised).
    exist_ok : bool
        Start anew in an ``out`` folder that holds an earlier run.
    **overrides
        Any other setting of :class:`blastscope.engine.config.TrainConfig` (``epochs``, ``imgsz``,
        ``batch``, ``lr``, ``seed``, ``balance``, ...).

    Returns
    -------
    Run
    """
    settings = {
        "data": None if data is None else str(data),
        "task": task,
        "model": model,
        "out": None if out is None else str(out),
        **overrides,
    }
    if resume is not None:
        if config is not None:
            raise BlastscopeError(f"config={config}: a resumed run keeps its own config.yaml; drop config")
        cfg = resume_config(resume, **settings)
    else:
        if data is None:
            raise BlastscopeError("train: give data= (a manifest CSV from 'blastscope import'), or resume= a run folder")
        cfg = resolve_config(config, **settings)
    r = _engine_train(cfg, resume=resume is not None, exist_ok=exist_ok, progress=progress)
    if cfg.init and r.best_epoch is not None and not r.interrupted:  # before/after on the same cells
        compare_init(r.run_dir, cfg.init, device=cfg.device)
    return Run(r.run_dir, r.best_epoch, r.best_metric, dict(r.best_row or {}), r.epochs_done, r.interrupted, r)


class Model:
    """A loaded detector, classifier, or detector + classifier, ready to predict and export.

    Build it with :func:`load`. :meth:`predict` streams :class:`~blastscope.inference.FrameResult`
    objects (boxes xyxy in the frame's pixels, per-cell classes); the underlying
    :class:`~blastscope.inference.Predictor` is :attr:`predictor`.
    """

    def __init__(self, predictor: Predictor, checkpoint: Path, classifier: Path | None = None):
        self.predictor = predictor
        self.checkpoint = Path(checkpoint)
        self.classifier = None if classifier is None else Path(classifier)

    @property
    def task(self) -> str:
        """``"detect"``, ``"classify"`` or ``"detect+classify"``."""
        return self.predictor.task

    @property
    def class_names(self) -> list[str]:
        """The classes results are labelled with (the classifier's when there is one)."""
        return self.predictor.output_classes

    def predict(self, source: Any, *, batch: int = 1) -> Iterator[FrameResult]:
        """Predict every frame of ``source``, yielding results as they come.

        Parameters
        ----------
        source : ndarray (H, W, 3) uint8 RGB, list of arrays, path, glob, video, or camera index
            An image file, a folder, a glob, a video file, an ``int`` camera index, or arrays.
        batch : int
            Frames per network call.
        """
        if isinstance(source, np.ndarray):
            source = [source]
        if isinstance(source, (list, tuple)) and all(isinstance(s, np.ndarray) for s in source):
            source = [Frame(im, "", i, None) for i, im in enumerate(source)]
        return self.predictor.stream(source, batch=batch)

    def __call__(self, image: np.ndarray) -> FrameResult:
        """One RGB frame -> one result."""
        return self.predictor.predict(image)

    def export(self, format: str = "onnx", out: PathLike | None = None, **kwargs: Any) -> Path:
        """Export the (first-stage) checkpoint; ``format="onnx"`` only. Returns the written path."""
        if format != "onnx":
            raise BlastscopeError(f"format={format!r}: blastscope exports 'onnx'")
        return export_onnx(self.checkpoint, out, **kwargs).path

    def __repr__(self) -> str:
        return f"Model({self.task}, {self.checkpoint.name}, classes={self.class_names})"


def load(
    checkpoint: PathLike,
    *,
    classifier: PathLike | None = None,
    conf: float = 0.25,
    iou: float = 0.45,
    imgsz: int | None = None,
    device: str = "cpu",
    backend: str = "auto",
) -> Model:
    """Load a blastscope checkpoint (detector or classifier), optionally with a second-stage classifier.

    A classifier alone classifies each frame as one cell (its whole image); a detector finds cells,
    and with ``classifier`` each detected cell is classified from its square crop. ``backend``
    ``"auto"`` runs the networks' ONNX export (made once into the cache, checked against PyTorch)
    with OpenVINO on the CPU where it is installed (bf16 where the CPU has it, once a bf16 parity
    check passed), else with onnxruntime when it is installed, else with torch; ``"torch"``,
    ``"onnx"`` (onnxruntime) and ``"openvino"`` choose by hand.
    """
    predictor = Predictor.from_checkpoint(
        checkpoint, conf=conf, iou=iou, imgsz=imgsz, device=device, backend=backend, classifier=classifier
    )
    return Model(predictor, Path(checkpoint), None if classifier is None else Path(classifier))


class Metrics(Mapping):
    """What :func:`evaluate` measured: a read-only mapping ``metric -> float`` (``metrics.json``).

    ``.result`` is the full :class:`~blastscope.engine.evaluate.EvaluationResult` (per-image
    predictions, curves, confusion matrices); ``.out`` the report folder when one was written.
    """

    def __init__(self, result: EvaluationResult, out: Path | None = None):
        self.result = result
        self.out = out

    def __getitem__(self, key: str) -> float:
        return self.result.metrics[key]

    def __iter__(self):
        return iter(self.result.metrics)

    def __len__(self) -> int:
        return len(self.result.metrics)

    @property
    def predictions(self) -> pd.DataFrame:
        """One row per evaluated image (``predictions.csv``)."""
        return self.result.predictions

    def __repr__(self) -> str:
        keys = [k for k in ("map50_voc", "accuracy", "sensitivity", "specificity", "weighted_f1", "roc_auc") if k in self]
        return "Metrics(" + ", ".join(f"{k}={self[k]:.4f}" for k in keys) + ")"


def evaluate(
    checkpoint: PathLike,
    data: PathLike | pd.DataFrame,
    *,
    split: str = "test",
    classifier: PathLike | None = None,
    out: PathLike | None = None,
    progress: bool = False,
    backend: str = "auto",
    **kwargs: Any,
) -> Metrics:
    """Score a checkpoint on one split of a manifest; the same numbers as ``blastscope evaluate``.

    With ``out``, ``metrics.json``, ``predictions.csv`` and ``report.html`` are written there.
    Other keyword arguments go to :func:`blastscope.engine.evaluate.evaluate_checkpoint`
    (``conf``, ``iou``, ``min_score``, ``positive``, ``patient_rule``, ``cell_conf``, ...);
    ``backend`` as in :func:`load`.
    """
    result = evaluate_checkpoint(
        checkpoint, data, split=split, classifier=classifier, progress=progress, backend=backend, **kwargs
    )
    if out is not None:
        write_report(result, out)
    return Metrics(result, None if out is None else Path(out))


def checkpoint_info(checkpoint: PathLike) -> dict:
    """The model record of a checkpoint (``arch``, ``task``, ``class_names``, ``input_size``, ...)."""
    return dict(load_checkpoint(checkpoint)["model"])
