"""``metrics.json`` and a self-contained ``report.html`` from an :class:`EvaluationResult`.

The report is one HTML file with a small inline style sheet and every image embedded as a
base64 PNG (no external CSS, JavaScript, fonts or images), so it can be mailed or archived as is.
Each plot is also saved as a PNG beside it:

=========================  ====================================================================
``training_curves.png``    train / val loss and the validation metric per epoch from the run's
                           ``metrics.csv`` (the evaluated and the best epoch marked)
``pr_curves.png``          precision-recall curve per detector class (VOC matching, IoU 0.5)
``roc.png``                ROC curve of the image calls (with the patient-level and count-only
                           baseline curves when they exist)
``confusion_N.png``        confusion matrices (image calls; boxes; cells)
``errors.png``             the most confident errors with their boxes drawn
=========================  ====================================================================

Plotting uses matplotlib's object API with the Agg canvas (imported here, lazily), so it neither
needs a display nor changes the pyplot backend of the calling program.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from blastscope._atomic import atomic_write
from blastscope._problems import BlastscopeError
from blastscope.data.images import read_image
from blastscope.metrics.classification import METRIC_KEYS

__all__ = ["write_report", "write_metrics_json", "key_metrics", "plain_metrics"]

#: metrics shown first (in this order) when present
KEY_METRICS = (
    "map50_voc",
    "map50_voc07",
    "map50_coco",
    "map50_95_coco",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "weighted_f1",
    "balanced_accuracy",
    "roc_auc",
    "cell.accuracy",
    "cell.weighted_f1",
    "patient.accuracy",
    "patient.sensitivity",
    "patient.specificity",
    "patient.roc_auc",
    "count_baseline.accuracy",
    "count_baseline.roc_auc",
)
_DIAG = (*METRIC_KEYS, "tp", "fp", "tn", "fn")
_DIAG_COLUMNS = (
    ("", "image level"),
    ("patient.", "patient level"),
    ("cell.", "cell level"),
    ("count_baseline.", "count-only baseline (image)"),
    ("count_baseline.patient.", "count-only baseline (patient)"),
)
_DPI = 110

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1em 1.5em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.banner{background:#fff3cd;border:2px solid #e0a800;color:#6b4c00;padding:.7em 1em;font-weight:bold;margin:.8em 0}
.meta td{text-align:left}.note{color:#555;font-size:.92em}
img{max-width:100%;height:auto;border:1px solid #ddd;margin:.3em 0}
.grid{display:flex;flex-wrap:wrap;gap:.6em}.grid figure{margin:0;width:250px;font-size:.8em}
.grid figcaption{word-break:break-all}
"""


# ----------------------------------------------------------------------------------------------
# metrics.json


def plain_metrics(metrics: dict[str, Any]) -> dict[str, float | int | None]:
    """Flat ``{name: number}`` with plain Python floats (ints for counts) and ``None`` for NaN/inf."""
    out: dict[str, float | int | None] = {}
    for k, v in metrics.items():
        v = float(v)
        if not math.isfinite(v):
            out[str(k)] = None
        elif k.rsplit(".", 1)[-1] in ("tp", "fp", "tn", "fn") or k.startswith("n_") or ".n_" in k:
            out[str(k)] = int(round(v))
        else:
            out[str(k)] = v
    return out


def write_metrics_json(metrics: dict[str, Any], path: str | Path) -> Path:
    """Write ``metrics`` as a flat JSON object (NaN as ``null``), atomically."""
    path = Path(path)
    with atomic_write(path) as f:
        json.dump(plain_metrics(metrics), f, indent=2, allow_nan=False)
        f.write("\n")
    return path


