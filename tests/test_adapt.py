"""blastscope adapt: BatchNorm statistics of a new lab's real cells (AdaBN), checked against a direct computation."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from blastscope.cli.main import main
from blastscope.models.checkpoint import (
    load_checkpoint,
    load_model,
    make_checkpoint,
    save_checkpoint,
)
from blastscope.models.registry import create_model

NAMES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil"]


@pytest.fixture(scope="module")
def setup(pbc_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    model = create_model("mobilenet_v2", num_classes=7, class_names=NAMES, pretrained=True)
    ckpt = save_checkpoint(make_checkpoint(model, epoch=1, input_size=64), root / "src.pt")
    lab = root / "newlab"
    lab.mkdir()
    for p in sorted((pbc_sample / "test" / "images").iterdir())[:12]:  # 12 real cells, one batch
        shutil.copy(p, lab)
    return root, ckpt, lab


def _bn(sd, name="net.features.0.1"):
    return sd[f"{name}.running_mean"], sd[f"{name}.running_var"]


def test_full_adabn_equals_the_new_cells_statistics(setup):
    from blastscope.data.crops import square_crop
    from blastscope.data.images import read_image

    root, ckpt, lab = setup
    out = root / "full.pt"
    assert main(["adapt", str(ckpt), "--images", str(lab), "--out", str(out), "--weight", "1"]) == 0
    adapted = load_checkpoint(out, task="classify")
    # direct: the first convolution's outputs on the 12 whole-image cells, mean and unbiased variance per channel
    model, _ = load_model(ckpt, task="classify")
    x = []
    for p in sorted(lab.iterdir()):
        img = read_image(p)
        h, w = img.shape[:2]
        x.append(torch.from_numpy(square_crop(img, [0, 0, w, h], 0.0, 64, 0)).permute(2, 0, 1).float() / 255)
    x = (torch.stack(x) - torch.tensor(model.info.mean).view(1, 3, 1, 1)) / torch.tensor(model.info.std).view(1, 3, 1, 1)
    with torch.no_grad():
        f = model.net.features[0][0](x)
    mean, var = _bn(adapted["state_dict"])
    torch.testing.assert_close(mean, f.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var, f.var(dim=(0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5)
    src = load_checkpoint(ckpt)
    assert not torch.allclose(mean, _bn(src["state_dict"])[0])
    prov = adapted["adaptation"]
    assert prov["method"] == "adabn" and prov["weight"] == 1.0 and prov["n_cells"] == 12
    assert prov["source_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    # weights other than running statistics are untouched
    for k, v in src["state_dict"].items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, adapted["state_dict"][k]), k


def test_weight_mixes_linearly_and_zero_keeps_the_checkpoint(setup, capsys):
    root, ckpt, lab = setup
    for w in ("0", "0.5"):
        assert main(["adapt", str(ckpt), "--images", str(lab), "--out", str(root / f"w{w}.pt"), "--weight", w]) == 0
    src, full = (
        load_checkpoint(ckpt)["state_dict"],
        load_checkpoint(root / "full.pt")["state_dict"] if (root / "full.pt").exists() else None,
    )
    zero, half = load_checkpoint(root / "w0.pt")["state_dict"], load_checkpoint(root / "w0.5.pt")["state_dict"]
    for k in src:
        assert torch.equal(src[k], zero[k]), k
    if full is not None:
        name = "net.features.3.conv.1.1"
        torch.testing.assert_close(_bn(half, name)[0], 0.5 * (_bn(src, name)[0] + _bn(full, name)[0]))
    # errors: an existing output, a weight out of range, no images
    assert main(["adapt", str(ckpt), "--images", str(lab), "--out", str(root / "w0.pt"), "--weight", "1"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["adapt", str(ckpt), "--images", str(lab), "--out", str(root / "bad.pt"), "--weight", "1.5"]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    empty = root / "empty"
    empty.mkdir()
    assert main(["adapt", str(ckpt), "--images", str(empty), "--out", str(root / "e.pt"), "--weight", "1"]) == 2
    assert "no images" in capsys.readouterr().err
