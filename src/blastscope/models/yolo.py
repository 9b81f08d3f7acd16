"""YOLOv3-tiny: the network, its Darknet weights loader, the YOLOv3 loss and post-processing.

The layer layout follows Darknet's ``yolov3-tiny.cfg`` (13 convolutions)::

    stride  layers (cfg index)                                       out
    1..16   conv16 mp conv32 mp conv64 mp conv128 mp conv256  (0-8)  256 @ /16  -- route to head 16
    32      mp conv512 mp(2, stride 1) conv1024                (9-12) 1024 @ /32   } backbone
    32      conv256 1x1 (13)                                          256 @ /32   } neck
            -> conv512 (14) -> conv 1x1 (15) -> YOLO, anchors 3,4,5   head /32
    16      conv128 1x1 (18) upsample x2, concat with layer 8 (20)
            -> conv256 (21) -> conv 1x1 (22) -> YOLO, anchors 0,1,2   head /16

Box conventions (see :mod:`blastscope.data.types`): xyxy float input pixels. A raw head output
``(B, A*(5+K), H, W)`` holds, for each of the ``A = 3`` anchors, ``tx, ty, tw, th, to`` and ``K``
class logits; the box is ``cx = (sigmoid(tx) + col) * stride``, ``w = anchor_w * exp(tw)``,
objectness and class probabilities are sigmoids (independent classes, as in YOLOv3).

Examples
--------
>>> import torch
>>> from blastscope.models import create_model
>>> model = create_model("yolov3-tiny", num_classes=3, pretrained=False).eval()
>>> raw = model(torch.rand(1, 3, 416, 416))
>>> [tuple(r.shape) for r in raw]
[(1, 24, 13, 13), (1, 24, 26, 26)]
>>> model.decode(raw).shape
torch.Size([1, 2535, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou, generalized_box_iou_loss

from blastscope.models._darknet import DarknetHeader, load_darknet_convs
from blastscope.models.registry import register_model
from blastscope.models.weights import resolve_weights
from blastscope.models.yolo_spec import ANCHORS, MASKS, MAX_LOG_WH, STRIDES

__all__ = [
    "YOLOv3Tiny",
    "YoloDecoder",
    "ANCHORS",
    "COCO_CLASSES",
    "load_darknet_weights",
]


# The 80 class names of Darknet's coco.names, in index order.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa", "pottedplant", "bed",
    "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

_MAX_LOG_WH = MAX_LOG_WH  # exp(8) ~ 3000 x anchor: keeps exp() finite on wild logits


class ConvBNLeaky(nn.Module):
    """Darknet ``[convolutional]`` with ``batch_normalize=1, activation=leaky``: conv, BN, LeakyReLU(0.1)."""

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=1, padding=k // 2, bias=False)
        # Darknet divides by sqrt(var) + 1e-6; eps=1e-6 inside the root differs by < 1e-6 relative.
        self.bn = nn.BatchNorm2d(c_out, eps=1e-6, momentum=0.03)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MaxPoolStride1(nn.Module):
    """Darknet ``[maxpool] size=2 stride=1``: the 2x2 window extends right/down, past the edge
    only the in-image values count (replicate padding gives exactly that); keeps H and W."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)


