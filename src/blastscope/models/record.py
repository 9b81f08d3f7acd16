"""A checkpoint's ``model`` record read without torch.

A blastscope checkpoint (:mod:`blastscope.models.checkpoint`) is a ``torch.save`` zip archive whose
``data.pkl`` holds plain data plus references to tensor storages. :func:`read_model_record` reads
that pickle with an unpickler that builds nothing but plain containers: every torch reference
(tensor rebuilds, storage types) becomes a placeholder and any other global is refused, so no code
from the file runs (the same guarantee as ``torch.load(weights_only=True)``) and no tensor data is
read. The torch-free predict path (:mod:`blastscope.inference.lite`) uses it to learn the input
size and task of a ``.pt`` whose ONNX export it runs.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any

__all__ = ["CHECKPOINT_FORMAT", "read_model_record"]

CHECKPOINT_FORMAT = "blastscope-checkpoint/1"  #: models.checkpoint.FORMAT
_PLAIN = {("collections", "OrderedDict"): dict, ("builtins", "set"): set, ("builtins", "frozenset"): frozenset}


def _placeholder(*args, **kwargs) -> None:
    return None


class _RecordUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _PLAIN:
            return _PLAIN[module, name]
        if module == "torch" or module.startswith("torch."):
            return _placeholder
        raise pickle.UnpicklingError(f"{module}.{name} is not plain checkpoint data")

    def persistent_load(self, pid):  # tensor storages: not read
        return None


def read_model_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``model`` record (``arch``, ``task``, ``class_names``, ``input_size``, ``mean``, ``std``,
    ``kwargs``) of a blastscope checkpoint, read without torch; ``None`` when ``path`` is not a
    readable blastscope checkpoint in ``torch.save``'s zip format (the caller then loads it with torch,
    which gives the error message).

    >>> read_model_record("not-there.pt") is None
    True
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(names) != 1:
                return None
            ckpt = _RecordUnpickler(io.BytesIO(z.read(names[0]))).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError):
        return None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or not isinstance(ckpt.get("model"), dict):
        return None
    return dict(ckpt["model"])
