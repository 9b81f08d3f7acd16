"""Training configuration: a typed dataclass, defaults in ``blastscope/configs/default.yaml``.

The settings of a run come from three layers, each overriding the one before:

1. the packaged defaults (``configs/default.yaml``),
2. a YAML file given with ``--config FILE`` (any subset of the keys),
3. command-line flags.

The resolved :class:`TrainConfig` is saved as ``runs/NAME/config.yaml`` (itself a valid
``--config`` file) and as a plain dict inside every checkpoint. YAML is read with
``yaml.safe_load`` and values are type-checked against the dataclass; nothing is ever evaluated.

Examples
--------
>>> cfg = load_config()
>>> cfg.model, cfg.imgsz
('yolov3-tiny', 416)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from blastscope._atomic import atomic_write
from blastscope._problems import BlastscopeError
from blastscope.data.transforms import AugmentConfig

__all__ = ["AugmentConfig", "TrainConfig", "BALANCE_MODES", "load_config", "merge_cli", "save_config", "config_from_dict"]

#: values of ``TrainConfig.balance`` (classification)
BALANCE_MODES = ("none", "sampler", "loss")


@dataclass
class TrainConfig:
    """Every setting of a training run; the field comments live in ``configs/default.yaml``."""

    task: str = "detect"
    data: str = ""
    model: str = "yolov3-tiny"
    pretrained: bool = True
    #: a blastscope checkpoint whose weights start this run (fine-tuning to a new lab); "" for none
    init: str = ""
    epochs: int = 25
    imgsz: int = 416
    batch: int = 8
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float = 1.0
    final_lr_ratio: float = 0.01
    grad_clip: float = 10.0
    freeze_backbone_epochs: int = 0
    #: detection: the first N darknet convolutions stay frozen (COCO weights, batch-norm statistics
    #: kept) for the whole run; 0 trains every layer
    freeze: int = 0
    patience: int = 0
    save_period: int = 0
    #: classify: images without a box are cut around the white cell a finder finds ("finder"), or
    #: taken whole ("whole"); segmented cells on black are always taken whole
    cells: str = "finder"
    #: classify: stain normalisation of every crop, in training and at prediction ("reinhard": to the
    #: median LAB statistics of the training cells, recorded in the checkpoint; "none")
    stain_norm: str = "none"
    workers: int = 0
    #: decoded images kept in memory for the run: "auto" (when they fit in a quarter of the free
    #: memory, at most 8 GiB), "ram" (always), "none"; see blastscope.data.dataset
    cache: str = "auto"
    seed: int = 0
    device: str = "auto"
    #: "auto" (bf16 where the CPU or GPU computes it natively, else fp32), "fp32" or "bf16" (autocast
    #: of the forward pass and the loss; weights and optimizer stay fp32); see blastscope.engine._accel
    precision: str = "auto"
    #: channels-last memory for the model and its inputs: true, false or "auto" (on with bf16)
    channels_last: bool | str = "auto"
    out: str = "runs/train"
    val_fraction: float = 0.1
    auto_boxes: bool = False
    val_conf: float = 0.001
    val_iou: float = 0.45
    max_det: int = 300
    augment: bool = True
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    pad_value: int = 127
    #: classification only: how class imbalance is countered; "none", "sampler" (draw training
    #: cells with probability inversely proportional to their class's frequency) or "loss"
    #: (class-weighted cross-entropy); see blastscope.engine.tasks.ClassifyTask
    balance: str = "sampler"
    #: classification only: how the operating threshold on the positive class (two classes) is
    #: chosen on the validation cells after temperature scaling; "sensitivity" (the highest
    #: threshold reaching target_sensitivity) or "youden"; recorded in the checkpoint's "calibration"
    threshold_method: str = "sensitivity"
    target_sensitivity: float = 0.95
    #: cells whose calibrated score lies within +- this of the threshold are called "uncertain"
    uncertain_band: float = 0.05

    def validate(self, source: str = "config") -> TrainConfig:
        """Raise :class:`BlastscopeError` naming ``source`` for values out of range; return self."""
        checks = [
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.imgsz >= 32, "imgsz", "at least 32"),
            (self.batch >= 1, "batch", "at least 1"),
            (self.lr > 0, "lr", "positive"),
            (self.weight_decay >= 0, "weight_decay", "0 or more"),
            (self.warmup_epochs >= 0, "warmup_epochs", "0 or more"),
            (0 < self.final_lr_ratio <= 1, "final_lr_ratio", "in (0, 1]"),
            (self.grad_clip >= 0, "grad_clip", "0 (off) or more"),
            (self.freeze_backbone_epochs >= 0, "freeze_backbone_epochs", "0 or more"),
            (self.freeze >= 0, "freeze", "0 (train every layer) or more"),
            (self.patience >= 0, "patience", "0 (off) or more"),
            (self.save_period >= 0, "save_period", "0 (best and last only) or more"),
            (self.cells in ("finder", "whole"), "cells", "'finder' or 'whole'"),
            (self.stain_norm in ("none", "reinhard"), "stain_norm", "'none' or 'reinhard'"),
            (self.workers >= 0, "workers", "0 or more"),
            (self.cache in ("auto", "ram", "none"), "cache", "'auto', 'ram' or 'none'"),
            (0 < self.val_fraction < 1, "val_fraction", "between 0 and 1 (e.g. 0.1)"),
            (self.optimizer in ("sgd", "adamw"), "optimizer", "'sgd' or 'adamw'"),
            (self.precision in ("auto", "fp32", "bf16"), "precision", "'auto', 'fp32' or 'bf16'"),
            (self.channels_last in (True, False, "auto"), "channels_last", "true, false or 'auto'"),
            (0 <= self.pad_value <= 255, "pad_value", "in 0..255"),
            (0 <= self.val_conf < 1, "val_conf", "in [0, 1)"),
            (0 < self.val_iou <= 1, "val_iou", "in (0, 1]"),
            (self.max_det >= 1, "max_det", "at least 1"),
            (self.balance in BALANCE_MODES, "balance", "one of " + ", ".join(f"'{m}'" for m in BALANCE_MODES)),
            (self.threshold_method in ("sensitivity", "youden"), "threshold_method", "'sensitivity' or 'youden'"),
            (0 < self.target_sensitivity <= 1, "target_sensitivity", "in (0, 1]"),
            (0 <= self.uncertain_band < 0.5, "uncertain_band", "in [0, 0.5)"),
        ]
        ranges = {"blur_sigma": (0, 10), "jpeg_quality": (1, 95)}  # the rest are probabilities or relative strengths
        for name, value in dataclasses.asdict(self.aug).items():
            lo, hi = ranges.get(name, (0, 1))
            checks.append((lo <= value <= hi, f"aug.{name}", f"in [{lo}, {hi}]"))
        for ok, name, allowed in checks:
            if not ok:
                obj, attr = (self.aug, name[4:]) if name.startswith("aug.") else (self, name)
                raise BlastscopeError(f"{source}: {name} is {getattr(obj, attr)!r}; it must be {allowed}")
        return self


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        options = [t for t in options if t is not type(None)]
        if len(options) > 1:  # the first type the value fits (``bool | str``: true or "auto")
            for option in options:
                try:
                    return _coerce(value, option, key, source)
                except BlastscopeError:
                    pass
            names = " or a ".join(_type_name(t) for t in options)
            raise BlastscopeError(f"{source}: '{key}' is {value!r} ({type(value).__name__}); it must be a {names}")
        tp = options[0]
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise BlastscopeError(f"{source}: '{key}' is {value!r} ({type(value).__name__}); it must be a {_type_name(tp)}")


def config_from_dict(values: dict[str, Any], *, base: Any = None, source: str = "config", cls: type = TrainConfig) -> Any:
    """A ``cls`` instance from plain data, starting from ``base`` (default: the dataclass defaults).

    Unknown keys and values of the wrong type raise :class:`BlastscopeError` naming ``source``.
    """
    if not isinstance(values, dict):
        raise BlastscopeError(f"{source}: expected a mapping of setting: value, got {type(values).__name__}")
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise BlastscopeError(f"{source}: unknown setting '{key}'; known settings: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            changes[key] = config_from_dict(value or {}, base=getattr(base, key), source=f"{source} [{key}]", cls=tp)
        else:
            changes[key] = _coerce(value, tp, key, source)
    return dataclasses.replace(base, **changes)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BlastscopeError(f"{path}: config file not found; check the --config path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BlastscopeError(f"{path}: malformed YAML ({e}); fix the file or start from a run's config.yaml") from None
    return data or {}


def default_config_path() -> Path:
    """The packaged ``configs/default.yaml``."""
    return Path(str(resources.files("blastscope") / "configs" / "default.yaml"))


def load_config(yaml_path: str | Path | None = None) -> TrainConfig:
    """The packaged defaults, overridden by the keys of ``yaml_path`` when given.

    Raises :class:`BlastscopeError` naming the file for malformed YAML, unknown keys, wrong types
    and values out of range.
    """
    default = default_config_path()
    cfg = config_from_dict(_read_yaml(default), source=str(default))
    if yaml_path is not None:
        cfg = config_from_dict(_read_yaml(Path(yaml_path)), base=cfg, source=str(yaml_path))
    return cfg.validate(str(yaml_path or default))


def merge_cli(config: TrainConfig, args: argparse.Namespace | dict[str, Any], *, source: str = "command line") -> TrainConfig:
    """Override ``config`` with the command-line values that were given (those that are not None).

    ``args`` attributes named like :class:`TrainConfig` fields are used; others are ignored.
    """
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in given.items() if k in names and v is not None}
    return config_from_dict(values, base=config, source=source).validate(source)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain nested dict of the config (what goes into checkpoints and ``config.yaml``)."""
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML to ``path`` atomically; :func:`load_config` reads it back unchanged."""
    path = Path(path)
    with atomic_write(path) as f:
        f.write("# blastscope training config (resolved); reuse it with --config\n")
        yaml.safe_dump(config_to_dict(config), f, sort_keys=False)
    return path
