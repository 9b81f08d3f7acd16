"""Reading images (BMP, PNG, JPEG, TIFF) with one-line errors for corrupt files."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from blastscope._problems import BlastscopeError

__all__ = ["IMAGE_SUFFIXES", "is_image_file", "read_image", "decode_image", "sha256_file"]

IMAGE_SUFFIXES = frozenset({".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"})


def is_image_file(path: str | Path) -> bool:
    """True if the suffix is one blastscope reads (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def decode_image(data: bytes, path: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an ``(H, W, 3)`` uint8 RGB array.

    Grey images are repeated to three channels; an alpha channel is dropped. Raises
    :class:`BlastscopeError` naming ``path`` when the bytes are not a complete image.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # forces a full decode: truncated files fail here, not later in training
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BlastscopeError(
            f"{path}: cannot decode image ({e}); the file is corrupt, truncated or not an image: "
            "re-copy it from the source or remove it"
        ) from None
    return np.asarray(rgb, dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` uint8 RGB array.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> p = tempfile.mktemp(suffix=".png"); Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(p)
    >>> read_image(p).shape
    (4, 5, 3)
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BlastscopeError(f"{path}: file not found; check the path (or the manifest that names it)") from None
    except IsADirectoryError:
        raise BlastscopeError(f"{path}: is a folder, not an image file") from None
    return decode_image(data, path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
