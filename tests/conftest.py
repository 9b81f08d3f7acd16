"""Shared fixtures: paths to the real data in ../shared/data and small synthetic helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BLASTSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set BLASTSCOPE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (skips the test when absent)."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def cnmc_sample(shared_data) -> Path:
    """The 8 real C-NMC images in the Kaggle layout (``.../C-NMC_Leukemia``)."""
    return _need(shared_data / "cnmc-sample" / "C-NMC_Leukemia")


@pytest.fixture(scope="session")
def cnmc_manifest_csv(shared_data) -> Path:
    """Metadata of all 15,115 C-NMC files (no pixels)."""
    return _need(shared_data / "cnmc-manifest.csv")


@pytest.fixture(scope="session")
def bccd(shared_data) -> Path:
    """BCCD: 364 real smears with VOC boxes."""
    return _need(shared_data / "bccd")


@pytest.fixture(scope="session")
def pbc_sample(shared_data) -> Path:
    """PBC subset: real single white cells with YOLO boxes, 7 classes."""
    return _need(shared_data / "pbc-sample")


# ---------------------------------------------------------------------------------------------
# a small real detector for the inference, export and GUI tests

TOY_IMGSZ = 256  # small network input: those tests check plumbing, not accuracy


def _toy_detector():
    """The real yolov3-tiny, untrained, made to give a few input-dependent boxes per image.

    At initialisation its features vanish (about 1e-4) and every score equals the prior, so the
    batch-norm statistics are set from one forward pass on noise and the heads get larger random
    weights and an objectness bias of -2: a few input-dependent boxes per image at ``conf=0.25``.
    """
    import torch

    from blastscope.models import create_model

    torch.manual_seed(0)
    model = create_model("yolov3-tiny", num_classes=2, class_names=["ALL", "HEM"], pretrained=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average: one pass sets the running statistics
                m.reset_running_stats()
        model.train()
        model(torch.rand(4, 3, TOY_IMGSZ, TOY_IMGSZ))
        model.eval()
        for head in (model.head32, model.head16):
            torch.nn.init.normal_(head.weight, std=0.05)
            head.bias.view(3, -1)[:, 4] = -2.0
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
    return model


@pytest.fixture(scope="session")
def toy_detector_ckpt(tmp_path_factory) -> Path:
    """A blastscope checkpoint of :func:`_toy_detector` (classes ALL, HEM; input 256 px)."""
    from blastscope.models.checkpoint import make_checkpoint, save_checkpoint

    path = tmp_path_factory.mktemp("toy_ckpt") / "det.pt"
    save_checkpoint(make_checkpoint(_toy_detector(), epoch=0, input_size=TOY_IMGSZ), path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread (torch and, through it, onnxruntime): on a small shared CPU two spinning
    threads are several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _session_onnx_cache(tmp_path_factory):
    """ONNX exports made on the fly (``--backend auto``, the default) go to one folder per test
    session, reused by later tests of the same checkpoint, never to the user's cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("BLASTSCOPE_ONNX_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))
    yield
    patch.undo()
