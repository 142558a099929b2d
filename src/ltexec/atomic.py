"""Files written whole or not at all: a crash or Ctrl-C mid-write never leaves a torn file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""What ``open()`` would give a new file here (mkstemp's own files are private, 0600); read once, at import."""


def atomic_write(path, write) -> None:
    """Create ``path`` through ``write(binary_handle)``: a temporary file in its folder, synced, then renamed.

    The file gets the permissions a plain ``open()`` would give it (:data:`FILE_MODE`).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
