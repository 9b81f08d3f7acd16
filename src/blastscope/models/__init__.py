"""blastscope.models: the model registry, pretrained weights and the network definitions.

>>> from blastscope.models import create_model
>>> model = create_model("yolov3-tiny", num_classes=2, pretrained=False)  # doctest: +SKIP

Names are imported on first use, so the torch-free modules (:mod:`blastscope.models.weights`,
:mod:`blastscope.models.record`, :mod:`blastscope.models.yolo_spec`) import without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "registry": ("ModelInfo", "create_model", "list_models", "register_model"),
    "weights": ("WEIGHTS", "WeightSpec", "install_torch_hub_copy", "resolve_weights"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