@dataclass(frozen=True)
class YoloDecoder:
    """Decoding and NMS of YOLOv3-tiny head outputs: pure tensor functions of the anchors.

    Shared by the torch model (:meth:`YOLOv3Tiny.predict`) and the ONNX back-end (built from the
    exported file's metadata with :meth:`from_metadata`, no network needed), so both give the same
    boxes from the same raw outputs.

    Parameters
    ----------
    anchors : Tensor, shape (6, 2)
        ``(w, h)`` in input pixels; rows ``MASKS[level]`` belong to head ``level`` (stride ``STRIDES[level]``).
    num_classes : int
    """

    anchors: torch.Tensor
    num_classes: int
    masks: tuple[tuple[int, ...], ...] = MASKS
    strides: tuple[int, ...] = STRIDES

    @classmethod
    def from_metadata(cls, meta: dict) -> YoloDecoder:
        """From an exported model's metadata (``anchors``, ``class_names``)."""
        anchors = torch.tensor(meta.get("anchors") or ANCHORS, dtype=torch.float32).view(6, 2)
        return cls(anchors, len(meta["class_names"]))

    def _level_view(self, raw: torch.Tensor) -> torch.Tensor:
        """``(B, 3*(5+K), H, W)`` -> ``(B, 3, H, W, 5+K)``."""
        b, _, h, w = raw.shape
        return raw.view(b, 3, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2)

    def _boxes(self, p: torch.Tensor, level: int) -> torch.Tensor:
        """Decode ``p (B, 3, H, W, >=4)`` raw values to xyxy input pixels ``(B, 3, H, W, 4)``."""
        _, _, h, w, _ = p.shape
        stride = self.strides[level]
        gy, gx = torch.meshgrid(
            torch.arange(h, device=p.device, dtype=p.dtype), torch.arange(w, device=p.device, dtype=p.dtype), indexing="ij"
        )
        anchors = self.anchors.to(p.device)[list(self.masks[level])].to(p.dtype).view(1, 3, 1, 1, 2)
        cx = (p[..., 0].sigmoid() + gx) * stride
        cy = (p[..., 1].sigmoid() + gy) * stride
        wh = p[..., 2:4].clamp(max=_MAX_LOG_WH).exp() * anchors
        return torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1)

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Decode raw outputs to boxes, objectness and class probabilities.

        Parameters
        ----------
        raw : list of Tensors
            The model's head outputs (stride 32 first).

        Returns
        -------
        Tensor, shape (B, N, 5 + K)
            ``xmin, ymin, xmax, ymax`` (input pixels, unclipped), objectness, ``K`` class
            probabilities. ``N = 3 * (H/32 * W/32 + H/16 * W/16)``, ordered head by head (stride
            32 first), then anchor, row, column.
        """
        out = []
        for level, r in enumerate(raw):
            p = self._level_view(r)
            boxes = self._boxes(p, level)
            scores = p[..., 4:].sigmoid()
            out.append(torch.cat([boxes, scores], -1).flatten(1, 3))
        return torch.cat(out, 1)

    @torch.no_grad()
    def predict(
        self, raw: list[torch.Tensor], conf: float = 0.25, iou: float = 0.45, max_det: int = 300
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image: score threshold, class-wise NMS (``torchvision.ops.batched_nms``).

        ``conf`` is the minimum score (objectness x class probability of the best class), ``iou``
        the per-class NMS threshold, ``max_det`` the most detections kept per image.

        Only the cells whose objectness exceeds ``conf`` are decoded (a score is at most its
        objectness, so no detection is lost): at ``conf=0.25`` that is a few dozen of the 2,535
        predictions of a 416 px input, which keeps this step small next to the network. One
        :func:`~torchvision.ops.batched_nms` call covers the whole batch (image and class make
        the NMS group).

        Returns
        -------
        list of dict, one per image
            ``boxes`` (M, 4) float32 xyxy input pixels clipped to the input, ``scores`` (M,)
            float32, ``labels`` (M,) int64, highest score first.
        """
        raw = [torch.as_tensor(r) for r in raw]
        height = raw[0].shape[2] * self.strides[0]
        width = raw[0].shape[3] * self.strides[0]
        n_img, k = raw[0].shape[0], self.num_classes
        parts = []
        for level, r in enumerate(raw):
            b, _, h, w = r.shape
            p = r.float().view(b, 3, 5 + k, h * w)  # (image, anchor, channel, cell)
            img, anc, cell = torch.nonzero(p[:, :, 4].sigmoid() > conf, as_tuple=True)
            v = p[img, anc, :, cell]  # (M, 5 + K) raw values of the candidates
            stride = float(self.strides[level])
            gx, gy = (cell % w).to(v.dtype), torch.div(cell, w, rounding_mode="floor").to(v.dtype)
            wh = v[:, 2:4].clamp(max=_MAX_LOG_WH).exp() * self.anchors.to(v.device)[list(self.masks[level])][anc].to(v.dtype)
            cx, cy = (v[:, 0].sigmoid() + gx) * stride, (v[:, 1].sigmoid() + gy) * stride
            boxes = torch.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], 1)
            scores, labels = (v[:, 4:5].sigmoid() * v[:, 5:].sigmoid()).max(1)
            parts.append((img, boxes, scores, labels))
        img, boxes, scores, labels = (torch.cat(t) for t in zip(*parts))
        keep = scores > conf
        img, boxes, scores, labels = img[keep], boxes[keep], scores[keep], labels[keep]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = batched_nms(boxes, scores, img * k + labels, iou)  # sorted by score, highest first
        img = img[keep]
        results = []
        for i in range(n_img):  # per image, not per box
            sel = keep[img == i][:max_det]
            results.append({"boxes": boxes[sel], "scores": scores[sel], "labels": labels[sel]})
        return results


