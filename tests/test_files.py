"""Atomic writes (deconvnet._files): a failure anywhere leaves the old file (or none), never a
partial one, removes the temporary file, and names the target in the error.

Failures are simulated by monkeypatching (the suite may run as root, where permissions do not
stop writes) and by a target whose parent is a regular file.
"""

from __future__ import annotations

import errno
import os
import re
import stat

import pytest

from deconvnet import _files
from deconvnet._files import atomic_write_bytes, atomic_write_text


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_and_replaces(tmp_path):
    target = tmp_path / "a.bin"
    assert atomic_write_bytes(target, b"one") == target
    atomic_write_text(target, "two \u00e9")
    assert target.read_bytes() == "two \u00e9".encode()
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert leftovers(tmp_path) == []


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def denied(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_full_disk_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch, where):
    target = tmp_path / "model.json"
    target.write_bytes(b"old")
    monkeypatch.setattr(_files.os, where, full_disk)
    with pytest.raises(OSError, match=re.escape("cannot write (No space left on device)")) as info:
        atomic_write_bytes(target, b"new content")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert "No space left on device" in info.value.strerror
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_failing_write_of_a_new_file_leaves_nothing(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_files.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(tmp_path / "x.npy", b"0123456789")
    assert list(tmp_path.iterdir()) == []


def test_permission_error_keeps_its_type(tmp_path, monkeypatch):
    monkeypatch.setattr(_files.os, "replace", denied)
    with pytest.raises(PermissionError, match=re.escape("cannot write (Permission denied)")) as info:
        atomic_write_bytes(tmp_path / "a", b"x")
    assert info.value.filename == str(tmp_path / "a")
    assert leftovers(tmp_path) == []


def test_parent_is_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=re.escape("cannot write here (Not a directory)")) as info:
        atomic_write_bytes(tmp_path / "file" / "a.png", b"x")
    assert info.value.filename == str(tmp_path / "file" / "a.png")


def test_interrupt_removes_the_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(_files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "a", b"x")
    assert list(tmp_path.iterdir()) == []