def key_metrics(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    """The headline metrics present in ``metrics``, in a fixed order (also the ImageAI-style mAP)."""
    out = [(k, float(metrics[k])) for k in KEY_METRICS if k in metrics]
    out += [(k, float(v)) for k, v in metrics.items() if k.startswith("map50_voc@min_score=")]
    out += [(k, float(v)) for k, v in metrics.items() if k.startswith("ap50_voc.") and v is not None]  # per class
    return out


def _fmt(value: Any, name: str = "") -> str:
    if value is None:
        return "&ndash;"
    v = float(value)
    if not math.isfinite(v):
        return "&ndash;"
    last = name.rsplit(".", 1)[-1]
    if last in ("tp", "fp", "tn", "fn") or last.startswith("n_") or name.startswith("n_") or name.startswith("n_gt"):
        return f"{int(round(v))}"
    return f"{v:.4f}"


# ----------------------------------------------------------------------------------------------
# plots (matplotlib object API, Agg canvas)


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _training_curves(csv_path: Path, epoch: int | None, best_epoch: int | None, synthetic: bool) -> bytes | None:
    try:
        df = pd.read_csv(csv_path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if df.empty or "epoch" not in df.columns:
        return None
    fig = _figure(10, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    for col, style in (("train_loss", "-o"), ("val_loss", "-s")):
        if col in df.columns:
            ax1.plot(df["epoch"], df[col], style, ms=3, label=col.replace("_", " "))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("loss")
    metric_cols = [
        c
        for c in ("map50_voc", "map50_voc07", "map50_coco", "map50_95_coco", "weighted_f1", "f1", "accuracy", "val_accuracy")
        if c in df.columns
    ]
    for col in metric_cols:
        ax2.plot(df["epoch"], df[col], "-o", ms=3, label=col)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation metric")
    ax2.set_title("validation")
    ax2.set_ylim(-0.02, 1.02)
    for ax in (ax1, ax2):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1.2, label=f"best epoch {best_epoch}")
        if epoch is not None and epoch != best_epoch:
            ax.axvline(epoch, color="tab:red", ls=":", lw=1.2, label=f"evaluated epoch {epoch}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if synthetic:
        fig.suptitle("SYNTHETIC DATA", color="#b8860b", fontsize=10)
    return _png(fig)


def _pr_curves(curves: dict[str, dict], synthetic: bool) -> bytes | None:
    if not curves:
        return None
    fig = _figure(5.5, 4.5)
    ax = fig.subplots()
    for name, c in curves.items():
        rec, prec = np.asarray(c["recall"], float), np.asarray(c["precision"], float)
        ap = c.get("ap", math.nan)
        label = f"{name} (AP {ap:.3f})" if math.isfinite(ap) else f"{name} (no true boxes)"
        if rec.size and np.isfinite(rec).all():
            ax.step(np.concatenate([[0], rec]), np.concatenate([[prec[0]], prec]), where="post", label=label)
        else:
            ax.plot([], [], label=label)
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall per class (VOC, IoU 0.5)" + (" - SYNTHETIC" if synthetic else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def _roc(roc: dict[str, dict], synthetic: bool) -> bytes | None:
    if not any(len(r["fpr"]) for r in roc.values()):
        return None
    fig = _figure(5.0, 4.5)
    ax = fig.subplots()
    styles = {"model": "-", "patient": "--", "count baseline": ":"}
    for name, r in roc.items():
        if len(r["fpr"]):
            auc = r.get("auc", math.nan)
            ax.plot(r["fpr"], r["tpr"], styles.get(name, "-"), lw=1.8, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC" + (" - SYNTHETIC" if synthetic else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _reliability(bins: dict, ece: float, synthetic: bool) -> bytes | None:
    """Reliability diagram: accuracy against mean confidence per bin, the diagonal is perfect calibration."""
    count = np.asarray(bins.get("count", []))
    if not count.sum():
        return None
    fig = _figure(5.0, 4.5)
    ax = fig.subplots()
    centre = (np.asarray(bins["lower"]) + np.asarray(bins["upper"])) / 2
    width = float(np.asarray(bins["upper"])[0] - np.asarray(bins["lower"])[0])
    used = count > 0
    ax.bar(centre[used], np.asarray(bins["accuracy"])[used], width=width * 0.9, color="#4c72b0", label="accuracy")
    ax.plot(
        np.asarray(bins["confidence"])[used],
        np.asarray(bins["accuracy"])[used],
        "o",
        color="#c44e52",
        ms=4,
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})" + (" - SYNTHETIC" if synthetic else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def _confusion(matrix: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    m = np.asarray(matrix)
    n = len(labels)
    side = min(8.0, 2.5 + 0.55 * n)
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), labels=list(labels), rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=list(labels), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=9)
    top = m.max() if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8, color="white" if m[i, j] > top / 2 else "black"
            )
    return _png(fig)


