"""Row drive of a PWM window and the exact integer charge it integrates on each column.

A window is described by per-row durations d_i >= 0 (cycles), per-row polarity s_i in {+1, -1}
and a device select (which conductance each row presents to the column):
- "differential": G+ - G- (HERMES 1-phase read mode: signed inputs in one window);
- "plus" / "minus": G+ or G- only (4-phase read mode: unipolar inputs, one window per
  input-sign x weight-sign combination; docs/numerics.md section 1).
Row i conducts during cycles c = 0 .. d_i - 1 of the window. With W the integer conductance
matrix of the select (conductance LSBs), the column current of cycle c is
I_c[j] = sum_i [d_i > c] s_i W[i, j] and the charge of the window Q[j] = sum_i s_i d_i W[i, j].

All values are integers, so a float64 BLAS matmul computes the charge exactly whatever its
summation order, provided every partial sum stays below 2**53; `check_exact` enforces that bound
from the geometry (rows x longest duration x largest |W|). The current bounds only need to be
conservative: they are float32 matmuls (twice as fast) tested against limits shrunk by a proven
rounding margin, and an exact integer scan of the few (window, column) pairs they leave open
(`currents_may_leave`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

from pcmhil.errors import ConfigError

from .checks import check_array, check_choice, check_int, check_within

SELECTS = ("differential", "plus", "minus")

#: Float64 represents every integer below this exactly.
EXACT_FLOAT_LIMIT = 2**53

#: Unit roundoff of float32 (round to nearest): every float32 operation is exact to this relative error.
FLOAT32_UNIT = 2.0**-24
#: Most bands of the first mixed-sign current test (`_first_band_count`); each band costs two
#: float32 matmuls.
_MAX_FIRST_BANDS = 8
#: The band test is refined (twice the bands) on the windows it failed only while they are few
#: (at most this fraction of the batch, or at most _REFINE_FEW_WINDOWS windows) or the failed
#: pairs are: else the exact scan of the failed pairs is the cheaper next step (a matmul costs
#: the same for a column that passed as for one that failed).
_REFINE_MAX_FRACTION = 0.5
_REFINE_FEW_WINDOWS = 64
#: The exact scan runs on at least this many pairs: its cost per sorted row position is a few
#: numpy calls (~10 us) whatever the pair count, and below ~500 pairs the exact sums of
#: `CcoTransfer.exact_advance` cost less than the scan (measured at 256 rows; both are O(rows)
#: per pair, so the break-even hardly depends on the rows).
_SCAN_MIN_PAIRS = 512
#: A drive is dense when at least this fraction of (window, row) durations is nonzero (1-phase
#: windows of signed inputs): its band test bounds U_0 by reach, one matmul fewer (`_band_test`).
_DENSE_FRACTION = 0.95
#: Elements of a matmul's left operand (windows x rows, times bands for the current bounds) per
#: chunk of windows: bounds the memory of a batch (~2 MB per float32 array).
_CHUNK_ELEMENTS = 2**19


def single_threaded_blas():
    """A context in which BLAS runs on one thread, for the matmuls of a batch of windows.

    They are small (~1-2 ms for 1,000 windows of 256 x 256), and OpenBLAS's second thread costs
    more than it gains: every call waits for it, on a loaded machine for a scheduler slice
    (measured on 2 cores at load ~2: a 1,000 x 256 x 256 float64 matmul in 2.1 ms on one
    thread, 4-8 ms on two; the windows of the twin benchmark in 124 ms instead of 215 ms).
    """
    return _blas_controller().limit(limits=1, user_api="blas")


@cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # inspects the loaded libraries once (~1 ms)


@dataclass(frozen=True)
class SelectedConductance:
    """The integer conductance matrix of one device select, in every form a window needs, built
    once per read state (the crossbar caches it), so that no window converts it again.

    w_int: int64 (rows, cols); w: the same as float64 (exact; the charge); abs_max: max |w_int|;
    w32, w_abs32: W and |W| as float32 (the current bounds; rounded where |W| >= 2**24, which
    their margin covers); reach: int64 (cols,) sum_i |W[i, j]|, a bound on |I_c[j]| of every
    drive; sign: +1 if W >= 0 everywhere, -1 if W <= 0 everywhere, else 0 (the 4-phase selects
    are +1).
    """

    w_int: np.ndarray
    w: np.ndarray
    abs_max: int
    w32: np.ndarray
    w_abs32: np.ndarray
    reach: np.ndarray
    sign: int

    @classmethod
    def of(cls, w_int: np.ndarray) -> SelectedConductance:
        w_abs = np.abs(w_int)
        sign = 1 if w_int.min(initial=0) >= 0 else -1 if w_int.max(initial=0) <= 0 else 0
        return cls(w_int, w_int.astype(np.float64), int(w_abs.max(initial=0)), w_int.astype(np.float32),
                   w_abs.astype(np.float32), w_abs.sum(axis=0), sign)

    @property
    def rows(self) -> int:
        return self.w_int.shape[0]

    @property
    def cols(self) -> int:
        return self.w_int.shape[1]

    def restricted(self, rows: np.ndarray) -> SelectedConductance:
        """The same select with only the given rows (those a batch drives)."""
        return SelectedConductance.of(self.w_int[rows])


def check_select(select) -> str:
    return check_choice("select", select, SELECTS)


def check_drive(durations, polarity, rows: int, n_window_cycles: int | None,
                batched: bool) -> tuple[np.ndarray, np.ndarray]:
    """(durations, polarity) as int64 (B, rows); durations within [0, n_window_cycles]."""
    shape = (None, rows) if batched else (rows,)
    d = check_array("durations", durations, shape, "int")
    s = check_array("polarity", polarity, shape, "int")
    hi = np.iinfo(np.int64).max if n_window_cycles is None else n_window_cycles
    if d.size and (d.min() < 0 or d.max() > hi):  # two reductions; the full check names the element
        check_within("durations", d, 0, hi, f"cycles (n_window_cycles = {n_window_cycles})"
                     if n_window_cycles is not None else "cycles")
    if s.size and (s.min() < -1 or s.max() > 1 or not s.all()):  # values in {-1, 1}, checked cheaply
        index = tuple(int(i) for i in np.argwhere(np.abs(s) != 1)[0])
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


def integrated_charge(w: SelectedConductance, d: np.ndarray, s: np.ndarray,
                      dtype: type = np.int64) -> np.ndarray:
    """Q[b, j] = sum_i s_i d_i W[i, j] (conductance LSB x cycles), (B, cols): int64, or float64
    holding the same exact integers (for a caller that goes on in float64)."""
    check_exact(w, int(d.max(initial=0)))
    charge = np.empty((len(d), w.cols))
    for chunk in _window_chunks(len(d), w.rows):
        np.matmul(np.multiply(d[chunk], s[chunk], dtype=np.float64), w.w, out=charge[chunk])
    return charge if dtype is np.float64 else charge.astype(dtype)


def _window_chunks(windows: int, elements_per_window: int) -> list[slice]:
    """Slices of at most _CHUNK_ELEMENTS // elements_per_window windows (at least one)."""
    step = max(1, _CHUNK_ELEMENTS // max(elements_per_window, 1))
    return [slice(b, b + step) for b in range(0, windows, step)]


def currents_may_leave(w: SelectedConductance, d: np.ndarray, s: np.ndarray, n_window_cycles: int,
                       lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(window, column) index arrays of the pairs whose current I_c[j] may leave [lower_j,
    upper_j] (int64 (cols,)) in some cycle; every other pair is proven inside. Conservative:
    a pair listed in vain costs only time.

    Cheapest test first: a column whose limits contain [-reach_j, reach_j] is inside for every
    window. The other columns: when all terms s_i W[i, j] share one sign (4-phase windows) the
    current moves monotonically from its cycle-0 value to 0, one matmul decides
    (`_sign_definite_test`); else (1-phase windows, whose signed terms cancel) a band test on
    every window (`_band_test`, with `_first_band_count` bands), on the (window, column) block
    that failed a band test with twice the bands if few windows or pairs failed, then, if many
    pairs are left, an exact scan of their currents (`_prefix_scan`). Each test is a proof on
    its own, so a pair is listed only if every test failed it.
    """
    check_exact(w, n_window_cycles)
    cols = np.flatnonzero((upper < w.reach) | (lower > -w.reach))
    sign = _terms_sign(w, d, s)
    if sign:
        failed = ~_sign_definite_test(w, d, s, sign, cols, lower, upper)
        window, column = np.nonzero(failed) if failed.any() else _NO_PAIRS
        return window, cols[column]
    if not len(cols) or not len(d):
        return _NO_PAIRS
    dense = np.count_nonzero(d) >= _DENSE_FRACTION * d.size
    bands = _first_band_count(w, cols, lower, upper)
    windows = np.arange(len(d))
    failed = ~_band_test(w, d, s, n_window_cycles, bands, cols, lower, upper, dense)
    in_window = failed.any(axis=1)
    few_windows = np.count_nonzero(in_window) <= max(_REFINE_MAX_FRACTION * len(d), _REFINE_FEW_WINDOWS)
    if in_window.any() and (few_windows or np.count_nonzero(failed) < _SCAN_MIN_PAIRS):
        in_col = failed.any(axis=0)
        windows, cols, failed = windows[in_window], cols[in_col], failed[np.ix_(in_window, in_col)]
        failed &= ~_band_test(w, d[windows], s[windows], n_window_cycles, 2 * bands, cols, lower, upper,
                              dense)
    if not failed.any():
        return _NO_PAIRS
    window, column = np.nonzero(failed)
    window, column = windows[window], cols[column]
    if len(window) < _SCAN_MIN_PAIRS:
        return window, column
    inside = _prefix_scan(w, d, s, window, column, lower, upper)
    return window[~inside], column[~inside]


_NO_PAIRS = (np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp))


def _terms_sign(w: SelectedConductance, d: np.ndarray, s: np.ndarray) -> int:
    """+1 or -1 if all terms s_i W[i, j] of the conducting rows have that sign (or are 0): W has
    one sign and the conducting rows one polarity; else 0."""
    if w.sign == 0:
        return 0
    if s.min(initial=1) == s.max(initial=1):  # the usual 4-phase drive: skip the masked test
        return w.sign * int(s.flat[0]) if s.size else w.sign
    conducting = d > 0
    if not (conducting & (s < 0)).any():
        return w.sign
    return 0 if (conducting & (s > 0)).any() else -w.sign


def _sign_definite_test(w: SelectedConductance, d: np.ndarray, s: np.ndarray, sign: int,
                        cols: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(B, len(cols)) bool: True where the current, all of whose terms have the sign `sign`, is
    proven within the limits.

    Rows only switch off during a window, so sign * I_c falls from sign * C_0 (cycle 0, all
    conducting rows) to 0 (the idle current) and stays inside iff C_0 and 0 are; 0 is an exact
    integer test. A float32 sum of same-sign terms, in any order, is within gamma_R of its value
    relatively (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., eq. 3.5;
    gamma_R = R u / (1 - R u) <= 1.004 R u for R <= 2**16 rows, u = 2**-24), and rounding W
    to float32 adds u: |C_0 - C_0 computed| <= (1.01 R + 1) u |C_0|. So sign * C_0 <= L (L = upper,
    or -lower for negative terms) follows from the computed value <= L (1 - (2 R + 4) u),
    rounded down to float32. A relative margin keeps idle windows (C_0 = 0) inside even when a
    limit is 0 (a CCO without zero-current offset).
    """
    bound = upper[cols] if sign > 0 else -lower[cols]
    zero_inside = (lower[cols] <= 0) & (upper[cols] >= 0)
    limit = _float32_below(bound * (1.0 - (2 * w.rows + 4) * FLOAT32_UNIT))
    w32 = w.w32 if len(cols) == w.cols else w.w32[:, cols]
    passed = np.empty((len(d), len(cols)), dtype=bool)
    for chunk in _window_chunks(len(d), w.rows):
        start = np.multiply(d[chunk] > 0, s[chunk].astype(np.float32)) @ w32  # C_0
        if sign < 0:
            np.negative(start, out=start)
        np.less_equal(start, limit, out=passed[chunk])
    passed &= zero_inside
    return passed


def _first_band_count(w: SelectedConductance, cols: np.ndarray, lower: np.ndarray,
                      upper: np.ndarray) -> int:
    """Bands of the first band test: the mean over the columns of reach_j over the half-width
    (upper_j - lower_j) / 2 of the limits, rounded up, within [2, _MAX_FIRST_BANDS].

    For durations spread over the window, a band's T_g is about reach / bands, and the band
    bound passes a pair only if T_g / 2 plus its current stays within the limits: these bands
    leave the current at least half the range (fewer bands fail nearly every pair, more cost
    matmuls the exact scan would not need; `pcmhil bench model`'s weights take 2, the twin
    benchmark's full-range uniform weights 4).
    """
    half_width = np.maximum((upper[cols] - lower[cols].astype(np.float64)) / 2, 1)
    ratio = float(np.mean(w.reach[cols] / half_width))
    return min(max(math.ceil(ratio), 2), _MAX_FIRST_BANDS)


def _band_test(w: SelectedConductance, d: np.ndarray, s: np.ndarray, n_window_cycles: int, bands: int,
               cols: np.ndarray, lower: np.ndarray, upper: np.ndarray, dense: bool) -> np.ndarray:
    """(B, len(cols)) bool: True where the band bound proves lower <= I_c <= upper for every c.

    The window's cycles are cut into `bands` bands [e_g, e_g+1), e_g = g n // bands. Let C_g be
    the current of cycle e_g (rows with d > e_g; C_bands = 0) and group g the rows with
    e_g < d <= e_g+1. During band g the rows with d > e_g+1 conduct throughout (C_g+1) and a
    subset of group g conducts, whose sum lies within the group's negative and positive parts
    (S_g -+ T_g) / 2, S_g = C_g - C_g+1, T_g = sum over the group of |W| = U_g - U_g+1 (U_g: the
    |W| sums of the rows with d > e_g). So 2 I_c lies within C_g + C_g+1 -+ T_g: the pair is
    inside if max_g (C_g + C_g+1 + T_g) <= 2 upper and min_g (C_g + C_g+1 - T_g) >= 2 lower.
    A larger T_g only widens the bound, so a dense drive (nearly all rows conduct at cycle 0,
    U_0 close to reach) takes reach for U_0 and saves a quarter of the 2-band matmuls.

    Float32 margin (u = 2**-24, R rows, a = reach_j): W is rounded to float32 (error <= u|W|),
    the masks (0, +-1) are exact, and a float32 matmul is within gamma_R |x| |W| of the exact
    result for any summation order, fused or not (Higham, "Accuracy and Stability of Numerical
    Algorithms", 2nd ed., eq. 3.5; gamma_R = R u / (1 - R u) <= 1.004 R u for rows <= 2**16),
    so every C_g, U_g is within e = (1.01 R + 1) u a of its integer. The three float32 steps on
    them (T_g, C_g + C_g+1, their sum or difference) act on values below a, 2a, 2a and add at
    most 4 e + 5 u a (plus terms of order u e) = (4.04 R + 9) u a. `_band_limits` shrinks 2 upper
    and 2 lower by (8 R + 32) u (a + 1), about twice that, and rounds them inwards to float32:
    a pair that passes in float32 passes in exact arithmetic. (The float64 rounding of the
    shrunk limits matters only where a limit is within about a of 0, and is then below 2**-51 a.)
    """
    low2, high2 = _band_limits(w, cols, lower, upper)
    w32, w_abs32 = (w.w32, w.w_abs32) if len(cols) == w.cols else (w.w32[:, cols], w.w_abs32[:, cols])
    edges = np.arange(bands) * n_window_cycles // bands
    reach32 = w.reach[cols].astype(np.float32) if dense else None
    passed = np.empty((len(d), len(cols)), dtype=bool)
    for chunk in _window_chunks(len(d), bands * w.rows):
        lowest2, highest2 = _band_extremes(d[chunk], s[chunk], edges, w32, w_abs32, reach32)
        np.less_equal(highest2, high2, out=passed[chunk])
        passed[chunk] &= lowest2 >= low2
    return passed


def _band_extremes(d: np.ndarray, s: np.ndarray, edges: np.ndarray, w32: np.ndarray,
                   w_abs32: np.ndarray, reach32: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """min_g and max_g of C_g + C_g+1 -+ T_g (twice the band bounds) in float32 (B, cols);
    with reach32 (reach in float32, within u a like any U_g), U_0 is taken as reach."""
    bands, (windows, rows) = len(edges), d.shape
    on = d[None] > edges[:, None, None]  # (bands, B, rows): row conducts at the band's start
    flat = (bands * windows, rows)  # one matmul for all bands: fewer BLAS calls
    start = (np.multiply(on, s.astype(np.float32)).reshape(flat) @ w32).reshape(bands, windows, -1)
    start_abs = np.empty_like(start)
    first = 0 if reach32 is None else 1
    if first:
        start_abs[0] = reach32
    np.matmul(on[first:].reshape((bands - first) * windows, rows).astype(np.float32), w_abs32,
              out=start_abs[first:].reshape((bands - first) * windows, -1))
    lowest = highest = None
    for g in range(bands):  # in place: band g is the last to need start[g] and start_abs[g]
        if g + 1 < bands:
            spread = np.subtract(start_abs[g], start_abs[g + 1], out=start_abs[g])
            middle = np.add(start[g], start[g + 1], out=start[g])
        else:
            spread, middle = start_abs[g], start[g]
        low = middle - spread
        high = np.add(middle, spread, out=middle)
        lowest = low if lowest is None else np.minimum(lowest, low, out=lowest)
        highest = high if highest is None else np.maximum(highest, high, out=highest)
    return lowest, highest


def _prefix_scan(w: SelectedConductance, d: np.ndarray, s: np.ndarray, window: np.ndarray,
                 column: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(pairs,) bool: True where the current of the pair is proven within the limits in every
    cycle, by exact integer arithmetic.

    With a window's conducting rows sorted by decreasing duration (`rows_by_duration`), the
    rows conducting in cycle c are a prefix of that order, so every current I_c[j] is a prefix
    sum of the terms s_i W[i, j] in it, and 0 (the idle current) is always inside. The scan
    tests every prefix sum, one sorted position at a time over all pairs at once (a few
    operations on arrays as long as the pair list: the cost is O(rows) per pair, without a
    matmul's waste on the columns that passed). The prefix sums inside a run of equal
    durations are the current of no cycle: a pair they take outside is listed in vain.
    Integers throughout: int32 where every prefix sum, bounded by reach, fits, else int64.
    """
    windows, pair_window = np.unique(window, return_inverse=True)
    signed, _ = rows_by_duration(d[windows], s[windows])
    dtype = np.int32 if w.reach.max(initial=0) < 2**31 else np.int64
    terms = signed_terms(w.w_int, dtype)
    at_column = column * (2 * w.rows + 1)
    by_position = np.ascontiguousarray(signed.T)
    current, highest, lowest = (np.zeros(len(window), dtype) for _ in range(3))
    index, term = np.empty(len(window), dtype=np.intp), np.empty(len(window), dtype)
    for position in by_position:  # mode="clip": np.take's unbuffered path (indices are valid)
        np.take(position, pair_window, out=index, mode="clip")
        index += at_column
        np.take(terms, index, out=term, mode="clip")
        current += term
        np.maximum(highest, current, out=highest)
        np.minimum(lowest, current, out=lowest)
    return (highest <= upper[column]) & (lowest >= lower[column])


def rows_by_duration(d: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The conducting rows of each window by decreasing duration (ties in row order), as
    (signed, d_sorted), both (B, most conducting rows of a window): signed indexes the row's
    term s_i W[i, j] in `signed_terms` (2 rows where a window has no row left, d_sorted 0)."""
    rows = d.shape[1]
    longest = int(d.max(initial=0))
    # numpy sorts integers of up to 16 bits stably by radix sort: keys in the smallest dtype
    key = (longest - d).astype(np.min_scalar_type(longest))
    conducting = int(np.count_nonzero(d, axis=1).max(initial=0))
    order = np.argsort(key, axis=1, kind="stable")[:, :conducting]
    flat = order + (np.arange(len(d)) * rows)[:, None]
    d_sorted = d.ravel()[flat]
    signed = np.where(d_sorted > 0, order + rows * (s.ravel()[flat] < 0), 2 * rows)
    return signed, d_sorted


def signed_terms(w_int: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """The terms s W[i, j] of both polarities, flat: entry j (2 rows + 1) + k holds W[k, j]
    for k < rows, -W[k - rows, j] for rows <= k < 2 rows, 0 for k = 2 rows (a column's terms
    contiguous, indexed by `rows_by_duration`'s signed row)."""
    rows, cols = w_int.shape
    table = np.zeros((cols, 2 * rows + 1), dtype=dtype)
    table[:, :rows] = w_int.T
    table[:, rows:2 * rows] = -w_int.T
    return table.ravel()


def _band_limits(w: SelectedConductance, cols: np.ndarray, lower: np.ndarray, upper: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """float32 (len(cols),) 2 lower and 2 upper moved inwards by the margin of `_band_test`."""
    margin = (8 * w.rows + 32) * FLOAT32_UNIT * (w.reach[cols] + 1.0)
    return (_float32_above(2.0 * lower[cols] + margin), _float32_below(2.0 * upper[cols] - margin))


def _float32_below(x: np.ndarray) -> np.ndarray:
    """The largest float32 <= x (float64) elementwise."""
    y = x.astype(np.float32)
    return np.where(y > x, np.nextafter(y, np.float32(-np.inf)), y)


def _float32_above(x: np.ndarray) -> np.ndarray:
    """The smallest float32 >= x (float64) elementwise."""
    return -_float32_below(-x)
