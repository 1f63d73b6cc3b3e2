"""Argument checks of the analog model.

Every public entry point turns a bad value into one `ConfigError` whose message names the
argument and the accepted range ("X must be Y, not {value!r}"), so that a caller (the CLI, the
twin, the cosim binding) can show it as it is. Arrays are reported by their offending element and
its index rather than by a repr of the whole array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pcmhil.errors import ConfigError

#: Largest value of a 64-bit key word (seeds, operation indices).
UINT64_MAX = 2**64 - 1


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """An integer (not bool) within [lo, hi] (hi None: unbounded)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        accepted = f">= {lo}" if hi is None else f"within [{lo}, {hi}]"
        raise ConfigError(f"{name} must be an integer {accepted}, not {value!r}")
    return int(value)


def check_real(name: str, value, lo: float | None = None, hi: float | None = None,
               unit: str = "") -> float:
    """A finite real number within [lo, hi] (None: unbounded on that side)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{name} must be a real number, not {value!r}")
    value = float(value)
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name} must be {_range_text(lo, hi, unit)}, not {value!r}")
    return value


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return value


def check_array(name: str, value, shape: tuple[int | None, ...], kind: str) -> np.ndarray:
    """An array of the given shape (None: any length on that axis) and kind.

    kind "int": any integer dtype, returned as int64; "integer": the same, returned as it is;
    "real": any integer or float dtype with only finite values (NaN and inf are rejected),
    returned as float64.
    """
    array = np.asarray(value)
    fits = array.ndim == len(shape) and all(
        s is None or s == n for s, n in zip(shape, array.shape, strict=True))
    if not fits:
        wanted = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise ConfigError(f"{name} must have shape {wanted}, not {array.shape!r}")
    if kind in ("int", "integer"):
        if array.dtype != np.int64 and not np.issubdtype(array.dtype, np.integer):
            raise ConfigError(f"{name} must be an integer array, not dtype {array.dtype.name!r}")
        return array.astype(np.int64, copy=False) if kind == "int" else array
    assert kind == "real", kind
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ConfigError(f"{name} must be a real array, not dtype {array.dtype.name!r}")
    array = array.astype(np.float64, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        index = _first(~finite)
        raise ConfigError(f"{name} must be finite, not {array[index].item()!r} at index {index}")
    return array


def check_within(name: str, array: np.ndarray, lo: float, hi: float, unit: str = "") -> np.ndarray:
    """Every element of `array` within [lo, hi]."""
    outside = (array < lo) | (array > hi)
    if outside.any():
        index = _first(outside)
        raise ConfigError(f"{name} must be {_range_text(lo, hi, unit)}, not {array[index].item()!r} "
                          f"at index {index}")
    return array


def check_positive(name: str, array: np.ndarray) -> np.ndarray:
    """Every element of `array` strictly greater than 0."""
    bad = ~(array > 0)
    if bad.any():
        index = _first(bad)
        raise ConfigError(f"{name} must be > 0, not {array[index].item()!r} at index {index}")
    return array


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _range_text(lo, hi, unit: str) -> str:
    suffix = f" {unit}" if unit else ""
    if lo is None and hi is None:
        return "finite"
    if hi is None:
        return f"finite and >= {lo}{suffix}"
    if lo is None:
        return f"finite and <= {hi}{suffix}"
    return f"within [{lo}, {hi}]{suffix}"
