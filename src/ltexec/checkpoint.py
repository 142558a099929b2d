"""Checkpoints: one ``.npz`` file of named arrays plus a JSON metadata string.

Written atomically (a temporary file in the same folder, flushed to disk, then
renamed over the old checkpoint), so a crash or Ctrl-C at any moment leaves
either the previous checkpoint or the new one, never a torn file. Loaded with
``allow_pickle=False``: a checkpoint is data, never code.

A training run's directory holds ``metrics.jsonl`` (one line per evaluation)
and ``checkpoint.npz``, written by :func:`save_run` after every evaluation and
read back by :func:`read_checkpoint` and :func:`restore_run`. The checkpoint
holds everything the run depends on, so a resumed run continues exactly where
an uninterrupted one would be:

- arrays ``param/NAME`` (the model's parameters), ``velocity/NAME`` (the
  optimizer's momentum, if any), ``state/h{k}`` and ``state/c{k}`` (the LSTM
  state carried into the next window, per layer) and ``batcher/NAME`` (the
  batch streams' unread examples);
- metadata ``config`` (the :class:`~ltexec.config.TrainConfig`), ``step``,
  ``elapsed`` (seconds), ``lr``, ``curriculum`` (its state), ``rng`` (the
  training stream's generator state), ``history`` (every metrics record),
  ``spikes`` (blow-ups caught) and ``lowest_loss`` (the reference of the
  spike rule; both read as 0 and None from checkpoints written before them).

:func:`run_state` gathers all of it as copies and :func:`load_training_state`
puts back the part training continues from; the trainer keeps such a copy in
memory to recover from a blow-up.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np

from ltexec.atomic import atomic_write
from ltexec.config import TrainConfig
from ltexec.curriculum import Curriculum

FORMAT = "ltexec-checkpoint"
VERSION = 1
_META_KEY = "__meta__"
CHECKPOINT_NAME = "checkpoint.npz"
METRICS_NAME = "metrics.jsonl"


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


# ------------------------------------------------------------- a training run's checkpoint
def checkpoint_path(out_dir) -> Path:
    """Where the run in ``out_dir`` keeps its checkpoint."""
    return Path(out_dir) / CHECKPOINT_NAME


def save_run(trainer, record: dict, state: tuple[dict, dict] | None = None) -> None:
    """Append ``record`` to the ``metrics.jsonl`` of ``trainer``'s run, then write its checkpoint.

    ``state``: :func:`run_state` of the trainer, when the caller has just taken it.
    """
    out_dir = trainer.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / METRICS_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    save_checkpoint(checkpoint_path(out_dir), *(state or run_state(trainer)))


def run_state(trainer) -> tuple[dict[str, np.ndarray], dict]:
    """Everything ``trainer``'s run depends on, as checkpoint arrays (NumPy copies) and metadata."""
    backend = trainer.model.backend
    arrays = {f"param/{k}": np.array(backend.to_numpy(v)) for k, v in trainer.model.params.items()}
    velocity = trainer.optimizer.state_dict()["velocity"] or {}
    arrays.update({f"velocity/{k}": v for k, v in velocity.items()})
    for layer, (h, c) in enumerate(trainer.state):
        arrays[f"state/h{layer}"] = np.array(backend.to_numpy(h))
        arrays[f"state/c{layer}"] = np.array(backend.to_numpy(c))
    arrays.update({f"batcher/{k}": np.asarray(v) for k, v in trainer.batcher.state_dict().items()})
    meta = {
        "config": dataclasses.asdict(trainer.config),
        "step": trainer.step,
        "elapsed": trainer.elapsed,
        "lr": trainer.optimizer.lr,
        "curriculum": trainer.curriculum.state_dict(),
        "rng": rng_state_to_json(trainer.rng.getstate()),
        "history": list(trainer.history),
        "spikes": trainer.spikes,
        "lowest_loss": trainer.lowest_loss,
        "backend": {"name": backend.name, "choices": backend.choices},
    }
    return arrays, meta


def read_checkpoint(out_dir) -> tuple[dict, dict, TrainConfig]:
    """The arrays, metadata and validated configuration of the checkpoint in ``out_dir``."""
    arrays, meta = load_checkpoint(checkpoint_path(out_dir))
    try:
        # A checkpoint written before the draw option existed was drawn per example.
        config = TrainConfig.from_dict({"draw": "example", **meta["config"]})
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint in {out_dir} has an unusable configuration ({error})") from None
    return arrays, meta, config


def recorded_backend_options(meta: dict, backend: str) -> dict:
    """The backend choices a checkpoint recorded, as options for ``backend`` (a name or ``"auto"``).

    Empty where the checkpoint recorded none (written before choices were
    recorded) or ``backend`` resolves to another backend than the one that
    recorded them (their options would not apply).
    """
    from ltexec.backends import resolve_backend_name
    recorded = meta.get("backend")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("choices"), dict):
        return {}
    return dict(recorded["choices"]) if resolve_backend_name(backend) == recorded.get("name") else {}


def restore_run(trainer, arrays: dict, meta: dict) -> None:
    """Put a checkpoint written by :func:`save_run` back into ``trainer``, built from its configuration.

    Metric lines written after the checkpoint (a crash between the two writes) are dropped.
    """
    try:
        _restore(trainer, arrays, meta)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint in {trainer.out_dir} does not match its configuration "
                              f"({error})") from None
    path = trainer.out_dir / METRICS_NAME
    if path.exists():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= trainer.step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _restore(trainer, arrays: dict, meta: dict) -> None:
    load_training_state(trainer, arrays, meta)
    trainer.step = int(meta["step"])
    trainer.elapsed = float(meta["elapsed"])
    trainer.history = list(meta["history"])
    trainer.spikes = int(meta.get("spikes", 0))
    lowest = meta.get("lowest_loss")
    trainer.lowest_loss = None if lowest is None else float(lowest)


def load_training_state(trainer, arrays: dict, meta: dict) -> None:
    """Put back what :func:`run_state` gathered that training continues from.

    That is the parameters, the optimizer (learning rate and velocity), the
    carried LSTM state, the batch streams, the curriculum and the training
    stream's generator; the step counter, the elapsed time, the history and
    the spike figures are left as they are. Nothing restored shares memory
    with ``arrays``, so the same state can be put back again.
    """
    config, backend = trainer.config, trainer.model.backend
    trainer.model.load_params(arrays_under(arrays, "param"))
    velocity = arrays_under(arrays, "velocity")
    trainer.optimizer.load_state_dict({"lr": meta["lr"], "momentum": config.momentum,
                                       "clip": config.clip, "velocity": velocity or None})
    state = []
    for layer, (h0, c0) in enumerate(trainer.model.zero_state(config.batch)):
        h, c = arrays[f"state/h{layer}"], arrays[f"state/c{layer}"]
        if h.shape != tuple(h0.shape) or c.shape != tuple(c0.shape):
            raise ValueError(f"carried state of layer {layer} has shape {h.shape}, expected {tuple(h0.shape)}")
        state.append((backend.asarray(h.copy()), backend.asarray(c.copy())))
    trainer.state = state
    trainer.batcher.load_state_dict(arrays_under(arrays, "batcher"))
    trainer.curriculum = Curriculum.from_state_dict(meta["curriculum"])
    trainer.rng.setstate(rng_state_from_json(meta["rng"]))


def arrays_under(arrays: dict, group: str) -> dict:
    """The checkpoint arrays saved as ``group/NAME``, keyed by NAME."""
    prefix = f"{group}/"
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def rng_state_to_json(state) -> list:
    """A ``random.Random`` state as JSON (its internal tuple as a list)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_state_from_json(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
