"""YOLOv3-tiny: real COCO weights (cameraman, OpenCV parity), loader, transfer learning, loss, letterbox."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from torchvision.ops import box_iou

from blastscope import BlastscopeError
from blastscope.data.preprocess import Preprocess
from blastscope.models import create_model, list_models, resolve_weights
from blastscope.models._darknet import read_darknet_header
from blastscope.models.yolo import COCO_CLASSES, YOLOv3Tiny, load_darknet_weights

# The cameraman (skimage.data.camera(), 512 x 512): the man from his hair to the bottom edge,
# from the left edge to his hand on the camera, drawn and checked by eye.
CAMERAMAN_PERSON = [0.0, 62.0, 332.0, 512.0]


@pytest.fixture(scope="module")
def coco_model() -> YOLOv3Tiny:
    return create_model("yolov3-tiny", num_classes=80, pretrained=True).eval()


@pytest.fixture(scope="module")
def cameraman():
    image = np.repeat(data.camera()[:, :, None], 3, axis=2)  # grey -> RGB, (512, 512, 3) uint8
    x, (geometry,) = Preprocess("letterbox", 416)([image])
    return image, x[0], geometry


def test_registry_lists_and_rejects_unknown():
    assert "yolov3-tiny" in list_models()
    with pytest.raises(BlastscopeError, match="unknown model; choose one of .*yolov3-tiny"):
        create_model("yolov9000", num_classes=2)


def test_pretrained_class_names_are_coco_names(coco_model):
    names = resolve_weights("coco-names").read_text().split("\n")
    assert list(COCO_CLASSES) == [n for n in names if n]
    info = coco_model.info
    assert (info.arch, info.task, info.input_size, info.class_names) == ("yolov3-tiny", "detect", 416, list(COCO_CLASSES))
    assert (info.mean, info.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_cameraman_person(coco_model, cameraman):
    image, tensor, geometry = cameraman
    with torch.inference_mode():
        det = coco_model.predict(coco_model(tensor[None]), conf=0.25)[0]
    person = det["labels"] == COCO_CLASSES.index("person")
    boxes = torch.from_numpy(geometry.to_image(det["boxes"][person])).float()
    iou = box_iou(boxes, torch.tensor([CAMERAMAN_PERSON]))[:, 0]
    best = int(iou.argmax())
    assert iou[best] > 0.5, (boxes, iou)
    assert det["scores"][person][best] > 0.3


def test_outputs_match_opencv_darknet(coco_model, cameraman):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.skip(f"OpenCV {cv2.__version__} has no Darknet importer (removed in 5.0); install opencv-python-headless<5")
    _, tensor, _ = cameraman
    net = cv2.dnn.readNetFromDarknet(str(resolve_weights("yolov3-tiny-coco-cfg")), str(resolve_weights("yolov3-tiny-coco")))
    net.setInput(tensor[None].numpy())
    reference = net.forward(net.getUnconnectedOutLayersNames())  # heads in cfg order: stride 32, 16
    with torch.inference_mode():
        decoded = coco_model.decode(coco_model(tensor[None]))[0].numpy()
    offset = 0
    for ref, stride in zip(reference, (32, 16)):
        g = 416 // stride
        # ours: (anchor, row, col) blocks of xyxy px, obj, class probs; OpenCV: rows (row, col, anchor)
        # of centre and size / input size, obj, obj * class prob (zeroed below its 0.2 threshold)
        d = decoded[offset : offset + 3 * g * g].reshape(3, g, g, 85).transpose(1, 2, 0, 3).reshape(-1, 85)
        offset += 3 * g * g
        ours = np.concatenate(
            [(d[:, 0:2] + d[:, 2:4]) / 2 / 416, (d[:, 2:4] - d[:, 0:2]) / 416, d[:, 4:5], d[:, 4:5] * d[:, 5:]], 1
        )
        assert ref.shape == ours.shape == (3 * g * g, 85)
        np.testing.assert_allclose(ours[:, :5], ref[:, :5], atol=1e-3, rtol=0)
        kept = ref[:, 5:] > 0
        assert kept.any()  # the comparison below is not vacuous
        np.testing.assert_allclose(ours[:, 5:][kept], ref[:, 5:][kept], atol=1e-3, rtol=0)
        assert (ours[:, 5:][~kept] < 0.2 + 1e-3).all()


def test_loader_consumes_whole_file_and_rejects_other_sizes(tmp_path):
    path = resolve_weights("yolov3-tiny-coco")
    raw = path.read_bytes()
    header = read_darknet_header(raw)
    assert (header.major, header.minor, header.size) == (0, 2, 20)
    model = YOLOv3Tiny(80)
    n_params = sum(
        c.weight.numel() + (4 * b.num_features if b is not None else c.out_channels) for c, b in model.darknet_layers()
    )
    assert header.size + 4 * n_params == len(raw)  # every byte is a header byte or one parameter
    assert load_darknet_weights(model, path) == header
    # the last value of the file lands in the last parameter the reader fills (head16's kernel)
    assert model.head16.weight.flatten()[-1].item() == np.frombuffer(raw[-4:], "<f4")[0]
    for name, bad in (("short", raw[:-4]), ("long", raw + b"\0\0\0\0")):
        (tmp_path / name).write_bytes(bad)
        with pytest.raises(BlastscopeError, match="parameters but the network needs"):
            load_darknet_weights(YOLOv3Tiny(80), tmp_path / name)


def test_transfer_heads_and_frozen_backbone(coco_model):
    model = create_model("yolov3-tiny", num_classes=3, class_names=["a", "b", "c"], pretrained=True)
    assert model.info.class_names == ["a", "b", "c"]
    assert model.head32.out_channels == model.head16.out_channels == 3 * (5 + 3)
    coco = coco_model.state_dict()
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith(("head32", "head16"))}
    assert len(kept) > 60 and all(torch.equal(v, coco[k]) for k, v in kept.items())
    # prior-probability biases: low objectness, class probability 1/K
    bias = model.head32.bias.view(3, 8)
    assert torch.all(bias[:, 4].sigmoid() < 0.1) and torch.allclose(bias[:, 5:].sigmoid(), torch.tensor(1 / 3))

    model.set_backbone_frozen(True)
    model.train()
    before = model.stem[0].bn.running_mean.clone()
    raw = model(torch.rand(2, 3, 64, 64))
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    model.loss(raw, targets)[0].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert torch.equal(model.stem[0].bn.running_mean, before)  # frozen BN keeps its statistics
    assert model.head16.weight.grad is not None and model.neck.conv.weight.grad is not None
    model.set_backbone_frozen(False)
    assert all(p.requires_grad for p in model.parameters())


def test_decode_of_zero_outputs_is_anchor_at_cell_centre():
    model = YOLOv3Tiny(num_classes=2)
    raw = [torch.zeros(1, 21, 2, 3), torch.zeros(1, 21, 4, 6)]  # a 64 x 96 input
    dec = model.decode(raw)
    assert dec.shape == (1, 3 * (6 + 24), 7)
    # stride-32 head, anchor 1 of its mask (cfg anchor 4: 135 x 169), row 1, column 2
    cx, cy = (2 + 0.5) * 32, (1 + 0.5) * 32
    expected = [cx - 67.5, cy - 84.5, cx + 67.5, cy + 84.5, 0.5, 0.5, 0.5]
    torch.testing.assert_close(dec[0, 1 * 6 + 1 * 3 + 2], torch.tensor(expected))


def test_target_goes_to_best_anchor_at_centre_cell():
    model = YOLOv3Tiny(num_classes=2)
    raw = [torch.zeros(1, 21, 8, 8, requires_grad=True), torch.zeros(1, 21, 16, 16, requires_grad=True)]
    # a 40 x 56 box best matches cfg anchor 2 (37 x 58): stride-16 head, mask index 2
    box = torch.tensor([[100.0, 150.0, 140.0, 206.0]])  # centre (120, 178) -> cell col 7, row 11
    loss, parts = model.loss(raw, [{"boxes": box, "labels": torch.tensor([1])}])
    loss.backward()
    obj_grad = raw[1].grad.view(3, 7, 16, 16)[:, 4]
    assert obj_grad[2, 11, 7] < 0 and (obj_grad < 0).sum() == 1  # the one positive pulls objectness up
    assert raw[0].grad.view(3, 7, 8, 8)[:, 4].min() >= 0  # no positive on the other head
    cls_grad = raw[1].grad.view(3, 7, 16, 16)[2, 5:, 11, 7]
    assert cls_grad[1] < 0 < cls_grad[0]
    assert parts["box"] > 0 and parts["cls"] > 0


def test_loss_finite_without_boxes_and_independent_of_batch_size():
    torch.manual_seed(0)
    model = create_model("yolov3-tiny", num_classes=2, pretrained=False).eval()
    x = torch.rand(1, 3, 64, 96)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    loss, parts = model.loss(model(x), [empty])
    assert torch.isfinite(loss) and parts["box"] == 0 and parts["cls"] == 0 and parts["obj"] > 0
    loss.backward()
    one = {"boxes": torch.tensor([[10.0, 5.0, 50.0, 40.0]]), "labels": torch.tensor([1])}
    single = model.loss(model(x), [one])[0]
    double = model.loss(model(x.repeat(2, 1, 1, 1)), [one, one])[0]
    torch.testing.assert_close(single, double)


def _two_discs(size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Two bright discs on black, (1, 3, size, size) in [0, 1], and their (2, 4) xyxy boxes."""
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3), np.uint8)
    boxes = []
    for cx, cy, r in ((38, 38, 18), (87, 84, 23)):
        image[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r] = (230, 90, 200)
        boxes.append([cx - r, cy - r, cx + r, cy + r])
    return torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255, torch.tensor(boxes, dtype=torch.float32)


