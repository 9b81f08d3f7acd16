"""blastscope adapt: BatchNorm statistics of a new lab's real cells (AdaBN), checked against a direct computation."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
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


def test_tent_fits_only_the_batchnorm_affine_parameters_and_lowers_the_entropy(setup):
    from blastscope.engine.adapt import _loader, cells_manifest, predict_probs

    root, ckpt, lab = setup
    out = root / "tent.pt"
    assert (
        main(
            [
                "adapt",
                str(ckpt),
                "--images",
                str(lab),
                "--out",
                str(out),
                "--weight",
                "1",
                "--method",
                "tent",
                "--tent-steps",
                "5",
            ]
        )
        == 0
    )
    adapted = load_checkpoint(out, task="classify")
    assert adapted["adaptation"]["method"] == "tent" and adapted["adaptation"]["tent_steps"] == 5
    assert main(["adapt", str(ckpt), "--images", str(lab), "--out", str(root / "tent-ref.pt"), "--weight", "1"]) == 0
    ref = load_checkpoint(root / "tent-ref.pt")["state_dict"]  # AdaBN alone, same statistics
    model, _ = load_model(ckpt, task="classify")
    bn_affine = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) for p in ("weight", "bias")}
    changed = {k for k, v in adapted["state_dict"].items() if not torch.equal(v, ref[k])}
    assert changed and changed <= bn_affine, sorted(changed - bn_affine)[:3]

    def entropy(path):
        m, c = load_model(path, task="classify")
        loader, _ = _loader(m, cells_manifest(lab, list(m.info.class_names)), list(m.info.class_names), 32)
        p = predict_probs(m, loader)
        return float(-(p * np.log(np.maximum(p, 1e-12))).sum(1).mean())

    assert entropy(out) < entropy(root / "tent-ref.pt")


def test_prior_em_recovers_a_known_class_mix():
    from blastscope.engine.adapt import estimate_prior

    rng = np.random.default_rng(0)
    # two classes, x ~ N(-1, 1) or N(+1, 1); posteriors made under a 50/50 training prior; new lab 80/20
    y = rng.random(4000) < 0.2
    x = np.where(y, rng.normal(1, 1, 4000), rng.normal(-1, 1, 4000))
    lik = np.stack([np.exp(-((x + 1) ** 2) / 2), np.exp(-((x - 1) ** 2) / 2)], 1)
    post = lik / lik.sum(1, keepdims=True)
    pi = estimate_prior(post, [0.5, 0.5])
    assert abs(pi[1] - 0.2) < 0.03 and abs(pi.sum() - 1) < 1e-9
    assert abs(post.mean(0)[1] - 0.2) > 0.05  # the plain mean is biased towards the training prior: EM is needed


def test_prior_shift_moves_the_calibrated_probabilities_and_predict_adapt(setup, tmp_path):
    from blastscope.data.images import read_image
    from blastscope.inference.predictor import CropClassifier

    root, ckpt, lab = setup
    out = root / "prior.pt"
    assert main(["adapt", str(ckpt), "--images", str(lab), "--out", str(out), "--weight", "0", "--prior"]) == 0
    adapted = load_checkpoint(out, task="classify")
    shift = np.asarray(adapted["calibration"]["prior_shift"])
    new_prior = np.asarray(adapted["adaptation"]["new_prior"])
    assert shift.shape == (7,) and abs(new_prior.sum() - 1) < 1e-6
    img = read_image(sorted(lab.iterdir())[0])
    box = np.array([[0, 0, img.shape[1], img.shape[0]]], np.float32)
    p0 = np.asarray(CropClassifier.from_checkpoint(ckpt)(img, box, margin=0.0)[0].probabilities)
    p1 = np.asarray(CropClassifier.from_checkpoint(out)(img, box, margin=0.0)[0].probabilities)
    expect = p0 * np.exp(shift)
    np.testing.assert_allclose(p1, expect / expect.sum(), rtol=1e-4, atol=1e-6)

    # predict --adapt: adapts to the folder it is given, keeps the adapted checkpoint, predicts with it
    pred = tmp_path / "pred"
    assert main(["predict", str(ckpt), str(lab), "--out", str(pred), "--adapt", "1", "--no-progress", "--no-draw"]) == 0
    kept = load_checkpoint(pred / "adapted.pt")
    assert kept["adaptation"]["n_cells"] == 12 and kept["adaptation"]["weight"] == 1.0
    rows = (pred / "predictions.csv").read_text().splitlines()
    assert len(rows) == 13
    # a detector with --adapt is refused in one line
    assert main(["predict", str(ckpt), str(lab), "--out", str(tmp_path / "p2"), "--adapt", "1", "--classifier", str(ckpt)]) == 2