def _tile(result, err: dict, size: int = 256) -> np.ndarray | None:
    """The image of one error, resized to ``size`` px on its longer side, with its boxes drawn."""
    import cv2

    i = err["index"]
    try:
        img = read_image(result.predictions.at[i, "image"])
    except BlastscopeError:
        return None
    h, w = img.shape[:2]
    scale = size / max(h, w)
    out = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)

    def rect(box, colour, lw):
        x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, lw, cv2.LINE_AA)
        return x0, y0

    for b in np.asarray(result.ground_truth[i]["boxes"]).reshape(-1, 4):
        rect(b, (0, 200, 0), 2)
    d = result.detections[i]
    scores = np.asarray(d["scores"])
    shown = np.flatnonzero(scores >= float(result.settings.get("cell_conf", 0.25)))
    if not len(shown) and len(scores):
        shown = np.array([int(np.argmax(scores))])
    for k in shown[:30]:
        colour = (220, 0, 0) if d["names"][k] == result.positive else (30, 90, 255)
        x0, y0 = rect(d["boxes"][k], colour, 1)
        cv2.putText(
            out,
            f"{d['names'][k]} {scores[k]:.2f}",
            (x0 + 2, max(10, y0 + 11)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            colour,
            1,
            cv2.LINE_AA,
        )
    if err.get("box") is not None:
        rect(err["box"], (255, 200, 0), 3)
    return out


def _errors_png(result) -> bytes | None:
    tiles = [(e, _tile(result, e)) for e in result.errors]
    tiles = [(e, t) for e, t in tiles if t is not None]
    if not tiles:
        return None
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig = _figure(3.0 * cols, 3.3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for ax in axes:
        ax.axis("off")
    for ax, (e, t) in zip(axes, tiles, strict=False):
        ax.imshow(t)
        name = Path(result.predictions.at[e["index"], "image"]).name
        ax.set_title(f"{e['kind']}: {name}\n{e['text']}", fontsize=7)
    fig.suptitle(
        f"most confident errors (green: true boxes; red: called {result.positive}; blue: other classes; yellow: the error)",
        fontsize=8,
    )
    return _png(fig)


# ----------------------------------------------------------------------------------------------
# HTML


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def _diagnostic_table(metrics: dict[str, float]) -> str:
    cols = [(p, title) for p, title in _DIAG_COLUMNS if any(f"{p}{k}" in metrics for k in _DIAG)]
    if not cols:
        return ""
    rows = []
    for k in _DIAG:
        if any(f"{p}{k}" in metrics for p, _ in cols):
            cell = [_fmt(metrics.get(f"{p}{k}"), f"{p}{k}") for p, _ in cols]
            if k == "roc_auc" and "roc_auc_ci_low" in metrics:
                cell[0] += f" ({_fmt(metrics['roc_auc_ci_low'])}&ndash;{_fmt(metrics['roc_auc_ci_high'])})"
            rows.append([k, *cell])
    return _table(["metric", *[t for _, t in cols]], rows)


def write_report(result, out_dir: str | Path, *, run_dir: str | Path | None = None) -> Path:
    """Write ``metrics.json``, ``predictions.csv``, ``report.html`` and the PNG plots of an evaluation into ``out_dir``.

    Parameters
    ----------
    result : EvaluationResult
        From :func:`blastscope.engine.evaluate.evaluate_checkpoint`.
    out_dir : path
        Created if needed; existing report files in it are replaced (atomically).
    run_dir : path, optional
        Training run folder whose ``metrics.csv`` gives the training curves (default
        ``result.run_dir``, the checkpoint's folder when it holds one).

    Returns
    -------
    Path
        ``out_dir / "report.html"``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_json(result.metrics, out_dir / "metrics.json")
    if len(result.table):  # the prediction table: `blastscope evaluate --predictions` rescores it without the model
        with atomic_write(out_dir / "predictions.csv") as f:
            result.table.to_csv(f, index=False, float_format="%.7g", lineterminator="\n")
    run_dir = Path(run_dir) if run_dir is not None else result.run_dir
    syn = bool(result.synthetic)
    esc = html.escape

    def save(png: bytes | None, name: str) -> bytes | None:
        if png is not None:
            with atomic_write(out_dir / name, "wb") as f:
                f.write(png)
        return png

    parts: list[str] = []
    title = f"blastscope evaluation: {Path(result.checkpoint).name} on {result.split}"
    parts.append(f"<h1>{esc(title)}</h1>")
    if syn:
        parts.append(
            '<div class="banner">SYNTHETIC DATA: the images of this split are synthetic (manifest source '
            '"synthetic"). These numbers say nothing about real patients.</div>'
        )
    meta_rows = [
        ["checkpoint", esc(result.checkpoint)],
        ["model", esc(f"{result.arch} ({result.task}); classes: {', '.join(result.classes)}")],
        ["epoch", esc(f"{result.epoch} (best epoch of the run: {result.best_epoch}, by {result.best_metric})")],
        ["manifest", esc(result.manifest)],
        ["split", esc(result.split)],
        ["settings", esc(", ".join(f"{k}={v}" for k, v in result.settings.items() if v is not None))],
    ]
    parts.append(_table(None, meta_rows, "meta"))
    if result.notes:
        parts.append('<ul class="note">' + "".join(f"<li>{esc(n)}</li>" for n in result.notes) + "</ul>")

    parts.append("<h2>Key metrics</h2>")
    keys = key_metrics(result.metrics)
    parts.append(_table(["metric", "value"], [[esc(k), _fmt(v, k)] for k, v in keys]) if keys else "<p>none</p>")
    diag = _diagnostic_table(result.metrics)
    if diag:
        parts.append("<h2>Diagnostic metrics</h2>")
        parts.append(
            '<p class="note">Positive class: ' + esc(result.positive) + ". ROC AUC with its bootstrap 95% interval "
            "(patients resampled when known). The count-only baseline scores an image by its number of detected cells.</p>"
        )
        parts.append(diag)

    parts.append("<h2>Split</h2>")
    sc = result.split_counts
    if sc is not None and not sc.empty:
        parts.append(_table(list(sc.columns), [[esc(str(v)) for v in r] for r in sc.itertuples(index=False)]))

    parts.append("<h2>Training curves</h2>")
    png = None
    if run_dir is not None and (Path(run_dir) / "metrics.csv").is_file():
        png = save(_training_curves(Path(run_dir) / "metrics.csv", result.epoch, result.best_epoch, syn), "training_curves.png")
    parts.append(
        _img(png, "training curves")
        if png
        else '<p class="note">No run folder with a metrics.csv was found for this checkpoint.</p>'
    )

    if result.pr_curves:
        parts.append("<h2>Precision-recall curves</h2>")
        png = save(_pr_curves(result.pr_curves, syn), "pr_curves.png")
        if png:
            parts.append(_img(png, "precision-recall curves"))
    if result.roc:
        png = save(_roc(result.roc, syn), "roc.png")
        if png:
            parts.append("<h2>ROC curve</h2>")
            parts.append(_img(png, "ROC curve"))
    if result.reliability:
        png = save(_reliability(result.reliability, float(result.metrics.get("ece", math.nan)), syn), "reliability.png")
        if png:
            parts.append("<h2>Calibration</h2>")
            parts.append(_img(png, "reliability diagram"))
    if result.confusions:
        parts.append("<h2>Confusion matrices</h2>")
        for n, (ttl, c) in enumerate(result.confusions.items(), start=1):
            png = save(_confusion(c["matrix"], c["labels"], ttl), f"confusion_{n}.png")
            parts.append(_img(png, f"confusion matrix: {ttl}"))

    parts.append("<h2>Most confident errors</h2>")
    png = save(_errors_png(result), "errors.png") if result.errors else None
    if png:
        parts.append(_img(png, "most confident errors"))
    else:
        parts.append('<p class="note">No errors to show.</p>')

    parts.append("<h2>All metrics</h2>")
    parts.append(_table(["metric", "value"], [[esc(k), _fmt(v, k)] for k, v in result.metrics.items()]))
    parts.append(
        '<p class="note">The same numbers are in metrics.json beside this file.'
        + (" Computed on SYNTHETIC data." if syn else "")
        + "</p>"
    )

    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path = out_dir / "report.html"
    with atomic_write(path) as f:
        f.write(doc)
    return path
