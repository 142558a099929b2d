"""Atomic writes: the whole file or the old one, never a torn one, with the permissions open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from ltexec.atomic import FILE_MODE, atomic_write


def test_a_written_file_has_open_s_permissions_and_no_temporary_is_left(tmp_path):
    path = tmp_path / "result.json"
    atomic_write(path, lambda handle: handle.write(b"new"))
    with open(tmp_path / "plain", "wb"):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert path.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["plain", "result.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "result.json"
    path.write_bytes(b"old")

    def fail(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["result.json"]
