"""Atomic file writes: a temporary file in the target's folder, flushed, then renamed, so a
crash or a full disk never leaves a partial file under the final name."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``; return ``path``.

    ``fsync=False`` leaves flushing to the caller (checkpoints flush many files at once).

    On failure the temporary file is removed and the ``OSError`` names ``path`` (not the
    temporary name), so that a one-line message says which file could not be written.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, f"cannot write here ({err.strerror or err})", str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OSError(err.errno, f"cannot write ({err.strerror or err})", str(path)) from None
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder) -> None:
    """Delete the temporary files that :func:`atomic_write_bytes` leaves in ``folder`` when
    the process is killed mid-write (``.NAME.XXXX.tmp``); the files they were to replace are
    intact (old or new), so nothing is lost."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
