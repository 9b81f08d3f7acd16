"""Reading images (BMP, PNG, JPEG, TIFF): the one decode path of every command.

Every image blastscope opens (import, annotate, convert, train, evaluate, predict, export, gui)
goes through :func:`open_image`, so the same rules hold everywhere:

* a pixel limit (:func:`max_pixels`, default 64 megapixels; ``--max-pixels N`` on every command,
  or the environment variable ``BLASTSCOPE_MAX_PIXELS``; 0 means no limit) checked from the header,
  before any pixel is decoded: a decompression bomb (a small file whose header claims 100000 x
  100000 pixels) is one problem line, not a crash or gigabytes of memory;
* corrupt, truncated, empty and unknown files are one :class:`BlastscopeError` naming the file;
* 16-bit (and 32-bit integer or float) grey images are scaled to 8 bits by their real bit depth
  (the smallest of 8, 9, ..., 16 bits that holds the brightest pixel; float images by their data
  range), said once per process on stderr, instead of being clipped to white.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from blastscope._problems import BlastscopeError

__all__ = [
    "IMAGE_SUFFIXES",
    "DEFAULT_MAX_PIXELS",
    "is_image_file",
    "max_pixels",
    "set_max_pixels",
    "open_image",
    "image_size",
    "read_image",
    "decode_image",
    "sha256_file",
]

IMAGE_SUFFIXES = frozenset({".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"})

#: default pixel limit: 64 megapixels (8000 x 8000), far above any smear camera's frame
DEFAULT_MAX_PIXELS = 64_000_000

# PIL's own bomb check warns above its limit and raises DecompressionBombError (not an OSError) at
# twice it, in Image.open; blastscope checks its own configurable limit in open_image instead.
Image.MAX_IMAGE_PIXELS = None


def _env_limit() -> int:
    text = os.environ.get("BLASTSCOPE_MAX_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        return max(0, int(float(text)))
    except ValueError:
        raise BlastscopeError(
            f"BLASTSCOPE_MAX_PIXELS={text!r}: not a number; give a pixel count such as 64e6 (0: no limit)"
        ) from None


_limit: int | None = None  # read from the environment on first use
_said_high_bit_depth = False
_say_lock = threading.Lock()  # the importer decodes on a thread pool: say it once, not once per thread


def max_pixels() -> int:
    """The pixel limit (width x height) of :func:`open_image`; 0 means no limit."""
    global _limit
    if _limit is None:
        _limit = _env_limit()
    return _limit


def set_max_pixels(n: int | float | None) -> None:
    """Set the pixel limit for this process (``None``: back to ``BLASTSCOPE_MAX_PIXELS`` or the default)."""
    global _limit
    _limit = None if n is None else max(0, int(n))


def is_image_file(path: str | Path) -> bool:
    """True if the suffix is one blastscope reads (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _check_pixels(width: int, height: int, path: str | Path) -> None:
    limit = max_pixels()
    if limit and width * height > limit:
        raise BlastscopeError(
            f"{path}: image header says {width} x {height} pixels ({width * height / 1e6:.0f} megapixels), over the "
            f"limit of {limit / 1e6:g} megapixels (a decompression bomb, or a huge scan); shrink or tile the image, "
            "or raise the limit with --max-pixels N (or the environment variable BLASTSCOPE_MAX_PIXELS)"
        )


def _undecodable(path: str | Path, e: BaseException, data_size: int | None) -> BlastscopeError:
    if data_size == 0:
        return BlastscopeError(f"{path}: the file is empty (0 bytes); re-copy it from the source or remove it")
    if isinstance(e, UnidentifiedImageError):  # its text names the file object, not the file
        why = "not a recognised image format (BMP, PNG, JPEG or TIFF)"
    else:
        why = str(e) or type(e).__name__
    return BlastscopeError(
        f"{path}: cannot decode image ({why}); the file is corrupt, truncated or not an image: "
        "re-copy it from the source or remove it"
    )


@contextlib.contextmanager
def open_image(source: str | Path | bytes, path: str | Path | None = None) -> Iterator[Image.Image]:
    """Open an image file (or its bytes) with PIL, header only, its size checked against the limit.

    Parameters
    ----------
    source : str, Path or bytes
        The file, or its encoded bytes.
    path : str or Path, optional
        The name used in messages (default: ``source`` when it is a path).

    Yields
    ------
    PIL.Image.Image
        Not yet decoded: call ``load()`` (or read ``size`` only).

    Raises
    ------
    BlastscopeError
        Missing, empty, corrupt or unknown file, or more pixels than :func:`max_pixels`.
    """
    name = path if path is not None else ("<bytes>" if isinstance(source, bytes) else source)
    size = len(source) if isinstance(source, bytes) else None
    try:
        if size is None:
            size = os.stat(source).st_size
        im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise BlastscopeError(f"{name}: file not found; check the path (or the file that names it)") from None
    except IsADirectoryError:
        raise BlastscopeError(f"{name}: is a folder, not an image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _undecodable(name, e, size) from None
    with im:
        _check_pixels(im.width, im.height, name)
        try:
            yield im
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            if isinstance(e, BlastscopeError):
                raise
            raise _undecodable(name, e, size) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (no decode); limit checked."""
    with open_image(path) as im:
        return int(im.width), int(im.height)


def _to_uint8(im: Image.Image, path: str | Path) -> np.ndarray:
    """RGB uint8 pixels; grey images of more than 8 bits scaled by their real bit depth."""
    if im.mode == "RGB":  # no converted copy: a 64-megapixel smear is 192 MB per copy
        return np.asarray(im, dtype=np.uint8)
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if im.mode == "F" or arr.min() < 0:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (np.nan_to_num(arr.astype(np.float64)) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
        how = f"by its data range {lo:g}..{hi:g}"
    else:
        bits = max(8, int(arr.max()).bit_length())
        scaled = arr.astype(np.float64) * (255.0 / (2**bits - 1))
        how = f"by its {bits}-bit range (brightest pixel {int(arr.max())})"
    global _said_high_bit_depth
    with _say_lock:
        say, _said_high_bit_depth = not _said_high_bit_depth, True
    if say:
        print(
            f"note: {path}: {im.mode} image scaled to 8 bits {how}; other images of more than 8 bits are "
            "scaled the same way by their own range (said once)",
            file=sys.stderr,
        )
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def decode_image(data: bytes, path: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an ``(H, W, 3)`` uint8 RGB array.

    Grey images are repeated to three channels; an alpha channel is dropped; 16-bit grey images
    are scaled by their bit depth. Raises :class:`BlastscopeError` naming ``path`` when the bytes
    are not a complete image or hold more pixels than :func:`max_pixels`.
    """
    with open_image(data, path) as im:
        im.load()  # forces a full decode: truncated files fail here, not later in training
        return _to_uint8(im, path)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` uint8 RGB array (see :func:`decode_image`).

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
    except OSError as e:
        raise BlastscopeError(f"{path}: cannot read file ({e.strerror or e}); check its permissions") from None
    # the limit is checked from the header before the whole file is decoded
    return decode_image(data, path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
