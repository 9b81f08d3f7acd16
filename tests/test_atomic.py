"""Atomic writes: a failed write keeps the old file; a finished one has the usual permissions."""

import os

import pytest

from blastscope._atomic import atomic_write, refuse_overwrite
from blastscope._problems import BlastscopeError


def test_failed_write_keeps_the_old_content_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_written_file_has_umask_permissions_not_mkstemp_0600(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    path = tmp_path / "out.txt"
    with atomic_write(path) as f:
        f.write("new\n")
    assert path.read_text() == "new\n"
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_refuse_overwrite_names_the_file_and_the_flag(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text("<annotation/>")
    with pytest.raises(BlastscopeError, match=r"a\.xml: already exists.*--overwrite"):
        refuse_overwrite(path, overwrite=False)
    refuse_overwrite(path, overwrite=True)
