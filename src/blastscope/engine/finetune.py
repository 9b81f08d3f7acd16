"""Few-shot calibration to a new lab: the starting checkpoint and the fine-tuned one on the same cells.

``blastscope train --init CKPT --data NEW_LAB.csv`` fine-tunes a blastscope checkpoint on a small
labelled sample of a new lab (20-50 cells per class); the new run re-fits its temperature and
re-selects its operating threshold on the new lab's validation cells (as every classifier run
does). :func:`compare_init` then scores *both* checkpoints with ``blastscope evaluate``'s own code
on the same cells (the run's ``test`` split when its manifest has one, else its ``val`` split) and
writes ``RUN/init_comparison.json`` and ``RUN/init_comparison.md``: before (the starting checkpoint
with the training lab's threshold) and after (the fine-tuned one with the new threshold).

When the starting checkpoint's classes differ from the run's, its head was replaced and it cannot be
scored on the new classes: the comparison says so instead of inventing a "before".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from blastscope._atomic import atomic_write
from blastscope.data.manifest import read_manifest
from blastscope.engine.evaluate import evaluate_checkpoint
from blastscope.models.checkpoint import load_checkpoint

__all__ = ["COMPARED_METRICS", "compare_init"]

#: the metrics of the before/after table (those the evaluation has; detection keys for detectors)
COMPARED_METRICS = (
    "accuracy",
    "weighted_f1",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "roc_auc",
    "ece",
    "operating_threshold",
    "map50_voc",
)


#: metrics of one positive class: compared only for two-class models (with more classes
#: evaluate's binary metrics refer to whichever class it took as positive)
BINARY_METRICS = ("sensitivity", "specificity", "roc_auc", "operating_threshold")


def _pick(metrics: dict[str, Any], n_classes: int = 2) -> dict[str, float]:
    out = {}
    for key in COMPARED_METRICS:
        if n_classes > 2 and key in BINARY_METRICS:
            continue
        for name in (key, f"image.{key}", f"cell.{key}"):
            if name in metrics and isinstance(metrics[name], (int, float)):
                out[key] = float(metrics[name])
                break
    return out


def compare_init(run_dir: str | Path, init: str | Path, *, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Score ``init`` and ``run_dir/best.pt`` on the same split of the run's manifest; write the comparison.

    Returns
    -------
    dict
        ``split``, ``n`` (images scored), ``before`` and ``after`` (metric -> value), ``init``,
        ``checkpoint``; or ``skipped`` with the reason.
    """
    run_dir, init = Path(run_dir), Path(init)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    best = run_dir / "best.pt"
    splits = read_manifest(run_dir / "splits.csv")
    split = "test" if (splits["split"] == "test").any() else "val"
    out: dict[str, Any] = {"init": str(init), "checkpoint": str(best), "split": split}
    before_classes = [str(c) for c in load_checkpoint(init)["model"]["class_names"]]
    after_classes = [str(c) for c in load_checkpoint(best)["model"]["class_names"]]
    if before_classes != after_classes:
        out["skipped"] = (
            f"the starting checkpoint's classes {before_classes} differ from the run's {after_classes}: "
            "its head was replaced, so it has no 'before' on these cells"
        )
    else:
        positive = "ALL" if "ALL" in after_classes else after_classes[0]
        kw = {"split": split, "progress": progress, "device": device, "positive": positive}
        before = evaluate_checkpoint(init, splits, **kw)
        after = evaluate_checkpoint(best, splits, **kw)
        out |= {
            "n": int(len(after.predictions)),
            "before": _pick(before.metrics, len(after_classes)),
            "after": _pick(after.metrics, len(after_classes)),
        }
    with atomic_write(run_dir / "init_comparison.json", "w") as f:
        json.dump(out, f, indent=1)
    with atomic_write(run_dir / "init_comparison.md", "w") as f:
        f.write(comparison_markdown(out))
    return out


def comparison_markdown(result: dict[str, Any]) -> str:
    """The before/after table of :func:`compare_init` as markdown."""
    head = f"Fine-tuning from `{result['init']}`, scored on the run's {result['split']} split"
    if "skipped" in result:
        return f"{head}: no comparison ({result['skipped']}).\n"
    lines = [
        f"{head} ({result['n']} images, the same for both):",
        "",
        "| metric | before (starting checkpoint) | after (fine-tuned) |",
        "| --- | ---: | ---: |",
    ]
    for key in COMPARED_METRICS:
        b, a = result["before"].get(key), result["after"].get(key)
        if b is None and a is None:
            continue
        fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {key} | {fmt(b)} | {fmt(a)} |")
    return "\n".join(lines) + "\n"
