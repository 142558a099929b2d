"""Plain SGD with global-norm gradient clipping, the paper's optimizer.

Each step measures the norm of all gradients together, scales them by
``clip / norm`` when the norm exceeds ``clip`` (the original code's rule), and
updates the parameters in place with PyTorch's momentum convention
(``v = momentum*v + g; p -= lr*v``; no dampening, no Nesterov), so it can be
checked against ``torch.nn.utils.clip_grad_norm_`` + ``torch.optim.SGD``.
The arithmetic runs on the model's backend as one operation
(``clipped_sgd_update_``), which decides the clip and skips a step whose
norm is not finite where the gradients are: on a GPU nothing is read back,
and the norm it returns is a backend scalar the caller reads when it wants
to. The optimizer only keeps the velocity (with momentum) and the
hyper-parameters. ``lr`` is a plain attribute the trainer decays.
"""

from __future__ import annotations

import numpy as np

from ltexec.validation import check_float


class SGD:
    """SGD with clipping at ``clip`` and optional ``momentum`` in [0, 1)."""

    def __init__(self, lr: float = 0.5, momentum: float = 0.0, clip: float = 5.0):
        self.lr = lr
        self.momentum = _check_momentum(momentum)
        self.clip = check_float("clip", clip, minimum=0, inclusive_min=False)
        self._velocity = None   # parameter name -> array, once a momentum step has run or been loaded
        self._backend = None    # the backend holding self._velocity; None for loaded host arrays

    @property
    def lr(self) -> float:
        """The learning rate (> 0)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = check_float("lr", value, minimum=0, inclusive_min=False)

    def step(self, backend, params: dict, grads: dict):
        """Update ``params`` in place with the clipped ``grads``; return the norm before clipping (a backend scalar).

        Where the norm is not finite, parameters and velocity stay as they
        were; the returned norm says so (``math.isfinite(float(norm))``).
        ``grads`` are clipped in place.
        """
        if grads.keys() != params.keys():
            raise ValueError(f"grads and params name different arrays: {sorted(grads)} vs {sorted(params)}")
        velocity = self._velocity_on(backend, params) if self.momentum else None
        return backend.clipped_sgd_update_(params, grads, velocity, self.lr, self.momentum, self.clip)

    def _velocity_on(self, backend, params: dict) -> dict:
        """The velocity as arrays of ``backend``: zeros at first, moved there after loading."""
        if self._velocity is None:
            self._velocity = {name: backend.xp.zeros_like(p) for name, p in params.items()}
        elif self._backend is not backend:
            host = self.state_dict()["velocity"]
            for name, p in params.items():
                if name not in host or host[name].shape != tuple(p.shape):
                    raise ValueError(f"loaded velocity does not match parameter {name!r} of shape {tuple(p.shape)}")
            self._velocity = {name: backend.asarray(host[name]) for name in params}
        self._backend = backend
        return self._velocity

    def state_dict(self) -> dict:
        """Hyper-parameters and the velocity (NumPy copies, or None before any momentum step)."""
        velocity = None
        if self._velocity is not None:
            to_numpy = self._backend.to_numpy if self._backend is not None else np.asarray
            velocity = {name: np.array(to_numpy(v)) for name, v in self._velocity.items()}
        return {"lr": self.lr, "momentum": self.momentum, "clip": self.clip, "velocity": velocity}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; the velocity moves to the backend on the next step."""
        missing = {"lr", "momentum", "clip", "velocity"} - set(state)
        if missing:
            raise ValueError(f"optimizer state lacks {sorted(missing)}")
        self.lr = state["lr"]
        self.momentum = _check_momentum(state["momentum"])
        self.clip = check_float("clip", state["clip"], minimum=0, inclusive_min=False)
        velocity = state["velocity"]
        self._velocity = None if velocity is None else {name: np.array(v) for name, v in velocity.items()}
        self._backend = None


def _check_momentum(value) -> float:
    momentum = check_float("momentum", value, minimum=0.0)
    if momentum >= 1.0:
        raise ValueError(f"momentum must be a finite number >= 0.0 and < 1, got {momentum:g}")
    return momentum
