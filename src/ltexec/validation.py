"""Argument checks shared by the Python API and the command line.

Every public entry point validates its arguments with these helpers, so a bad
value gives the same one-line message whether it came from Python (as a
``ValueError``) or from the ``ltexec`` command (as exit status 2).
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` naming ``name`` and the allowed range."""
    allowed = _range_text(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be an integer {allowed}, got {value!r}") from None
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {allowed}, got {value}")
    return value


def check_float(name: str, value, minimum: float | None = None, maximum: float | None = None,
                inclusive_min: bool = True) -> float:
    """Return ``value`` as a finite float inside the given bounds, or raise ``ValueError``."""
    low = "" if minimum is None else (f">= {minimum}" if inclusive_min else f"> {minimum}")
    high = "" if maximum is None else f"<= {maximum}"
    allowed = " and ".join(part for part in (low, high) if part) or "(any finite value)"
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")
    too_low = minimum is not None and (number < minimum if inclusive_min else number <= minimum)
    if too_low or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be a finite number {allowed}, got {number:g}")
    return number


def check_choice(name: str, value, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_output_dir(name: str, path) -> Path:
    """``path`` as a Path if it is a writable directory or one that can be created, else ``ValueError``.

    Checked before a command starts its work, so that a bad output path is
    refused at once rather than when the first file is written.
    """
    path = Path(path)
    if os.path.lexists(path):
        if not path.is_dir():
            raise ValueError(f"{name} {path} {_not_a_directory(path)}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{name} {path} is not writable")
        return path
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{name} {path} cannot be created: {ancestor} {_not_a_directory(ancestor)}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {path} cannot be created: {ancestor} is not writable")
    return path


def _not_a_directory(path: Path) -> str:
    return "is a file, not a directory" if path.is_file() else "is not a directory"


def _range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"in {minimum}..{maximum}"
    if minimum is not None:
        return f">= {minimum}"
    if maximum is not None:
        return f"<= {maximum}"
    return ""
