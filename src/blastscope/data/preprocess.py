"""One pre-processing object, built from a checkpoint's model record, for every place a model sees pixels.

Training (the classifier's normalisation), :class:`blastscope.inference.Predictor`, the two-stage
crop classifier, ONNX export parity and the GUI all go through :class:`Preprocess`, so a model sees
the same tensor wherever an image comes from:

- a **detector** (``kind="letterbox"``): the frame is letterboxed to ``size`` (grey padding,
  :func:`blastscope.data.letterbox.letterbox_array`), scaled to ``[0, 1]`` and normalised with
  ``(x - mean) / std``; the returned :class:`~blastscope.data.letterbox.Geometry` maps boxes back;
- a **classifier** (``kind="crop"``): each cell is cut as the square crop of training
  (:func:`blastscope.data.crops.square_crops`, black padding, ``margin`` around the box, resized
  to ``size``), then scaled and normalised the same way.

Examples
--------
>>> import numpy as np
>>> pre = Preprocess("letterbox", 64)
>>> x, (g,) = pre([np.zeros((32, 64, 3), np.uint8)])
>>> tuple(x.shape), (g.pad_x, g.pad_y)
((1, 3, 64, 64), (0, 16))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from blastscope.data.crops import DEFAULT_MARGIN, square_crops
from blastscope.data.letterbox import PAD_VALUE, Geometry, letterbox_resized

if TYPE_CHECKING:
    import torch

__all__ = ["Preprocess"]

KINDS = ("letterbox", "crop")


def _square(size: Any) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"input_size={size!r}: blastscope models take square inputs")
        size = size[0]
    return int(size)


@dataclass(frozen=True)
class Preprocess:
    """Image(s) in -> normalised ``(B, 3, size, size)`` float32 tensor (plus geometry for detectors).

    Parameters
    ----------
    kind : {"letterbox", "crop"}
        Detector input (whole frame, letterboxed) or classifier input (square cell crops).
    size : int
        Side of the square network input in pixels.
    mean, std : tuple of 3 float
        Normalisation of ``[0, 1]`` RGB: ``x = (rgb / 255 - mean) / std``.
    pad_value : int
        Letterbox padding grey (detectors); crops are padded with black (the background of
        segmented single cells).
    margin : float
        Context around a cell box, as a fraction of its longer side (classifiers).
    stain_norm : tuple of 2 tuples of 3 float, optional
        Classifiers: the Reinhard LAB target ``(mean, std)`` every crop is normalised to (the
        checkpoint's ``cells.stain_norm`` record, fitted on its training cells); None: off.
    """

    kind: str
    size: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad_value: int = PAD_VALUE
    margin: float = DEFAULT_MARGIN
    stain_norm: tuple | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: use one of {KINDS}")
        object.__setattr__(self, "size", _square(self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.stain_norm is not None:
            m, sd = self.stain_norm
            object.__setattr__(self, "stain_norm", (tuple(float(v) for v in m), tuple(float(v) for v in sd)))

    @classmethod
    def from_info(cls, info: Mapping[str, Any] | Any, *, size: int | None = None, **overrides) -> Preprocess:
        """The pre-processing of a model record (a checkpoint's ``"model"`` dict, a ``ModelInfo`` or
        ONNX metadata): ``task`` picks the kind, ``input_size``, ``mean`` and ``std`` the rest."""
        if not isinstance(info, Mapping):
            info = dataclasses.asdict(info)
        kind = "letterbox" if info.get("task") == "detect" else "crop"
        default_norm = ((0.0,) * 3, (1.0,) * 3) if kind == "letterbox" else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        record = (info.get("cells") or {}).get("stain_norm") if kind == "crop" else None
        if record:
            from blastscope.data.stain import stain_norm_target  # scikit-image: only when a model needs it

            target = stain_norm_target(record)
        else:
            target = None
        overrides.setdefault("stain_norm", None if target is None else (tuple(target[0]), tuple(target[1])))
        return cls(
            kind,
            size if size is not None else info.get("input_size", 416 if kind == "letterbox" else 224),
            tuple(info.get("mean", default_norm[0])),
            tuple(info.get("std", default_norm[1])),
            **overrides,
        )

    @property
    def is_identity_norm(self) -> bool:
        return self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)

    def normalize(self, canvases: np.ndarray) -> torch.Tensor:
        """``(B, S, S, 3)`` uint8 RGB -> ``(B, 3, S, S)`` float32, scaled to ``[0, 1]`` and normalised."""
        import torch

        return torch.from_numpy(self.normalize_array(canvases))

    def normalize_array(self, canvases: np.ndarray) -> np.ndarray:
        """:meth:`normalize` as a NumPy array (torch-free)."""
        x = np.asarray(canvases, dtype=np.float32) / 255.0
        if not self.is_identity_norm:
            x = (x - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def normalize_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` float tensor in ``[0, 1]`` (a training batch, any device) -> normalised."""
        import torch

        if self.is_identity_norm:
            return images
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[Geometry]]:
        """Letterbox frames (any sizes) into one batch; returns the tensor and each frame's geometry.

        :meth:`letterbox_batch` as a torch tensor (sharing its memory).
        """
        import torch

        x, geometries = self.letterbox_batch(images)
        return torch.from_numpy(x), geometries

    def letterbox_batch(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Geometry]]:
        """Letterbox frames (any sizes) into one ``(B, 3, S, S)`` float32 array (torch-free); returns it
        and each frame's geometry.

        The same numbers as :func:`~blastscope.data.letterbox.letterbox_array` then :meth:`normalize`,
        without the intermediate uint8 canvas and float copies: per frame one ``cv2.resize`` and
        one ``np.divide`` that scales the resized pixels straight into their place in the
        preallocated ``(B, 3, S, S)`` batch (channels first); the padding is filled with the
        normalised grey.
        """
        if self.kind != "letterbox":
            raise ValueError("a crop pre-processing takes cells: call .cells(image, boxes)")
        s = self.size
        out = np.empty((len(images), 3, s, s), np.float32)
        pad = ((np.float32(self.pad_value) / np.float32(255.0) - np.float32(self.mean)) / np.float32(self.std)).reshape(3, 1, 1)
        geometries = []
        for x, image in zip(out, images):
            resized, g = letterbox_resized(image, s)
            y0, y1, x0, x1 = g.pad_y, g.pad_y + g.new_h, g.pad_x, g.pad_x + g.new_w
            x[:, :y0], x[:, y1:], x[:, y0:y1, :x0], x[:, y0:y1, x1:] = pad, pad, pad, pad  # the border only
            region = x[:, y0:y1, x0:x1]
            np.divide(resized.transpose(2, 0, 1), np.float32(255.0), out=region, dtype=np.float32)
            if not self.is_identity_norm:
                region -= np.float32(self.mean).reshape(3, 1, 1)
                region /= np.float32(self.std).reshape(3, 1, 1)
            geometries.append(g)
        return out, geometries

    def cells(self, image: np.ndarray, boxes: np.ndarray, margin: float | None = None) -> torch.Tensor:
        """Square crops of ``boxes`` (``(N, 4)`` xyxy frame pixels) of one frame as a batch.

        ``margin`` defaults to :attr:`margin` (use 0 for a whole image given as its full box).
        """
        crops = self.crop_pixels(image, boxes, margin)
        return self.normalize(crops)

    def crop_pixels(self, image: np.ndarray, boxes: np.ndarray, margin: float | None = None) -> np.ndarray:
        """The crops themselves, ``(N, size, size, 3)`` uint8 RGB (what the classifier sees; stain-normalised
        to :attr:`stain_norm` when set)."""
        crops = square_crops(
            image, np.asarray(boxes, np.float32).reshape(-1, 4), self.margin if margin is None else margin, self.size, pad_value=0
        )
        if self.stain_norm is not None and len(crops):
            from blastscope.data.stain import reinhard_normalise

            crops = np.stack([reinhard_normalise(c, *self.stain_norm) for c in crops])
        return crops
