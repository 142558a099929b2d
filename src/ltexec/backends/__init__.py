"""Backend registry: find a backend by name, or the best one that runs here.

Backends are listed in :data:`REGISTRY` in order of preference, each as
``(name, "module:Class")``. Modules are imported only when a backend is asked
about, and each class says through ``unavailable_reason()`` whether it can run
here, so a missing optional dependency (CuPy, a GPU driver) never breaks the
import of this package. Each backend is one folder (``numpy/``, ``cpu/``,
``cupy/``, ``numba_cuda/``) whose ``backend.py`` holds its
:class:`~ltexec.backends.base.Backend` subclass; adding a backend is one
folder plus one line in :data:`REGISTRY` and one maker in the conformance
suite (tests/backends/conftest.py).
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np

from ltexec.backends.base import Backend, BackendUnavailable

__all__ = ["Backend", "BackendUnavailable", "BACKENDS", "REGISTRY", "available_backends", "backend_options",
           "get_backend", "resolve_backend_name"]

REGISTRY = (
    ("cupy", "ltexec.backends.cupy.backend:CupyBackend"),
    ("numba_cuda", "ltexec.backends.numba_cuda.backend:NumbaCudaBackend"),
    ("cpu", "ltexec.backends.cpu.backend:CpuBackend"),
    ("numpy", "ltexec.backends.numpy.backend:NumpyBackend"),
)
"""Every backend, best first: ``auto`` picks the first one that can run here."""

BACKENDS = tuple(name for name, _ in REGISTRY)


def _backend_class(name: str) -> type[Backend]:
    module_name, class_name = dict(REGISTRY)[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def _unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None; a failing probe counts as a reason."""
    try:
        return _backend_class(name).unavailable_reason()
    except Exception as exc:  # an import or driver error means "not usable here", never a crash
        return f"{type(exc).__name__}: {exc}"


def available_backends() -> dict[str, str | None]:
    """Every backend name mapped to None if it can run here, else the reason it cannot."""
    return {name: _unavailable_reason(name) for name in BACKENDS}


def get_backend(name: str = "auto", dtype=np.float32, **options) -> Backend:
    """A backend instance by name, or with ``"auto"`` the best one that runs here.

    ``options`` go to the chosen backend's constructor; ``threads`` (the most
    host threads it runs its work on) is one every backend takes, so it may
    go with ``"auto"``. Raises ``ValueError`` for an unknown name or dtype or
    an option the chosen backend does not take (naming the ones it does), and
    :class:`BackendUnavailable` (with the reason) for a backend that cannot
    run here.
    """
    name = resolve_backend_name(name)
    cls = _backend_class(name)
    accepted = backend_options(cls)
    unknown = [option for option in options if option not in accepted]
    if unknown:
        raise ValueError(f"backend {name!r} takes no option {unknown[0]!r}; "
                         f"its options are: {', '.join(accepted)}")
    return cls(dtype, **options)


def resolve_backend_name(name: str = "auto") -> str:
    """The backend ``name`` stands for (``"auto"``: the best that runs here); errors as :func:`get_backend`'s."""
    if name == "auto":
        usable = (n for n in BACKENDS if _unavailable_reason(n) is None)
        name = next(usable, None)
        if name is None:
            raise BackendUnavailable(f"no backend can run here: {available_backends()}")
    elif name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    else:
        reason = _unavailable_reason(name)
        if reason is not None:
            raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
    return name


def backend_options(backend: str | type[Backend]) -> tuple[str, ...]:
    """The options a backend (its name or class) takes by keyword in its constructor, besides dtype."""
    cls = _backend_class(backend) if isinstance(backend, str) else backend
    parameters = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in parameters if p.name not in ("self", "dtype")
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
