"""Reader for Darknet ``.weights`` files (written from the public description of the format).

Layout: a header of three ``int32`` (major, minor, revision) and the number of images seen
during training (``int64`` when ``major * 10 + minor >= 2``, else ``int32``), then little-endian
``float32`` parameters, convolution after convolution in the order of the ``.cfg``:

* a convolution followed by batch normalisation: BN bias (beta), BN scale (gamma), running
  mean, running variance (``filters`` values each), then the convolution kernel
  (``filters x channels x size x size``, the PyTorch weight layout);
* a convolution without batch normalisation: its bias (``filters``), then its kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from blastscope._problems import BlastscopeError

__all__ = ["DarknetHeader", "read_darknet_header", "load_darknet_convs"]


@dataclass(frozen=True)
class DarknetHeader:
    """The header of a ``.weights`` file.

    Attributes
    ----------
    major, minor, revision : int
        Format version.
    seen : int
        Images seen in training.
    size : int
        Header length in bytes (16 or 20); the parameters start there.
    """

    major: int
    minor: int
    revision: int
    seen: int
    size: int


def read_darknet_header(data: bytes, path: str | Path = "<bytes>") -> DarknetHeader:
    """Parse the header at the start of ``data`` (the bytes of a ``.weights`` file)."""
    if len(data) < 16:
        raise BlastscopeError(f"{path}: {len(data)} bytes is too short for a darknet .weights file; re-fetch it")
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", count=3))
    wide = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
    if wide:
        seen, size = int(np.frombuffer(data, "<i8", count=1, offset=12)[0]), 20
    else:
        seen, size = int(np.frombuffer(data, "<i4", count=1, offset=12)[0]), 16
    return DarknetHeader(major, minor, revision, seen, size)


def load_darknet_convs(layers: Sequence[tuple[nn.Conv2d, nn.BatchNorm2d | None]], path: str | Path) -> DarknetHeader:
    """Copy the parameters of a ``.weights`` file into ``layers``, in order, checking every byte is used.

    Parameters
    ----------
    layers : sequence of (Conv2d, BatchNorm2d or None)
        The network's convolutions in ``.cfg`` order; a convolution paired with a batch norm
        must have no bias, one without must have a bias.
    path : path
        The ``.weights`` file.

    Returns
    -------
    DarknetHeader

    Raises
    ------
    BlastscopeError
        The file is shorter or longer than the network needs (wrong cfg or corrupt file).
    """
    path = Path(path)
    data = path.read_bytes()
    header = read_darknet_header(data, path)
    if (len(data) - header.size) % 4:
        raise BlastscopeError(f"{path}: parameter block is not a whole number of float32; corrupt file, re-fetch it")
    values = np.frombuffer(data, "<f4", offset=header.size)
    needed = sum(conv.weight.numel() + (4 * bn.num_features if bn is not None else conv.out_channels) for conv, bn in layers)
    if needed != values.size:
        raise BlastscopeError(
            f"{path}: holds {values.size} parameters but the network needs {needed}; "
            "it is not the weights file of this architecture (or it is truncated)"
        )
    pos = 0

    def take(t: torch.Tensor) -> None:
        nonlocal pos
        n = t.numel()
        t.copy_(torch.from_numpy(values[pos : pos + n].copy()).view_as(t))
        pos += n

    with torch.no_grad():
        for conv, bn in layers:
            if bn is not None:
                take(bn.bias)
                take(bn.weight)
                take(bn.running_mean)
                take(bn.running_var)
            else:
                take(conv.bias)
            take(conv.weight)
    assert pos == values.size  # guaranteed by the size check above
    return header