class YOLOv3Tiny(nn.Module):
    """YOLOv3-tiny detector.

    Parameters
    ----------
    num_classes : int
        Number of classes ``K``; each head predicts ``3 * (5 + K)`` channels.
    anchors : sequence of 6 (w, h)
        Anchor sizes in input pixels; the first three go to the stride-16 head, the last three to
        the stride-32 head.

    Notes
    -----
    ``forward`` returns the raw head outputs in both training and evaluation mode; use
    :meth:`decode`, :meth:`predict` and :meth:`loss` on them. ``model.info`` (set by
    :func:`blastscope.models.create_model`) carries class names and input size.
    """

    def __init__(self, num_classes: int = 80, anchors: Sequence[Sequence[float]] = ANCHORS) -> None:
        super().__init__()
        if len(anchors) != 6:
            raise ValueError(f"{len(anchors)} anchors given; YOLOv3-tiny needs 6 (w, h) pairs")
        self.num_classes = int(num_classes)
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(6, 2), persistent=True)
        self.strides = STRIDES
        self.masks = MASKS
        self._backbone_frozen = False
        self._frozen_layers = 0
        # backbone (cfg 0-12)
        self.stem = nn.Sequential(  # -> 256 @ stride 16
            ConvBNLeaky(3, 16, 3), nn.MaxPool2d(2, 2),
            ConvBNLeaky(16, 32, 3), nn.MaxPool2d(2, 2),
            ConvBNLeaky(32, 64, 3), nn.MaxPool2d(2, 2),
            ConvBNLeaky(64, 128, 3), nn.MaxPool2d(2, 2),
            ConvBNLeaky(128, 256, 3),
        )  # fmt: skip
        self.deep = nn.Sequential(  # -> 1024 @ stride 32
            nn.MaxPool2d(2, 2), ConvBNLeaky(256, 512, 3), MaxPoolStride1(), ConvBNLeaky(512, 1024, 3),
        )  # fmt: skip
        # neck and heads (cfg 13-22)
        self.neck = ConvBNLeaky(1024, 256, 1)
        self.pre32 = ConvBNLeaky(256, 512, 3)
        self.lateral = ConvBNLeaky(256, 128, 1)
        self.pre16 = ConvBNLeaky(128 + 256, 256, 3)
        self.head32 = nn.Conv2d(512, 3 * (5 + self.num_classes), 1)
        self.head16 = nn.Conv2d(256, 3 * (5 + self.num_classes), 1)
        self._init_heads()

    # ------------------------------------------------------------------ structure
    @property
    def backbone(self) -> nn.ModuleList:
        """The Darknet feature extractor (cfg layers 0-12)."""
        return nn.ModuleList([self.stem, self.deep])

    def darknet_layers(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
        """The 13 convolutions in ``.cfg`` order (the order of a ``.weights`` file)."""
        convs: list[ConvBNLeaky] = [m for m in (*self.stem, *self.deep) if isinstance(m, ConvBNLeaky)]
        layers: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = [(m.conv, m.bn) for m in convs]
        layers += [(self.neck.conv, self.neck.bn), (self.pre32.conv, self.pre32.bn), (self.head32, None)]
        layers += [(self.lateral.conv, self.lateral.bn), (self.pre16.conv, self.pre16.bn), (self.head16, None)]
        return layers

    def reset_heads(self, num_classes: int, input_size: int = 416) -> None:
        """Replace the two 1x1 head convolutions with fresh ones for ``num_classes`` classes.

        Weights are drawn from N(0, 0.01); objectness and class biases start at prior
        probabilities (see ``_init_heads``); ``input_size`` sets the objectness prior.
        """
        self.num_classes = int(num_classes)
        device = self.head32.weight.device
        self.head32 = nn.Conv2d(512, 3 * (5 + self.num_classes), 1).to(device)
        self.head16 = nn.Conv2d(256, 3 * (5 + self.num_classes), 1).to(device)
        self._init_heads(input_size)

    def _init_heads(self, input_size: int = 416) -> None:
        # Prior-probability biases: about 8 objects per image spread over each head's cells, and
        # class probability 1/K, so the first steps are not swamped by confident false positives.
        k = self.num_classes
        cls_bias = math.log(min(1.0 / k, 0.99) / (1 - min(1.0 / k, 0.99)))
        with torch.no_grad():
            for head, stride in ((self.head32, 32), (self.head16, 16)):
                nn.init.normal_(head.weight, std=0.01)
                b = head.bias.view(3, 5 + k)
                b.zero_()
                p_obj = min(8.0 / (input_size / stride) ** 2, 0.5)
                b[:, 4] = math.log(p_obj / (1 - p_obj))
                b[:, 5:] = cls_bias

    def set_backbone_frozen(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the backbone: no gradients, batch-norm statistics kept fixed."""
        self._backbone_frozen = bool(frozen)
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        if not frozen and self._frozen_layers:
            self.freeze_layers(self._frozen_layers)  # the layers frozen for the whole run stay frozen
        self.train(self.training)

    def freeze_layers(self, n: int) -> None:
        """Freeze the first ``n`` darknet convolutions (weights and batch norm, statistics kept) for good.

        Back-propagation then stops at layer ``n + 1``: with ``n = 1`` (the 3 -> 16 filters at full
        resolution, generic edge and colour detectors) a bf16 training step on the CPU is about 1.4x
        faster, since the largest feature maps need no gradient (see ``TrainConfig.freeze``).
        """
        convs = [m for m in self.stem if isinstance(m, ConvBNLeaky)]
        if not 0 <= n <= len(convs):
            raise ValueError(f"yolov3-tiny has {len(convs)} stem layers that can be frozen (0 to {len(convs)})")
        self._frozen_layers = int(n)
        for i, m in enumerate(convs):
            for p in m.parameters():
                p.requires_grad_(i >= n and not self._backbone_frozen)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if self._backbone_frozen:
            return [self.backbone]
        return [m for m in self.stem if isinstance(m, ConvBNLeaky)][: self._frozen_layers]

    def train(self, mode: bool = True) -> YOLOv3Tiny:
        super().train(mode)
        if mode:
            for frozen in self._frozen_modules():
                for m in frozen.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.eval()
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw head outputs.

        Parameters
        ----------
        x : Tensor, shape (B, 3, H, W), float in [0, 1], RGB
            ``H`` and ``W`` multiples of 32.

        Returns
        -------
        list of 2 Tensors
            ``(B, 3*(5+K), H/32, W/32)`` and ``(B, 3*(5+K), H/16, W/16)``.
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"input of shape {tuple(x.shape)}; expected (B, 3, H, W) with H and W multiples of 32")
        route = self.stem(x)
        p5 = self.neck(self.deep(route))
        out32 = self.head32(self.pre32(p5))
        up = F.interpolate(self.lateral(p5), scale_factor=2, mode="nearest")
        out16 = self.head16(self.pre16(torch.cat([up, route], 1)))
        return [out32, out16]

    # ------------------------------------------------------------------ decoding
    def decoder(self) -> YoloDecoder:
        """The pure decoding of this model's head outputs (anchors and class count)."""
        return YoloDecoder(self.anchors.detach().cpu(), self.num_classes)

    def _level_view(self, raw: torch.Tensor) -> torch.Tensor:  # the loss reads the raw values per level
        return YoloDecoder(self.anchors, self.num_classes)._level_view(raw)

    def _boxes(self, p: torch.Tensor, level: int) -> torch.Tensor:
        return YoloDecoder(self.anchors, self.num_classes)._boxes(p, level)

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`YoloDecoder.decode` of the raw outputs: ``(B, N, 5 + K)`` boxes, objectness, classes."""
        return YoloDecoder(self.anchors, self.num_classes).decode(raw)

    @torch.no_grad()
    def predict(
        self, raw: list[torch.Tensor], conf: float = 0.25, iou: float = 0.45, max_det: int = 300
    ) -> list[dict[str, torch.Tensor]]:
        """:meth:`YoloDecoder.predict`: score threshold, class-wise NMS, at most ``max_det`` boxes per image."""
        return YoloDecoder(self.anchors, self.num_classes).predict(raw, conf=conf, iou=iou, max_det=max_det)

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        raw: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        *,
        weights: tuple[float, float, float] = (0.05, 1.0, 0.5),
        ignore_iou: float = 0.5,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The YOLOv3 loss.

        Each ground-truth box is assigned to the one anchor (of all 6) whose width and height match
        it best (IoU of boxes sharing a centre), at the grid cell holding its centre on that
        anchor's head. Assigned predictions get a GIoU box loss and BCE class loss; objectness is
        BCE with target 1 for assigned predictions and 0 elsewhere, except that unassigned
        predictions whose box overlaps any ground truth by IoU > ``ignore_iou`` are left out.

        Every part is a mean (box and class over assigned predictions, objectness over all
        predictions of each head, heads summed), so the magnitude does not depend on batch size.

        Parameters
        ----------
        raw : list of Tensors
            Output of :meth:`forward`.
        targets : list of dict, one per image
            ``boxes`` (N, 4) float xyxy input pixels, ``labels`` (N,) int64 in ``[0, K)``; N may be 0.
        weights : (float, float, float)
            Multipliers of the box, objectness and class parts in the total.
        ignore_iou : float
            See above.

        Returns
        -------
        loss : Tensor, scalar
            ``weights[0] * box + weights[1] * obj + weights[2] * cls``.
        parts : dict
            ``{"box", "obj", "cls"}``: the detached unweighted parts.
        """
        device = raw[0].device
        batch = raw[0].shape[0]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch} images")
        gt_boxes = [t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4) for t in targets]
        gt_labels = [t["labels"].to(device=device, dtype=torch.int64).reshape(-1) for t in targets]
        all_boxes = torch.cat(gt_boxes)
        all_labels = torch.cat(gt_labels)
        all_img = torch.cat([torch.full((len(b),), i, device=device, dtype=torch.int64) for i, b in enumerate(gt_boxes)])
        if all_labels.numel() and (all_labels.min() < 0 or all_labels.max() >= self.num_classes):
            raise ValueError(f"target labels must be in [0, {self.num_classes}); got {all_labels.unique().tolist()}")

        # best anchor by width/height IoU (boxes sharing a centre), over all 6 anchors
        wh = (all_boxes[:, 2:] - all_boxes[:, :2]).clamp(min=1e-6)
        inter = torch.min(wh[:, None], self.anchors[None]).prod(2)
        wh_iou = inter / (wh.prod(1)[:, None] + self.anchors.prod(1)[None] - inter)
        best = wh_iou.argmax(1) if len(wh) else torch.zeros(0, dtype=torch.int64, device=device)
        centre = (all_boxes[:, :2] + all_boxes[:, 2:]) / 2

        zero = raw[0].sum() * 0.0  # keeps the graph (and dtype) when there are no boxes
        box_sum, cls_sum, n_pos, obj_total = zero, zero, 0, zero
        for level, r in enumerate(raw):
            p = self._level_view(r).float()
            _, _, h, w, _ = p.shape
            stride = self.strides[level]
            mask = torch.tensor(self.masks[level], device=device)
            obj_target = torch.zeros(p.shape[:4], device=device)
            obj_weight = torch.ones(p.shape[:4], device=device)

            pred_boxes = self._boxes(p, level)  # (B, 3, H, W, 4)
            with torch.no_grad():  # ignore region: overlapped by a ground truth, not assigned
                flat = pred_boxes.detach().view(batch, -1, 4)
                for i in range(batch):
                    if len(gt_boxes[i]):
                        overlap = box_iou(flat[i], gt_boxes[i]).amax(1) > ignore_iou
                        obj_weight[i].view(-1)[overlap] = 0.0

            sel = (best[:, None] == mask[None]).any(1)
            if sel.any():
                img = all_img[sel]
                a = (best[sel][:, None] == mask[None]).float().argmax(1)
                gx = (centre[sel, 0] / stride).long().clamp(0, w - 1)
                gy = (centre[sel, 1] / stride).long().clamp(0, h - 1)
                obj_target[img, a, gy, gx] = 1.0
                obj_weight[img, a, gy, gx] = 1.0
                box_sum = box_sum + generalized_box_iou_loss(pred_boxes[img, a, gy, gx], all_boxes[sel], reduction="sum")
                cls_logits = p[img, a, gy, gx, 5:]
                cls_target = F.one_hot(all_labels[sel], self.num_classes).float()
                cls_sum = cls_sum + F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="sum") / self.num_classes
                n_pos += int(sel.sum())
            obj_bce = F.binary_cross_entropy_with_logits(p[..., 4], obj_target, reduction="none")
            obj_total = obj_total + (obj_bce * obj_weight).sum() / obj_weight.numel()

        n = max(n_pos, 1)
        box, cls = box_sum / n, cls_sum / n
        total = weights[0] * box + weights[1] * obj_total + weights[2] * cls
        return total, {"box": box.detach(), "obj": obj_total.detach(), "cls": cls.detach()}


