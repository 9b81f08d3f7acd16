"""The ImageNet-pretrained classifiers really load their weights (checked on a real photo)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from blastscope.models import create_model
from blastscope.models.weights import resolve_weights

# ImageNet indices 281-285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian cat).
CATS = set(range(281, 286))


def _chelsea(size: int, mean, std) -> torch.Tensor:
    img = Image.fromarray(data.chelsea()).resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0  # a writable copy
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


def test_mobilenet_v2_pretrained_backbone_recognises_a_cat():
    model = create_model("mobilenet_v2", class_names=["ALL", "HEM"], pretrained=True).eval()
    state = torch.load(resolve_weights("mobilenet_v2-imagenet"), map_location="cpu", weights_only=True)
    # the new head has 2 outputs; the backbone equals the ImageNet file tensor for tensor
    assert model.net.classifier[-1].out_features == 2
    for k, v in model.net.features.state_dict().items():
        torch.testing.assert_close(v, state[f"features.{k}"])
    # put the ImageNet head back on the loaded backbone: the cat photo is a cat
    head = torch.nn.Linear(1280, 1000)
    head.load_state_dict({"weight": state["classifier.1.weight"], "bias": state["classifier.1.bias"]})
    model.net.classifier[-1] = head
    with torch.inference_mode():
        top = model(_chelsea(224, model.info.mean, model.info.std)).argmax(1).item()
    assert top in CATS


def test_efficientnet_lite0_positional_mapping_recognises_a_cat():
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=True).eval()
    assert model.info.mean == (0.5, 0.5, 0.5) and model.info.std == (0.5, 0.5, 0.5)
    state = torch.load(resolve_weights("efficientnet_lite0-imagenet"), map_location="cpu", weights_only=True)
    head = torch.nn.Linear(1280, 1000)
    head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    model.net.classifier = head
    with torch.inference_mode():
        top = model(_chelsea(224, model.info.mean, model.info.std)).argmax(1).item()
    assert top in CATS


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_frozen_backbone_gets_no_gradient(name):
    model = create_model(name, num_classes=2, pretrained=False)
    model.set_backbone_frozen(True)
    model.train()
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    backbone = [p for n, p in model.named_parameters() if "classifier" not in n]
    head = [p for n, p in model.named_parameters() if "classifier" in n]
    assert all(p.grad is None for p in backbone)
    assert all(p.grad is not None for p in head)