def test_overfits_two_discs():
    torch.manual_seed(0)
    x, boxes = _two_discs()
    targets = [{"boxes": boxes, "labels": torch.tensor([0, 0])}]
    model = create_model("yolov3-tiny", num_classes=1, class_names=["disc"], pretrained=True)
    model.set_backbone_frozen(True)  # the COCO features suffice, and the steps are ~3x faster
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(20):
        loss, _ = model.loss(model(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    with torch.inference_mode():
        det = model.predict(model(x), conf=0.25)[0]
    iou = box_iou(boxes, det["boxes"])
    assert len(det["boxes"]) >= 2 and (iou.amax(1) > 0.5).all(), (det, iou)


def test_letterbox_round_trip():
    image = np.zeros((100, 250, 3), np.uint8)
    image[20:60, 100:200] = 255
    x, (g,) = Preprocess("letterbox", 320)([image])
    tensor = x[0]
    assert tensor.shape == (3, 320, 320) and g.scale == pytest.approx(320 / 250) and (g.pad_x, g.pad_y) == (0, 96)
    box = np.array([[100.0, 20.0, 200.0, 60.0]], np.float32)
    in_net = g.to_input(box)
    # the white block lands where the forward mapping says (within a resampling pixel)
    ys, xs = np.nonzero(tensor[0].numpy() > 0.9)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], in_net[0], atol=1.5)
    np.testing.assert_allclose(g.to_image(in_net), box, atol=1e-4)
    np.testing.assert_allclose(g.to_image(torch.from_numpy(in_net)), box, atol=1e-4)  # tensors too
