"""onnxruntime sessions of exported blastscope models and the export cache's lookup, torch-free.

:mod:`blastscope.inference.onnx` (export, parity, the torch-decoded back-end) re-exports these
names; the torch-free predict path (:mod:`blastscope.inference.lite`) uses them directly, so that
running a cached export never imports torch.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from blastscope._problems import BlastscopeError
from blastscope.models.export import ONNX_FORMAT, REQUIRED_METADATA, first_line
from blastscope.models.weights import default_cache_dir

__all__ = [
    "OnnxModel",
    "cached_onnx_path",
    "existing_export",
    "default_threads",
    "omp_threads",
    "onnx_cache_dir",
    "read_onnx_metadata",
    "require_onnxruntime",
]


def default_threads(threads: int | None = None) -> int | None:
    """``threads`` when given, else ``torch.get_num_threads()`` when torch is imported (the same as the
    torch back-end), else :func:`omp_threads` (what torch would take), else None (the runtime's default)."""
    if threads is None and "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    if threads is None:
        threads = omp_threads()
    return int(threads) if threads else None


def omp_threads() -> int | None:
    """``$OMP_NUM_THREADS`` as a positive int (the thread count torch starts with), else None."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n > 0 else None


def require_onnxruntime(what: str = "the onnx backend"):
    """Import and return ``onnxruntime``; a one-line :class:`BlastscopeError` when it is missing."""
    try:
        import onnxruntime
    except ImportError:
        alternative = " (or use --backend torch)" if what == "the onnx backend" else ""
        raise BlastscopeError(
            f"onnxruntime: not installed, {what} needs it; install it with: pip install 'blastscope[onnx]'{alternative}"
        ) from None
    return onnxruntime


def _parse_metadata(props: dict[str, str], path: Path | str) -> dict[str, Any]:
    """Check and decode ``metadata_props``; returns a dict shaped like a checkpoint's ``model`` entry
    (``arch``, ``task``, ``class_names``, ``input_size``, ``mean``, ``std``, ``kwargs``) plus the rest."""
    fix = "export it with 'blastscope export CHECKPOINT --format onnx'"
    if props.get("format") != ONNX_FORMAT:
        what = f"metadata format {props['format']!r}" if "format" in props else "no blastscope metadata"
        raise BlastscopeError(f"{path}: an ONNX model with {what} (expected {ONNX_FORMAT!r}), not written by blastscope; {fix}")
    missing = [k for k in REQUIRED_METADATA if k not in props]
    if missing:
        raise BlastscopeError(f"{path}: blastscope ONNX metadata lacks {', '.join(missing)}; {fix}")
    try:
        meta: dict[str, Any] = dict(props)
        meta["class_names"] = [str(c) for c in json.loads(props["class_names"])]
        meta["input_size"] = int(props["input_size"])
        meta["mean"] = tuple(float(v) for v in json.loads(props["mean"]))
        meta["std"] = tuple(float(v) for v in json.loads(props["std"]))
        meta["kwargs"] = dict(json.loads(props.get("kwargs") or "{}"))
        meta["outputs"] = [str(o) for o in json.loads(props["outputs"])]
        meta["anchors"] = json.loads(props["anchors"]) if props.get("anchors") else None
        meta["opset"] = int(props["opset"]) if props.get("opset") else None
    except (ValueError, TypeError) as e:
        raise BlastscopeError(f"{path}: unreadable blastscope ONNX metadata ({e}); {fix}") from None
    if meta["task"] not in ("detect", "classify") or len(meta["mean"]) != 3 or len(meta["std"]) != 3:
        raise BlastscopeError(f"{path}: inconsistent blastscope ONNX metadata (task {meta['task']!r}); {fix}")
    return meta


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The blastscope metadata of an exported ``.onnx`` file (see the module docstring).

    Uses ``onnx`` when installed, else onnxruntime (which then builds a session).

    Raises
    ------
    BlastscopeError
        Missing file, not an ONNX model, or an ONNX model not written by ``blastscope export``.
    """
    path = Path(path)
    _check_file(path)
    try:
        import onnx
    except ImportError:
        return OnnxModel(path).metadata
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors have no common public base
        raise BlastscopeError(
            f"{path}: not a readable ONNX model ({first_line(e)}); re-export it with 'blastscope export CHECKPOINT --format onnx'"
        ) from None
    return _parse_metadata({p.key: p.value for p in proto.metadata_props}, path)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise BlastscopeError(f"{path}: ONNX model not found; export one with 'blastscope export CHECKPOINT --format onnx'")


# ------------------------------------------------------------------------------------------ running


class OnnxModel:
    """An exported blastscope model under onnxruntime: ``model(x) -> list of numpy outputs``.

    Parameters
    ----------
    source : path or bytes
        The ``.onnx`` file (or its serialised bytes).
    device : str
        ``"cpu"`` or ``"cuda[:N]"`` (needs the ``onnxruntime-gpu`` build).
    threads : int, optional
        Intra-op threads of the session; default: ``torch.get_num_threads()`` when torch is
        imported (the same as the torch back-end), else ``$OMP_NUM_THREADS`` when set (what torch
        would take), else onnxruntime's default (the physical cores, as torch's).

    Attributes
    ----------
    metadata : dict
        See :func:`read_onnx_metadata`.
    batch : int or None
        The fixed batch size of the graph, ``None`` when dynamic; :meth:`__call__` splits larger
        batches into calls of this size.
    """

    def __init__(self, source: str | os.PathLike | bytes, *, device: str = "cpu", threads: int | None = None):
        ort = require_onnxruntime()
        self.path = Path("<memory>") if isinstance(source, bytes) else Path(source)
        if not isinstance(source, bytes):
            _check_file(self.path)
        options = ort.SessionOptions()
        threads = default_threads(threads)
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                source if isinstance(source, bytes) else str(self.path),
                sess_options=options,
                providers=_providers(ort, device, self.path),
            )
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own pybind exception types
            raise BlastscopeError(
                f"{self.path}: not a readable ONNX model ({first_line(e)}); "
                "re-export it with 'blastscope export CHECKPOINT --format onnx'"
            ) from None
        self.metadata = _parse_metadata(dict(self.session.get_modelmeta().custom_metadata_map), self.path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise BlastscopeError(f"{self.path}: expected one (B, 3, S, S) input, the model has {len(inputs)}; re-export it")
        self.input_name = inputs[0].name
        b = inputs[0].shape[0]
        self.batch: int | None = int(b) if isinstance(b, int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def task(self) -> str:
        return str(self.metadata["task"])

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the network on ``x`` ``(B, 3, S, S)`` float32; returns the outputs in ``forward`` order."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.batch is None or len(x) == self.batch:
            return list(self.session.run(self.output_names, {self.input_name: x}))
        if self.batch != 1:
            raise BlastscopeError(
                f"{self.path}: exported for batches of {self.batch}, got {len(x)}; re-export with --dynamic-batch"
            )
        parts = [self.session.run(self.output_names, {self.input_name: x[i : i + 1]}) for i in range(len(x))]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]

    #: how many :meth:`start` calls may be in flight before :meth:`finish` (1: none overlap)
    in_flight = 1

    def start(self, x: np.ndarray):
        """Begin the network on ``x``; :meth:`finish` of the returned handle gives the outputs.

        onnxruntime runs it here and now; :class:`~blastscope.inference._openvino.OpenVinoModel`
        returns while the network runs, so the caller prepares the next input meanwhile
        (:func:`~blastscope.inference.sources.stream_batches`)."""
        return self(x)

    def finish(self, handle) -> list[np.ndarray]:
        """The outputs of a :meth:`start` (in ``forward`` order)."""
        return handle

    def decoder(self):
        """The :class:`~blastscope.models.yolo.YoloDecoder` (torch) of this detector's outputs, from the
        file's metadata (no network built)."""
        from blastscope.models.yolo import YoloDecoder

        meta = self.metadata
        if meta["task"] != "detect":
            raise BlastscopeError(f"{self.path}: a {meta['task']!r} model has no detection post-processing")
        return YoloDecoder.from_metadata(meta)


def _providers(ort, device: str, path: Path) -> list:
    device = str(device or "cpu")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BlastscopeError(
                f"{path}: this onnxruntime has no CUDA provider (device {device!r}); install onnxruntime-gpu or use --device cpu"
            )
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise BlastscopeError(f"device {device!r}: the onnx backend runs on cpu or cuda[:N]")


def onnx_cache_dir() -> Path:
    """Where exports made on the fly are kept: ``$BLASTSCOPE_ONNX_CACHE``, else ``<blastscope cache>/onnx``."""
    env = os.environ.get("BLASTSCOPE_ONNX_CACHE")
    return Path(env).expanduser() if env else default_cache_dir() / "onnx"


def cached_onnx_path(checkpoint: str | os.PathLike, sha256: str, imgsz: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache file of the export of ``checkpoint`` (whose bytes have ``sha256``) at ``imgsz``:
    ``<cache>/<stem>-<sha256[:16]>-<imgsz>.onnx`` (``cache`` default :func:`onnx_cache_dir`)."""
    cache = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
    return cache / f"{Path(checkpoint).stem}-{sha256[:16]}-{int(imgsz)}.onnx"


def existing_export(
    checkpoint: str | os.PathLike,
    sha256: str,
    imgsz: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    say: Callable[[str], None] | None = None,
    read_metadata: Callable[[Path], dict[str, Any]] | None = None,
) -> Path | None:
    """The export of ``checkpoint`` already on disk, without making one (and without torch).

    The sibling ``.onnx`` when its metadata names these very bytes (``source_sha256``) and ``imgsz``,
    else the cache file (:func:`cached_onnx_path`) when it names these bytes; ``None`` otherwise.
    ``say`` receives why a sibling is not used (default: nothing). ``read_metadata`` reads a file's
    metadata, raising :class:`BlastscopeError` for a bad file (default :func:`read_onnx_metadata`;
    the lean predict path opens the session itself, which spares importing ``onnx``).
    """
    say = say or (lambda msg: None)
    read_onnx_metadata_ = read_metadata or read_onnx_metadata
    checkpoint = Path(checkpoint)
    sibling = checkpoint.with_suffix(".onnx")
    if sibling.is_file():
        try:
            meta = read_onnx_metadata_(sibling)
        except BlastscopeError as e:
            say(f"onnx: ignoring {sibling} ({e})")
        else:
            if meta.get("source_sha256") != sha256:
                say(f"onnx: ignoring {sibling}: exported from another version of {checkpoint.name}")
            elif meta["input_size"] != imgsz:
                say(f"onnx: ignoring {sibling}: exported at {meta['input_size']} px, running at {imgsz} px")
            else:
                return sibling
    cached = cached_onnx_path(checkpoint, sha256, imgsz, cache_dir)
    if cached.is_file():
        try:
            if read_onnx_metadata_(cached).get("source_sha256") == sha256:
                return cached
        except BlastscopeError:
            pass
    return None
