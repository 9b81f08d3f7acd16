"""blastscope.models: the model registry, pretrained weights and the network definitions.

>>> from blastscope.models import create_model
>>> model = create_model("yolov3-tiny", num_classes=2, pretrained=False)  # doctest: +SKIP
"""

from blastscope.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    register_model,
)
from blastscope.models.weights import (
    WEIGHTS,
    WeightSpec,
    install_torch_hub_copy,
    resolve_weights,
)

__all__ = [
    "ModelInfo",
    "WEIGHTS",
    "WeightSpec",
    "create_model",
    "install_torch_hub_copy",
    "list_models",
    "register_model",
    "resolve_weights",
]
