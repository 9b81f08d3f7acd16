"""Turn what a user asked for into a complete, validated :class:`TrainConfig`.

One place for the layering of settings, used by the Python API (:func:`blastscope.train`) and the CLI
alike: the packaged defaults (``configs/default.yaml``) <- a ``--config`` YAML file <- the task's own
defaults (e.g. MobileNetV2 at 160 px with AdamW for ``classify``) for every key the user did not set
<- the settings given. Resuming takes the run's own ``config.yaml``, where only ``epochs``,
``patience``, ``workers``, ``device``, ``precision``, ``channels_last`` and ``cache`` may change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from blastscope._problems import BlastscopeError
from blastscope.engine.config import TrainConfig, load_config, merge_cli
from blastscope.engine.tasks import apply_task_defaults
from blastscope.models.checkpoint import load_checkpoint

__all__ = ["RESUMABLE", "resolve_config", "resume_config"]

#: settings that may change when a run is resumed
RESUMABLE = ("epochs", "patience", "workers", "device", "precision", "channels_last", "cache")


def resolve_config(config_file: str | Path | None = None, **settings: Any) -> TrainConfig:
    """The complete training configuration for ``settings`` (``None`` values mean "not set").

    Parameters
    ----------
    config_file : path, optional
        A YAML file with any subset of the keys (its keys count as set by the user).
    **settings
        Any :class:`TrainConfig` field, e.g. ``task="classify"``, ``data="pbc.csv"``, ``epochs=3``.

    Examples
    --------
    >>> cfg = resolve_config(task="classify", data="pbc.csv")
    >>> cfg.model, cfg.imgsz, cfg.optimizer
    ('mobilenet_v2', 160, 'adamw')
    """
    if settings.get("init"):  # fine-tuning: the checkpoint's architecture, task and size are the defaults
        meta = load_checkpoint(settings["init"])["model"]
        for key, value in (("task", meta["task"]), ("model", meta["arch"]), ("imgsz", meta.get("input_size"))):
            if settings.get(key) is None and value is not None:
                settings[key] = value
    given = {k for k, v in settings.items() if v is not None}
    unknown = sorted(given - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise BlastscopeError(f"unknown training settings {unknown}; see blastscope/configs/default.yaml for the keys")
    config = merge_cli(load_config(config_file), {k: v for k, v in settings.items() if v is not None}, source="settings")
    if config_file:
        given |= set(yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {})  # load_config checked it
    return apply_task_defaults(config, given)


def resume_config(run_dir: str | Path, **changes: Any) -> TrainConfig:
    """The configuration of the run in ``run_dir`` with the :data:`RESUMABLE` ``changes`` applied.

    Any other setting in ``changes`` that differs from the run's raises a one-line error.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise BlastscopeError(
            f"{run_dir}: not a run folder (no config.yaml); give the --out folder of an earlier 'blastscope train'"
        )
    config = load_config(cfg_path)

    def differs(key: str, value) -> bool:
        if key == "data":
            return Path(value).resolve() != Path(config.data).resolve()
        return value != getattr(config, key)

    changed = [
        k for k, v in changes.items() if v is not None and hasattr(config, k) and k not in (*RESUMABLE, "out") and differs(k, v)
    ]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise BlastscopeError(
            f"{run_dir}: {flags} cannot change when resuming (only {', '.join(RESUMABLE)} can); "
            "drop them, or start a new run with --out"
        )
    config = merge_cli(config, {k: changes.get(k) for k in RESUMABLE})
    config.out = str(run_dir)
    return config
