"""The one model registry and factory.

Builders register themselves with :func:`register_model`; :func:`create_model` is the only way
models are made (training, checkpoint loading, export), and it stamps every model with a
:class:`ModelInfo` so that preprocessing and class names are read from the model itself.

Examples
--------
>>> from blastscope.models import create_model, list_models
>>> "yolov3-tiny" in list_models()
True
>>> model = create_model("yolov3-tiny", num_classes=2, class_names=["blast", "normal"], pretrained=False)
>>> model.info.task, model.info.input_size
('detect', 416)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch.nn as nn

from blastscope._problems import BlastscopeError

__all__ = ["ModelInfo", "ModelEntry", "register_model", "create_model", "list_models"]

# Modules whose import registers built-in models. Listed explicitly (no scanning, no globals()).
_BUILTIN_MODULES = ("blastscope.models.yolo", "blastscope.models.classifier")


@dataclass
class ModelInfo:
    """What a model needs from the outside world; ``dataclasses.asdict`` of it goes into checkpoints.

    Attributes
    ----------
    arch : str
        Registry name (``create_model(arch, ...)`` rebuilds the model).
    task : {"detect", "classify"}
        Detector (boxes) or image classifier.
    class_names : list of str
        Class index -> name; ``len(class_names)`` is the number of classes.
    input_size : int
        Side of the square network input in pixels (detectors letterbox to it, classifiers resize).
    mean, std : tuple of 3 floats
        Per-channel normalisation applied *inside* the pipeline to RGB images scaled to ``[0, 1]``:
        ``x = (img / 255 - mean) / std``. ``(0, 0, 0)`` and ``(1, 1, 1)`` for YOLO.
    kwargs : dict
        Extra keyword arguments the model was built with (plain data), passed back to
        :func:`create_model` when a checkpoint is loaded.
    """

    arch: str
    task: Literal["detect", "classify"]
    class_names: list[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder and its defaults.

    Attributes
    ----------
    name : str
        Registry name.
    builder : callable
        ``builder(*, num_classes: int, pretrained: bool, **kwargs) -> nn.Module``.
    task, input_size, mean, std
        Defaults copied into :class:`ModelInfo` (``input_size`` may be overridden by a kwarg of
        the same name).
    pretrained_class_names : tuple of str, optional
        Class names of the pretrained head (e.g. the 80 COCO classes), used when the caller asks for
        exactly that many classes with ``pretrained=True`` and gives no names.
    """

    name: str
    builder: Callable[..., nn.Module]
    task: Literal["detect", "classify"]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained_class_names: tuple[str, ...] | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    task: Literal["detect", "classify"],
    input_size: int,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    pretrained_class_names: Sequence[str] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder under ``name``.

    Examples
    --------
    >>> @register_model("tiny-demo", task="classify", input_size=32)  # doctest: +SKIP
    ... def tiny_demo(*, num_classes, pretrained, **kwargs):
    ...     return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))
    """
    if task not in ("detect", "classify"):
        raise ValueError(f"task={task!r}; must be 'detect' or 'classify'")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].builder is not fn:
            raise ValueError(f"model {name!r} is already registered by {_REGISTRY[name].builder.__module__}")
        _REGISTRY[name] = ModelEntry(
            name=name,
            builder=fn,
            task=task,
            input_size=int(input_size),
            mean=tuple(float(v) for v in mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in std),  # type: ignore[arg-type]
            pretrained_class_names=tuple(pretrained_class_names) if pretrained_class_names else None,
        )
        return fn

    return decorator


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a real missing dependency, not a model module still to be written
                raise


def list_models(task: str | None = None) -> list[str]:
    """Sorted names of all registered models, or of those of one ``task`` (``"detect"``, ``"classify"``).

    >>> list_models("detect")
    ['yolov3-tiny']
    """
    _load_builtins()
    return sorted(name for name, entry in _REGISTRY.items() if task is None or entry.task == task)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    pretrained: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model and attach its :class:`ModelInfo` as ``model.info``.

    Parameters
    ----------
    name : str
        Registry name, see :func:`list_models` (``"yolov3-tiny"``, ...).
    num_classes : int, optional
        Number of classes of the new head; taken from ``class_names`` when omitted.
    class_names : sequence of str, optional
        Names in class-index order; default: the pretrained names when ``pretrained`` and
        ``num_classes`` equals their count, else ``class_0, class_1, ...``.
    pretrained : bool
        Load the pretrained weights (offline, via :mod:`blastscope.models.weights`).
    **kwargs
        Builder-specific options; recorded in ``model.info.kwargs``.

    Returns
    -------
    nn.Module
        The model, in training mode, with ``model.info``.

    Raises
    ------
    BlastscopeError
        Unknown ``name`` (the message lists the known ones).
    ValueError
        Neither ``num_classes`` nor ``class_names``, or their lengths disagree.
    """
    _load_builtins()
    entry = _REGISTRY.get(name)
    if entry is None:
        raise BlastscopeError(f"{name}: unknown model; choose one of {', '.join(sorted(_REGISTRY))}")
    if num_classes is None:
        if class_names is None:
            raise ValueError(f"{name}: give num_classes or class_names")
        num_classes = len(class_names)
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}; must be at least 1")
    if class_names is None:
        pre = entry.pretrained_class_names
        if pretrained and pre is not None and len(pre) == num_classes:
            class_names = list(pre)
        else:
            class_names = [f"class_{i}" for i in range(num_classes)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"{name}: {len(class_names)} class names for num_classes={num_classes}")
    model = entry.builder(num_classes=num_classes, pretrained=pretrained, **kwargs)
    model.info = ModelInfo(
        arch=name,
        task=entry.task,
        class_names=class_names,
        input_size=int(kwargs.get("input_size", entry.input_size)),
        mean=entry.mean,
        std=entry.std,
        kwargs=dict(kwargs),
    )
    return model
