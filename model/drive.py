"""Row drive of a PWM window and the exact integer charge it integrates on each column.

A window is described by per-row durations d_i >= 0 (cycles), per-row polarity s_i in {+1, -1}
and a device select (which conductance each row presents to the column):
- "differential": G+ - G- (HERMES 1-phase read mode: signed inputs in one window);
- "plus" / "minus": G+ or G- only (4-phase read mode: unipolar inputs, one window per
  input-sign x weight-sign combination; docs/numerics.md section 1).
Row i conducts during cycles c = 0 .. d_i - 1 of the window. With W the integer conductance
matrix of the select (conductance LSBs), the column current of cycle c is
I_c[j] = sum_i [d_i > c] s_i W[i, j] and the charge of the window Q[j] = sum_i s_i d_i W[i, j].

All values are integers, so a float64 BLAS matmul computes them exactly whatever its summation
order, provided every partial sum stays below 2**53; `check_exact` enforces that bound from the
geometry (rows x longest duration x largest |W|). Sums without durations (current bounds) use
float32 where rows x largest |W| < 2**24, which is exact by the same argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pcmhil.errors import ConfigError

from .checks import check_array, check_choice, check_int, check_within

SELECTS = ("differential", "plus", "minus")

#: Float64 represents every integer below this exactly.
EXACT_FLOAT_LIMIT = 2**53


#: float32 represents every integer below this exactly.
EXACT_FLOAT32_LIMIT = 2**24


@dataclass(frozen=True)
class SelectedConductance:
    """The integer conductance matrix of one device select, in the forms the window needs.

    w_int: int64 (rows, cols); w: the same as float64 (exact); abs_max: max |w_int|.
    w_bound, w_abs_bound: W and |W| in the dtype of the current-bound matmuls: float32 (twice
    as fast) when every sum over rows stays below 2**24 and so is exact in float32, else float64.
    """

    w_int: np.ndarray
    w: np.ndarray
    abs_max: int
    w_bound: np.ndarray
    w_abs_bound: np.ndarray

    @classmethod
    def of(cls, w_int: np.ndarray) -> SelectedConductance:
        abs_max = int(np.abs(w_int).max(initial=0))
        exact32 = w_int.shape[0] * abs_max < EXACT_FLOAT32_LIMIT
        w_bound = w_int.astype(np.float32 if exact32 else np.float64)
        return cls(w_int, w_int.astype(np.float64), abs_max, w_bound, np.abs(w_bound))

    @property
    def rows(self) -> int:
        return self.w_int.shape[0]


def check_select(select) -> str:
    return check_choice("select", select, SELECTS)


def check_drive(durations, polarity, rows: int, n_window_cycles: int | None,
                batched: bool) -> tuple[np.ndarray, np.ndarray]:
    """(durations, polarity) as int64 (B, rows); durations within [0, n_window_cycles]."""
    shape = (None, rows) if batched else (rows,)
    d = check_array("durations", durations, shape, "int")
    s = check_array("polarity", polarity, shape, "int")
    hi = np.iinfo(np.int64).max if n_window_cycles is None else n_window_cycles
    check_within("durations", d, 0, hi, f"cycles (n_window_cycles = {n_window_cycles})"
                 if n_window_cycles is not None else "cycles")
    bad = np.abs(s) != 1
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(f"polarity must be +1 or -1, not {s[index].item()!r} at index {index}")
    return np.atleast_2d(d), np.atleast_2d(s)


def check_rows_or_batch(name: str, value) -> bool:
    """Whether `value` is a batch (B, rows) rather than one vector (rows,); else ConfigError."""
    if np.ndim(value) not in (1, 2):
        raise ConfigError(f"{name} must have shape (rows,) or (B, rows), not {np.shape(value)!r}")
    return np.ndim(value) == 2


def check_window_cycles(n_window_cycles, limit: int) -> int:
    return check_int("n_window_cycles", n_window_cycles, 1, limit)


def check_exact(w: SelectedConductance, longest_cycles: int) -> None:
    """Every partial sum of a charge stays an exact float64 integer (< 2**53)."""
    bound = w.rows * max(longest_cycles, 1) * max(w.abs_max, 1)
    if bound >= EXACT_FLOAT_LIMIT:
        raise ConfigError(f"rows x cycles x max conductance must be < 2**53 for exact charge, not "
                          f"{bound!r}; use a larger conductance_lsb_us or shorter windows")


def exact_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w for integer-valued float64 operands known to be exact, as int64."""
    return (x @ w).astype(np.int64)


def integrated_charge(w: SelectedConductance, d: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Q[b, j] = sum_i s_i d_i W[i, j] (conductance LSB x cycles), int64 (B, cols)."""
    check_exact(w, int(d.max(initial=0)))
    return exact_matmul(np.multiply(d, s, dtype=np.float64), w.w)


def current_bounds(w: SelectedConductance, d: np.ndarray, s: np.ndarray, n_window_cycles: int,
                   bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds lower <= I_c <= upper on the current of every cycle of each window, int64 (B, cols).

    The window's cycles are cut into `bands` bands (e_g, e_g+1], e_g = g n // bands. During
    band g, rows with d > e_g+1 conduct throughout (their exact sum L_g), rows with
    e_g < d <= e_g+1 (group g) conduct for part of it, all other rows not at all. So I_c lies
    within L_g plus the sum of the negative, resp. positive, terms s_i W[i, j] of group g; idle
    cycles have I_c = 0. Per group two matmuls give those sums: S = sum s_i W and T = sum |W|,
    positive part (T + S) / 2, negative part (S - T) / 2 (exact: T + S is twice an integer).
    More bands cost more matmuls and give tighter bounds: the positive part of one band
    shrinks like 1 / bands, while a random-sign L_g grows only like the square root of its rows.
    """
    check_exact(w, n_window_cycles)
    dtype = w.w_bound.dtype
    group = (d * bands + n_window_cycles - 1) // n_window_cycles - 1  # -1: never conducts
    member = group[None] == np.arange(bands)[:, None, None]  # (bands, B, rows)
    flat = (bands * len(d), d.shape[1])  # one matmul for all bands: fewer BLAS calls
    signed = ((member * s.astype(dtype)).reshape(flat) @ w.w_bound).reshape(bands, len(d), -1)
    total_abs = (member.astype(dtype).reshape(flat) @ w.w_abs_bound).reshape(bands, len(d), -1)
    upper, lower, longer = (np.zeros_like(signed[0]) for _ in range(3))
    for g in reversed(range(bands)):
        positive = total_abs[g] + signed[g]
        positive *= 0.5
        negative = signed[g] - positive  # (S - T) / 2 = S - (T + S) / 2
        np.maximum(upper, np.add(positive, longer, out=positive), out=upper)
        np.minimum(lower, np.add(negative, longer, out=negative), out=lower)
        longer += signed[g]
    return upper.astype(np.int64), lower.astype(np.int64)
