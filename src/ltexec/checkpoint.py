"""Checkpoints: one ``.npz`` file of named arrays plus a JSON metadata string.

Written atomically (a temporary file in the same folder, flushed to disk, then
renamed over the old checkpoint), so a crash or Ctrl-C at any moment leaves
either the previous checkpoint or the new one, never a torn file. Loaded with
``allow_pickle=False``: a checkpoint is data, never code.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "ltexec-checkpoint"
VERSION = 1
_META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match the run that loads it."""


def save_checkpoint(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and the JSON-serialisable ``meta`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _META_KEY in arrays:
        raise ValueError(f"array name {_META_KEY!r} is reserved for the checkpoint metadata")
    header = {"format": FORMAT, "version": VERSION, **meta}
    payload = {name: np.asarray(value, order="C") for name, value in arrays.items()}
    payload[_META_KEY] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda handle: np.savez(handle, **payload))


def atomic_write(path, write) -> None:
    """Create ``path`` through ``write(binary_handle)``: a temporary file in its folder, synced, then renamed."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`; raise :class:`CheckpointError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            raise CheckpointError(f"checkpoint {path} is corrupt or not an ltexec checkpoint (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or not an ltexec checkpoint ({error})") from None
    if _META_KEY not in arrays:
        raise CheckpointError(f"checkpoint {path} has no metadata: not an ltexec checkpoint")
    try:
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an ltexec checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta.get('version')!r}; this ltexec reads version {VERSION}")
    return arrays, meta