def load_darknet_weights(model: YOLOv3Tiny, path: str | Path) -> DarknetHeader:
    """Load a Darknet ``yolov3-tiny.weights`` file into ``model`` (which must have 80 classes).

    Parameters
    ----------
    model : YOLOv3Tiny
    path : path
        The ``.weights`` file; every byte must be consumed.

    Returns
    -------
    DarknetHeader
        Version and images-seen count of the file.

    Raises
    ------
    BlastscopeError
        The file does not match the network (size mismatch).
    """
    return load_darknet_convs(model.darknet_layers(), path)


@register_model(
    "yolov3-tiny",
    task="detect",
    input_size=416,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    pretrained_class_names=COCO_CLASSES,
)
def yolov3_tiny(*, num_classes: int, pretrained: bool = True, input_size: int = 416, anchors=None) -> YOLOv3Tiny:
    """YOLOv3-tiny; ``pretrained`` loads Darknet's COCO weights and re-makes the heads for ``num_classes``.

    ``input_size`` (a multiple of 32) is only recorded in ``model.info``; ``anchors`` (six
    ``(w, h)`` pairs in input pixels) defaults to the COCO anchors of the cfg.
    """

    if input_size % 32:
        raise ValueError(f"input_size={input_size}; must be a multiple of 32")
    anchors = ANCHORS if anchors is None else anchors
    if not pretrained:
        model = YOLOv3Tiny(num_classes, anchors)
        model._init_heads(input_size)
        return model
    model = YOLOv3Tiny(80, anchors)
    load_darknet_weights(model, resolve_weights("yolov3-tiny-coco"))
    if num_classes != 80:
        model.reset_heads(num_classes, input_size)
    return model
