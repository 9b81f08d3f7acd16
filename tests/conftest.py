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
