"""Atomic file writes: a file is either the old version or the complete new one, never half-written."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from blastscope._problems import BlastscopeError

__all__ = ["atomic_write", "atomic_save_torch", "refuse_overwrite"]

# the process umask, read once at import (os.umask can only be read by setting it)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    If the body raises (or the process is killed) ``path`` keeps its previous content.
    ``mode`` is ``"w"`` (text, UTF-8 and ``newline=""`` unless given) or ``"wb"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
        open_kwargs.setdefault("newline", "")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the file the user asked for, not the temporary one
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk must not keep a half-written copy beside the file
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file: name ours
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def atomic_save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write` (a killed run never leaves a corrupt checkpoint).

    The object is serialised in memory first: torch's zip writer turns a failed write (a full disk)
    into a ``RuntimeError`` without the errno, while a plain ``write`` raises an ``OSError`` that
    names the file and the reason.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getbuffer())


def refuse_overwrite(path: str | Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Raise :class:`BlastscopeError` if ``path`` exists and ``overwrite`` is false."""
    if Path(path).exists() and not overwrite:
        raise BlastscopeError(f"{path}: already exists and would be overwritten; pass {flag} to replace it")
