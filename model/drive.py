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
(`currents_may_leave`). The same argument makes a float32 matmul exact where every partial sum
is an integer below 2**24 (the band test's sums of up to two copies of each term: 2 reach below
2**24): the scan then starts from the cycle-0 current those sums give exactly, and covers only
the cycles the bounds did not prove.

With torch installed, batches of windows take these matmuls as exact integer products on int8
digits instead (`int_gemm`: the charge of 1-phase and 4-phase windows, the current tests'
`_Int8Bounds`), about four times faster; their tests then need no rounding margin, and every
count is the same either way (tests/test_model_cco.py runs both paths). With the compiled
kernels loaded (`kernels`), the band test's elementwise steps and the exact scans run as
compiled loops, the scan for any number of failed pairs (`CurrentBounds.may_leave`).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, cached_property

import numpy as np
from threadpoolctl import ThreadpoolController

from pcmhil.errors import ConfigError

from . import int_gemm, kernels
from .checks import check_array, check_choice, check_int, check_within

SELECTS = ("differential", "plus", "minus")

#: Float64 represents every integer below this exactly.
EXACT_FLOAT_LIMIT = 2**53

#: Unit roundoff of float32 (round to nearest): every float32 operation is exact to this relative error.
FLOAT32_UNIT = 2.0**-24
#: Bands of the mixed-sign current test per unit of reach over the limits' half-width at first,
#: and at most (`_band_count`); each band costs two float32 matmuls. The count adapts to the
#: fraction of pairs that fail it, judged every _ADAPT_WINDOWS windows
#: (`CurrentBounds._adapt_bands`).
_BANDS_PER_REACH = 1.25
_MAX_BANDS = 8
_ADAPT_WINDOWS = 64
_MORE_BANDS_ABOVE = 0.02
_FEWER_BANDS_BELOW = 0.001
#: The exact scan runs on at least this many pairs: below, the exact sums of
#: `CcoTransfer.exact_advance` cost less than the scan would (measured at 256 rows in
#: instructions per window: ~70 pairs of 16 windows 500 k with the sums alone, 590 k with the
#: scan; ~270 pairs of 64 windows the same either way; both are O(rows) per pair, so the
#: break-even hardly depends on the rows).
_SCAN_MIN_PAIRS = 512
#: `_prefix_scan` takes this many sorted positions per step (as a (positions, pairs) block); in
#: the two threads of a large batch, twice as many (see cco._TAIL_CHUNK_WINDOWS).
_SCAN_BLOCK = {False: 32, True: 64}
#: A drive is dense when at least this fraction of (window, row) durations is nonzero (1-phase
#: windows of signed inputs): its band test bounds T_0 by reach - sum of the other T_g, one
#: matmul row fewer (`_band_test`).
_DENSE_FRACTION = 0.95
#: Elements of a matmul's left operand (windows x rows, times bands for the current bounds) per
#: chunk of windows: bounds the memory of a batch (~2 MB per float32 array).
_CHUNK_ELEMENTS = 2**19
#: ... for the band test, whose elementwise passes then work on arrays that stay in the CPU
#: cache (6 bands x 128 windows x 256 columns x 4 bytes = 768 kB each; this machine's L2 is
#: 2 MB a core). Measured at 256 x 256 with the twin benchmark's workload, alternating in one
#: process: 3 x 2**16 elements 1-2.5 % faster than 2**17 in three runs; 2**18 no better, 2**19
#: and 2**16 slower.
_BAND_CHUNK_ELEMENTS = 3 * 2**16
#: Shape of the band edges (`_band_edges`): 1 gives equal bands.
_BAND_EDGE_POWER = 0.75
#: `_PathChoice`: the path not chosen runs on every this-many-th call; weight of a call's time
#: in a path's moving average; a path's first calls not timed.
_PROBE_EVERY = 32
_COST_WEIGHT = 0.25
_WARM_CALLS = 2


@contextmanager
def single_threaded_blas():
    """A context in which BLAS runs on one thread, for the matmuls of windows.

    They are small (~1-2 ms for 1,000 windows of 256 x 256, microseconds for one), and
    OpenBLAS's second thread costs more than it gains: every call waits for it, on a loaded
    machine for a scheduler slice, and it spins between calls, taking a core from the rest
    (the cosim's simulator). Measured on 2 cores at load ~2: a 1,000 x 256 x 256 float64
    matmul in 2.1 ms on one thread, 4-8 ms on two; the windows of the twin benchmark in 124 ms
    instead of 215 ms. It sets the libraries' thread counts directly (~4 us; threadpoolctl's
    `limit` builds its whole report, ~15 us, the cost of a window's band test).
    """
    libraries = _blas_libraries()
    threads = [library.num_threads for library in libraries]
    for library in libraries:
        library.set_num_threads(1)
    try:
        yield
    finally:
        for library, count in zip(libraries, threads, strict=True):
            library.set_num_threads(count)


@cache
def _blas_libraries() -> list:
    """threadpoolctl's controllers of the loaded BLAS libraries (inspected once, ~1 ms)."""
    return ThreadpoolController().select(user_api="blas").lib_controllers


@dataclass(frozen=True)
class SelectedConductance:
    """The integer conductance matrix of one device select, in every form a window needs, built
    once per read state (the crossbar caches it), so that no window converts it again.

    w_int: int64 (rows, cols); w: the same as float64 (exact; the charge); abs_max: max |w_int|;
    w32, w_abs32: W and |W| as float32 (the current bounds; rounded where |W| >= 2**24, which
    their margin covers); reach: int64 (cols,) sum_i |W[i, j]|, a bound on |I_c[j]| of every
    drive; sign: +1 if W >= 0 everywhere, -1 if W <= 0 everywhere, else 0 (the 4-phase selects
    are +1). Built on first use and kept with it: the signed term tables of the exact sums and
    scans (`terms`, `scan_terms`), the last restriction to a batch's rows (`restricted`) and the
    current tests for a CCO's limits (`bounds`).
    """

    w_int: np.ndarray
    w: np.ndarray
    abs_max: int
    w32: np.ndarray
    w_abs32: np.ndarray
    reach: np.ndarray
    sign: int
    #: What windows derive from the matrix alone (`restricted`, `bounds`), built on first use.
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, w_int: np.ndarray) -> SelectedConductance:
        w_abs = np.abs(w_int)
        sign = 1 if w_int.min(initial=0) >= 0 else -1 if w_int.max(initial=0) <= 0 else 0
        return cls(w_int, w_int.astype(np.float64), int(w_abs.max(initial=0)), w_int.astype(np.float32),
                   w_abs.astype(np.float32), w_abs.sum(axis=0), sign)

    @property
    def rows(self) -> int:
        return self.w_int.shape[0]

    @cached_property
    def terms(self) -> np.ndarray:
        """`signed_terms` of the matrix (int64), for the exact sums (`CcoTransfer.exact_advance`)."""
        return signed_terms(self.w_int)

    @cached_property
    def scan_terms(self) -> np.ndarray:
        """`signed_terms` for the scans (`_prefix_scan`, `kernels.scan_pairs`): int32 where
        every prefix sum (bounded by reach) fits, else int64 (half the cache lines)."""
        return signed_terms(self.w_int, np.int32 if self.reach.max(initial=0) < 2**31 else np.int64)

    @property
    def cols(self) -> int:
        return self.w_int.shape[1]

    def restricted(self, rows: np.ndarray) -> SelectedConductance:
        """The same select with only the given rows (those a batch drives). The last one is
        kept: a layer on part of the tile's rows drives the same rows in every call."""
        key = rows.tobytes()
        last = self._derived.get("restricted")
        if last is None or last[0] != key:
            last = self._derived["restricted"] = (key, SelectedConductance.of(self.w_int[rows]))
        return last[1]

    def int8(self, windows: int) -> int_gemm.Int8Matrix | None:
        """The matrix as int8 digits for products with the left operands of `windows` windows
        (`int_gemm`), or None where these take numpy's float path (a few windows, or no exact
        int8 GEMM: torch missing, not imported yet, or an inexact kernel)."""
        if windows < int_gemm.MIN_ROWS or not self.w_int.size or (torch := int_gemm.module()) is None:
            return None
        matrix = self._derived.get("int8")
        if matrix is None:
            matrix = self._derived["int8"] = int_gemm.Int8Matrix(torch, self.w_int)
        return matrix

    def bounds(self, lower: np.ndarray, upper: np.ndarray) -> CurrentBounds:
        """The current tests of this select for the limits (lower, upper), built once per pair
        of limit arrays (a CCO's limits are the same arrays for its whole life)."""
        last = self._derived.get("bounds")
        if last is None or last[0] is not lower or last[1] is not upper:
            last = self._derived["bounds"] = (lower, upper, CurrentBounds(self, lower, upper))
        return last[2]


def check_select(select) -> str:
    return check_choice("select", select, SELECTS)


def check_drive(durations, polarity, rows: int, n_window_cycles: int | None,
                batched: bool) -> tuple[np.ndarray, np.ndarray]:
    """(durations, polarity) (B, rows); durations within [0, n_window_cycles]. Durations come
    back as int16 where n_window_cycles < 2**15 (the windows' many passes over them then move a
    quarter of the bytes), else int64; polarity as int8."""
    shape = (None, rows) if batched else (rows,)
    d = check_array("durations", durations, shape, "integer")
    s = check_array("polarity", polarity, shape, "integer")
    hi = np.iinfo(np.int64).max if n_window_cycles is None else n_window_cycles
    if d.size and (d.min() < 0 or d.max() > hi):  # two reductions; the full check names the element
        check_within("durations", d, 0, hi, f"cycles (n_window_cycles = {n_window_cycles})"
                     if n_window_cycles is not None else "cycles")
    if s.size and (s.min() < -1 or s.max() > 1 or not s.all()):  # values in {-1, 1}, checked cheaply
        index = tuple(int(i) for i in np.argwhere(np.abs(s) != 1)[0])
        raise ConfigError(f"polarity must be +1 or -1, not {s[index].item()!r} at index {index}")
    narrow = np.int16 if n_window_cycles is not None and n_window_cycles < 2**15 else np.int64
    return np.atleast_2d(d.astype(narrow, copy=False)), np.atleast_2d(s.astype(np.int8, copy=False))


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
    holding the same exact integers (for a caller that goes on in float64). Through `int_gemm`
    where the signed durations d s, or all their negatives, fit int8 (1-phase windows of int8
    inputs, 4-phase windows), else a float64 matmul (exact: `check_exact`)."""
    check_exact(w, int(d.max(initial=0)))
    charge = np.empty((len(d), w.cols))
    matrix = w.int8(len(d))
    int8 = matrix is not None and matrix.exact_for(128)
    for chunk in _window_chunks(len(d), w.rows):
        signed = _int8_signed_durations(d[chunk], s[chunk]) if int8 else None
        if signed is None:
            np.matmul(np.multiply(d[chunk], s[chunk], dtype=np.float64), w.w, out=charge[chunk])
            continue
        matrix.product(signed[0], out=charge[chunk])
        if signed[1]:
            np.negative(charge[chunk], out=charge[chunk])
    return charge if dtype is np.float64 else charge.astype(dtype)


def charge_digits(w: SelectedConductance, d: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """The charge's int8 products for a caller that combines them itself (`kernels`): (digits,
    negated) with Q = (-1 if negated) sum_k 256**k digits[k], digits (K, B, cols) int32, where
    `integrated_charge` takes the int8 path; else None."""
    check_exact(w, int(d.max(initial=0)))
    matrix = w.int8(len(d))
    if matrix is None or not matrix.exact_for(128) or (signed := _int8_signed_durations(d, s)) is None:
        return None
    return matrix.digit_products(signed[0]), signed[1]


def _int8_signed_durations(d: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """(d s or -d s as int8, negated) where one of them fits int8 (negated: 4-phase windows,
    durations up to 128 of one polarity), else None."""
    v = np.multiply(d, s, dtype=np.int16 if d.dtype.itemsize <= 2 else np.int64)
    low, high = int(v.min(initial=0)), int(v.max(initial=0))
    negated = high > 127 and low >= -127
    if negated:
        low, high = -high, -low
        np.negative(v, out=v)
    if low < -128 or high > 127:
        return None
    return v.astype(np.int8), negated


def _window_chunks(windows: int, elements_per_window: int, elements: int = _CHUNK_ELEMENTS) -> list[slice]:
    """Slices of at most `elements` // elements_per_window windows (at least one)."""
    step = max(1, elements // max(elements_per_window, 1))
    return [slice(b, b + step) for b in range(0, windows, step)]


def currents_may_leave(w: SelectedConductance, d: np.ndarray, s: np.ndarray, n_window_cycles: int,
                       lower: np.ndarray, upper: np.ndarray, coarse: bool = False,
                       rate: tuple[np.ndarray, np.ndarray, int] | None = None) -> tuple[np.ndarray, ...]:
    """(window, column) index arrays of the pairs whose current I_c[j] may leave [lower_j,
    upper_j] (int64 (cols,)) in some cycle; every other pair is proven inside. Conservative:
    a pair listed in vain costs only time. See `CurrentBounds.may_leave` (`coarse`: in one of
    two threads, `_SCAN_BLOCK`; `rate`: the listed pairs' exact sums too, where it can)."""
    return w.bounds(lower, upper).may_leave(d, s, n_window_cycles, coarse, rate)


class CurrentBounds:
    """The tests of `currents_may_leave` for one select and one pair of limit arrays, with
    everything they derive from these alone (the columns to test, their float32 matrices, the
    shrunk limits, the band count) computed once per read state rather than per call."""

    def __init__(self, w: SelectedConductance, lower: np.ndarray, upper: np.ndarray):
        self.w, self.lower, self.upper = w, lower, upper
        # A column whose limits contain [-reach_j, reach_j] is inside for every window.
        cols = self.cols = np.flatnonzero((upper < w.reach) | (lower > -w.reach))
        whole = self.all_cols = len(cols) == w.cols
        self.w32 = w.w32 if whole else np.ascontiguousarray(w.w32[:, cols])
        self.w_abs32 = w.w_abs32 if whole else np.ascontiguousarray(w.w_abs32[:, cols])
        self.reach32 = w.reach[cols].astype(np.float32)
        self.ones32 = np.ones(w.rows, dtype=np.float32)  # row counts of the band groups
        self.mid, self.half = _band_limits(w, cols, lower, upper)
        # every partial sum of the A_g matmul is an exact integer (module doc): the C_g exact
        self.exact32 = bool(2 * w.reach[cols].max(initial=0) < 2**24)
        self.bands = _band_count(w, cols, lower, upper) if len(cols) else 0
        self._seen = [0, 0]  # windows and failed pairs of the band test since bands last changed
        # `_sign_definite_test`: C_0 against the limit on the side its terms move it to.
        self.zero_inside = (lower[cols] <= 0) & (upper[cols] >= 0)
        shrink = 1.0 - (2 * w.rows + 4) * FLOAT32_UNIT
        self.start_limit = {1: _float32_below(upper[cols] * shrink),
                            -1: _float32_below(-lower[cols] * shrink)}
        self._int8: _Int8Bounds | None = None
        self._walk: _Walk | None = None
        self._paths = _PathChoice((w.rows, len(cols)))

    def int8(self, windows: int) -> _Int8Bounds | None:
        """The operands of the int8 path (`int_gemm`) for `windows` windows, or None where they
        take the float32 path (`SelectedConductance.int8`)."""
        matrix = self.w.int8(windows)
        if matrix is None or not matrix.exact_for(2):  # left operands in [-2, 2]
            return None
        if self._int8 is None:  # two threads may both build it: the same values
            self._int8 = _Int8Bounds(self, int_gemm.module())
        return self._int8

    def may_leave(self, d: np.ndarray, s: np.ndarray, n_window_cycles: int, coarse: bool = False,
                  rate: tuple[np.ndarray, np.ndarray, int] | None = None) -> tuple[np.ndarray, ...]:
        """(window, column) of the pairs of the drive (d, s) (B, rows) that may leave the limits;
        with `rate` = (offset, gain, fmax) of the CCOs whose limits these are, (window, column,
        totals): totals, where the compiled scan ran (else None), holds each listed pair's exact
        sum of clip(offset + gain I_c, 0, fmax) over the window's cycles (int64,
        `kernels.scan_pairs`), the sum `cco.CcoTransfer.exact_advance` would take.

        Cheapest test first: the columns whose limits contain [-reach_j, reach_j] are inside for
        every window (`cols`). The other columns: when all terms s_i W[i, j] share one sign
        (4-phase windows) the current moves monotonically from its cycle-0 value to 0, one
        matmul decides (`_sign_definite_test`); else (1-phase windows, whose signed terms
        cancel) a band test on every window (`_band_test`, `bands` bands, `_adapt_bands`), then,
        if many pairs are left, an exact scan of their currents in the bands they failed
        (`_prefix_scan`; compiled, `kernels.scan_pairs`, for any number of pairs, cheaper per
        pair than the exact sums it spares them). With the kernels compiled, instead of the band
        test and scans, whichever has been faster (`_PathChoice`): a walk of every window's rows
        over all columns (`_walked`), whose flags are a proof too. Each test is a proof on its
        own, so a pair is listed only if every test failed it. The one-sign and band tests run
        on exact integers where `int8` allows (`_Int8Bounds`), else in float32 with the margins
        their docs prove.
        """
        w = self.w
        check_exact(w, n_window_cycles)
        untotalled = () if rate is None else (None,)
        if not len(self.cols) or not len(d):
            return *_NO_PAIRS, *untotalled
        sign = terms_sign(w, d, s)
        if sign:
            failed = ~self._sign_definite_test(d, s, sign)
            window, column = np.divmod(np.flatnonzero(failed), failed.shape[1]) if failed.any() else _NO_PAIRS
            return window, self.cols[column], *untotalled
        compiled = kernels.module()
        if compiled is None:
            return self._band_path(d, s, n_window_cycles, coarse, rate, compiled)
        walk = self._paths.walk_next()
        if walk and self._walk is None:  # built before the clock starts (each path's first call)
            self._walk = _Walk(self.w.w_int if self.all_cols else self.w.w_int[:, self.cols],
                               self.lower[self.cols], self.upper[self.cols])
        elif not walk:
            self.int8(len(d))
        start = time.perf_counter()
        if walk:
            found = self._walked(d, s, n_window_cycles, rate, compiled)
        else:
            found = self._band_path(d, s, n_window_cycles, coarse, rate, compiled)
        self._paths.took(walk, len(d), time.perf_counter() - start)
        return found

    def _band_path(self, d: np.ndarray, s: np.ndarray, n_window_cycles: int, coarse: bool,
                   rate: tuple[np.ndarray, np.ndarray, int] | None, compiled) -> tuple[np.ndarray, ...]:
        """`may_leave` of a mixed-sign drive by the band test and the scans of the pairs it fails."""
        w = self.w
        untotalled = () if rate is None else (None,)
        dense = np.count_nonzero(d) >= _DENSE_FRACTION * d.size
        bands = self.bands  # the other thread of a large batch may change it meanwhile
        failed = self._band_test(d, s, n_window_cycles, dense, compiled, bands)
        self._adapt_bands(len(d), len(failed.window), bands)
        column = failed.column if self.all_cols else self.cols[failed.column]
        if compiled is not None:  # the scan compiled: for any number of pairs
            pairs = len(failed.window)
            start = failed.start or _full_scan(pairs, w.rows, int(d.max(initial=0)))
            leaves = np.empty(pairs, dtype=np.bool_)
            offset, gain, fmax = rate or (np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
            totals = np.empty(pairs if rate else 0, dtype=np.int64)
            if pairs:
                compiled.scan_pairs(w.scan_terms.reshape(w.cols, -1), d, s, failed.window, column,
                                    start[0].astype(np.int64), start[3], start[4], self.lower, self.upper,
                                    leaves, n_window_cycles, offset, gain, fmax, totals)
            return failed.window[leaves], column[leaves], *(() if rate is None else (totals[leaves],))
        if len(failed.window) < _SCAN_MIN_PAIRS:
            return failed.window, column, *untotalled
        inside = _prefix_scan(w, d, s, failed.window, column, self.lower, self.upper,
                              failed.start and failed.start[:3], _SCAN_BLOCK[coarse])
        return failed.window[~inside], column[~inside], *untotalled

    def _walked(self, d: np.ndarray, s: np.ndarray, n_window_cycles: int,
                rate: tuple[np.ndarray, np.ndarray, int] | None, compiled) -> tuple[np.ndarray, ...]:
        """`may_leave` of a mixed-sign drive by walking every window's rows over all columns
        (`_Walk`, `kernels.walk_extremes`): the pairs it flags, and with `rate` their exact sums
        (`kernels.exact_pairs`: the pairs whose currents stay inside sum to what the charge
        gives them, so listing them too changes no count)."""
        walk = self._walk  # built by `may_leave` (two threads may both build it: the same values)
        flags = np.empty((len(d), len(self.cols)), dtype=np.bool_)
        compiled.walk_extremes(walk.table, d, s, n_window_cycles, *walk.limits, flags)
        # 2-D nonzero took ~0.9 ms on 1,000 x 256 flags, flatnonzero and divmod ~0.1 ms
        window, column = np.divmod(np.flatnonzero(flags), flags.shape[1])
        if not self.all_cols:
            column = self.cols[column]
        if rate is None:
            return window, column
        totals = np.empty(len(window), dtype=np.int64)
        if len(window):
            compiled.exact_pairs(self.w.terms.reshape(self.w.cols, -1), d, s, window, column, n_window_cycles,
                                 *rate, totals)
        return window, column, totals

    def _adapt_bands(self, windows: int, failed_pairs: int, bands: int) -> None:
        """One band more while over _MORE_BANDS_ABOVE of the pairs fail the band test, one
        fewer while under _FEWER_BANDS_BELOW do, judged every _ADAPT_WINDOWS windows: how many
        fail depends on how close the drive's currents come to the limits, which only the
        windows tell. A band costs two matmul rows, 2 R C multiply-adds per window, a failed
        pair an exact scan, O(R): one more pays where it saves ~1 % of the pairs or more
        (measured at 256 x 256, one thread: uniform weights and inputs fail 4.6 % of the pairs
        with 4 bands, 1.6 % with 5, 1.0 % with 6, and 1,000 windows take 51, 37 and 38 ms;
        `pcmhil bench model`'s workload fails 0.01 % with 2 bands, and 3 cost 2 ms more).
        Counts never depend on it: every band count gives a proof, and the exact sums decide.
        A test made with another band count than the current one (`bands`: the other thread's
        half, begun before a change) is not counted."""
        if bands != self.bands:
            return
        seen = self._seen
        seen[0] += windows
        seen[1] += failed_pairs
        if seen[0] < _ADAPT_WINDOWS:
            return
        failing = seen[1] / (seen[0] * len(self.cols))
        # one assignment each: the two threads of a large batch share these bounds, and an
        # interleaved `+= 1` could step past the range (the count never changes a result)
        if failing > _MORE_BANDS_ABOVE:
            self.bands = min(self.bands + 1, _MAX_BANDS)
        elif failing < _FEWER_BANDS_BELOW:
            self.bands = max(self.bands - 1, 2)
        seen[:] = [0, 0]

    def _sign_definite_test(self, d: np.ndarray, s: np.ndarray, sign: int) -> np.ndarray:
        """(B, len(cols)) bool: True where the current, all of whose terms have the sign `sign`,
        is proven within the limits.

        Rows only switch off during a window, so sign * I_c falls from sign * C_0 (cycle 0, all
        conducting rows) to 0 (the idle current) and stays inside iff C_0 and 0 are; 0 is an
        exact integer test. A float32 sum of same-sign terms, in any order, is within gamma_R of
        its value relatively (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed.,
        eq. 3.5; gamma_R = R u / (1 - R u) <= 1.004 R u for R <= 2**16 rows, u = 2**-24), and
        rounding W to float32 adds u: |C_0 - C_0 computed| <= (1.01 R + 1) u |C_0|. So
        sign * C_0 <= L (L = upper, or -lower for negative terms) follows from the computed
        value <= L (1 - (2 R + 4) u), rounded down to float32. A relative margin keeps idle
        windows (C_0 = 0) inside even when a limit is 0 (a CCO without zero-current offset).
        """
        passed = np.empty((len(d), len(self.cols)), dtype=bool)
        exact = self.int8(len(d))
        for chunk in _window_chunks(len(d), self.w.rows):
            if exact is not None:  # C_0 exact: compared with the limit itself
                start = exact.a.product(np.multiply(d[chunk] > 0, s[chunk], dtype=np.int8))
                np.less_equal(sign * start, exact.start_limit[sign], out=passed[chunk])
                continue
            start = np.multiply(d[chunk] > 0, s[chunk].astype(np.float32)) @ self.w32  # C_0
            if sign < 0:
                np.negative(start, out=start)
            np.less_equal(start, self.start_limit[sign], out=passed[chunk])
        passed &= self.zero_inside
        return passed

    def _band_test(self, d: np.ndarray, s: np.ndarray, n_window_cycles: int, dense: bool,
                   compiled=None, bands: int | None = None) -> _FailedPairs:
        """The (window, column) pairs (columns: positions in `cols`) whose band bound does not
        prove lower <= I_c <= upper for every c, with where an exact scan of each can start.

        The window's cycles are cut into `bands` bands [e_g, e_g+1) (`_band_edges`). Let
        C_g be the current of cycle e_g (rows with d > e_g; C_bands = 0) and group g the rows
        with e_g < d <= e_g+1. During band g the rows with d > e_g+1 conduct throughout
        (C_g+1) and a subset of group g conducts, whose sum lies within the group's negative
        and positive parts (S_g -+ T_g) / 2, S_g = C_g - C_g+1, T_g = sum over the group of
        |W|. So 2 I_c lies within A_g -+ T_g, A_g = C_g + C_g+1: the pair is inside if
        |A_g - M| + T_g <= H for every g, with M = upper + lower and H = upper - lower (the
        limits clamped to [-reach, reach], which changes no outcome: |I_c| <= reach). Both A_g
        and T_g are one matmul each, from a left operand looked up per signed duration d s
        (`_band_tables`): A_g's row holds s ([d > e_g] + [d > e_g+1]), T_g's the group
        indicator. A dense drive (nearly all rows conduct at cycle 0) takes reach - sum of the
        other T_g for T_0, an upper bound (the |W| sum at cycle 0 is at most reach): one matmul
        row fewer.

        Float32 margin (u = 2**-24, R rows, a = reach_j): W is rounded to float32 (error
        <= u|W|), the operands (0, +-1, +-2) are exact, and a float32 matmul is within
        gamma_R |x| |W| of the exact result for any summation order, fused or not (Higham,
        "Accuracy and Stability of Numerical Algorithms", 2nd ed., eq. 3.5; gamma_R =
        R u / (1 - R u) <= 1.004 R u for rows <= 2**16): A_g is within (2.01 R + 2) u a, T_g
        within (1.01 R + 1) u T_g, and the dense T_0 (a sum of at most 8 of them subtracted from
        reach in float32) within (1.01 R + 11) u a. The three float32 steps (A_g - M, abs,
        + T_g) act on values below 4 (a + 1) and 5 (a + 1) and add at most 9 u (a + 1), M's
        rounding 2 u (a + 1): (3.02 R + 24) u (a + 1) in all. `_band_limits` shrinks H by
        (8 R + 32) u (a + 1) and rounds it down to float32: a pair that passes in float32 passes
        in exact arithmetic. On the int8 path (`_Int8Bounds`) A_g is exact and T_g an upper
        bound, so the test compares with M and H themselves, and T_0 is a product too (in the
        compiled test, a dense drive's T_0 is the int8 digit's column sum less the other T_g).

        Scan start. Each band's bound is a proof on its own: a failed pair's currents are inside
        in every band it passed, and `_prefix_scan` need only cover the cycles of its failed
        bands g_lo .. g_hi (`_scan_start`): from C_g_hi+1, the current of the rows with
        d > e_g_hi+1, adding the rows of the next shorter durations until the rows with
        d > e_g_lo conduct. C_bands = 0 and C_g = A_g - C_g+1 are exact on the int8 path, and
        when every partial sum of the float32 matmul is an integer below 2**24 (2 reach < 2**24,
        `exact32`).

        `compiled` (the loaded `kernels`): the scan starts for any number of pairs (the compiled
        scan takes them all), and on the int8 path the elementwise steps compiled, with A_g from
        one int8 digit and an interval for the rest (`_Int8Bounds.failures`, where that bound
        fits int32: `int32_test`): a looser bound (more pairs fail a band) for half the products
        of A_g.

        `bands`: the band count to use (default `bands`; `may_leave` reads it once, as the other
        thread of a large batch may change it).
        """
        bands = self.bands if bands is None else bands
        exact = self.int8(len(d))
        first = 1 if dense and exact is None else 0
        scanned = compiled is not None or len(d) * len(self.cols) >= _SCAN_MIN_PAIRS
        with_start = (exact is not None or self.exact32) and scanned
        rows = self.w.rows
        mid, half = (self.mid, self.half) if exact is None else (exact.mid, exact.half)
        parts = []
        for chunk in _window_chunks(len(d), bands * rows, _BAND_CHUNK_ELEMENTS):
            if exact is not None and compiled is not None and exact.int32_test:
                failed = exact.failures(d[chunk], s[chunk], bands, n_window_cycles, compiled, dense)
                parts.append(_FailedPairs(failed.window + chunk.start, failed.column, failed.start))
                continue
            if exact is None:
                index = np.multiply(d[chunk], s[chunk], dtype=np.intp)
                index += n_window_cycles  # row of the tables: signed duration + n
                a, t, sizes = self._float32_bands(index, bands, first, n_window_cycles, with_start)
            else:
                a, t, sizes = exact.bands(d[chunk], s[chunk], bands, n_window_cycles)
            y = np.subtract(a, mid, out=None if with_start else a)  # A_g kept for the scan start
            np.abs(y, out=y)
            y += t
            worst = y.max(axis=0)
            failing = np.flatnonzero(worst > half)  # flat: 2-D np.nonzero is ~10x slower
            window, column = np.divmod(failing, len(self.cols))
            start = None
            if with_start:
                above = np.zeros((bands + 1, len(a[0])), dtype=np.intp)  # rows with d > e_g
                above[first:bands] = np.cumsum(sizes[::-1], axis=0)[::-1]
                if first:  # dense: group 0 has no T row; every prefix of the rows is scanned
                    above[0] = rows
                start = _scan_start(a, y, above, failing, half, _band_edges_to_end(bands, n_window_cycles))
            parts.append(_FailedPairs(window + chunk.start, column, start))
        return _FailedPairs.joined(parts)

    def _float32_bands(self, index: np.ndarray, bands: int, first: int, n_window_cycles: int, sizes: bool
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A_g and T_g (bands, windows, cols) float32 of the windows whose table rows are
        `index` (windows, rows), and (sizes) the row counts of the groups first .. bands - 1
        (bands - first, windows), exact (`_band_test`)."""
        table_a, table_t = _band_tables(bands, n_window_cycles)
        windows, rows, cols = len(index), self.w.rows, len(self.cols)
        left = np.empty((2 * bands - first, windows, rows), dtype=np.float32)
        np.take(table_a, index, axis=1, out=left[:bands], mode="clip")  # every band in one call
        np.take(table_t[first:], index, axis=1, out=left[bands:], mode="clip")
        flat = left.reshape(len(left) * windows, rows)
        a = (flat[:bands * windows] @ self.w32).reshape(bands, windows, cols)
        t = np.empty_like(a)
        t_rows = t[first:].reshape((bands - first) * windows, cols)
        np.matmul(flat[bands * windows:], self.w_abs32, out=t_rows)
        if first:
            np.subtract(self.reach32, t[1:].sum(axis=0), out=t[0])
        counts = (flat[bands * windows:] @ self.ones32).reshape(bands - first, windows) if sizes else None
        return a, t, counts


def _high_digit(w_int: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(base, H, L) with W = base H + L, base = ceil(max |W| / 127), H = W / base rounded
    (|H| <= 127) and |L| <= base / 2 (base 1 and L = 0 where |W| <= 127): the one int8 digit of W
    that the compiled band test (`_Int8Bounds`) and the walk (`_Walk`) add, and the rest they bound."""
    base = max(1, -(-int(np.abs(w_int).max(initial=0)) // 127))
    high = np.floor_divide(w_int + base // 2, base)
    return base, high, w_int - base * high


class _Walk:
    """The walk's operands (`CurrentBounds._walked`, `kernels.walk_extremes`) for a matrix W
    (rows, cols) and the limits of its columns: the signed rows of W's high digit H, W = base H +
    L with H = W / base rounded (|H| <= 127, |L| <= base / 2, as `_Int8Bounds`'s one-digit A_g),
    as int8 (2 * rows, cols), and the limits in units of base less a bound on the rest. A current
    is I = base a + e, a the walk's sum of the conducting rows' H terms and |e| <= sum_i |L_ij|
    (`slack`), so I > upper only where a > floor((upper - slack) / base) (`high`) and I < lower
    only where a < ceil((lower + slack) / base) (`low`): the walk flags every pair that leaves,
    and a few inside within the slack (their exact sums decide). The kernel's operands for these
    limits (`kernels.walk_limits`): the sums offset by -low, in uint16 where 2 rows max|H| + 1 <
    2**16 (up to 258 rows where max|H| = 127), else uint32, tested by one unsigned maximum
    against high - low."""

    def __init__(self, w_int: np.ndarray, lower: np.ndarray, upper: np.ndarray):
        rows = len(w_int)
        base, high_digit, low_part = _high_digit(w_int)
        slack = np.abs(low_part).sum(axis=0)
        self.table = np.concatenate([high_digit, -high_digit]).astype(np.int8)
        far = 2**62  # beyond every current (|I| <= reach < 2**53, `check_exact`): no overflow below
        upper, lower = np.clip(upper, -far, far), np.clip(lower, -far, far)
        self.high = np.floor_divide(upper - slack, base)
        self.low = np.floor_divide(lower + slack + base - 1, base)
        self.limits = kernels.walk_limits(self.low, self.high, int(np.abs(high_digit).max(initial=0)), rows)


class _PathChoice:
    """Which of `may_leave`'s two proofs for a mixed-sign drive runs next: the band test (int8
    or float32 products, then scans of the pairs it fails: cheap where the currents stay far
    inside the limits, as a DNN's do) or the walk (~R C additions a window whatever the
    currents: cheaper where they often come near the limits, as uniform full-range weights'
    do). Whichever took less time per window lately (moving averages of each), and the other
    on every _PROBE_EVERY-th call so its figure follows the drive. The band test runs until it
    has a figure; the walk then too, unless a walk of the same shape (rows, columns tested)
    has been timed in this process (`_WALK_COSTS`: its cost hardly depends on the drive), whose
    figure stands in for it: a DNN's layers, and each new read state of one, then never try a
    walk that is slower for them. A path's first _WARM_CALLS calls are not timed (their caches
    are cold and their lazy operands built: a walk's first calls took twice its later ones).
    Both list every pair that leaves, with the same exact sums: the counts never depend on the
    choice. The two threads of a large batch share one (races only blur the figures)."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self.cost: list[float | None] = [None, None]  # seconds per window: band test, walk
        self.untimed = [_WARM_CALLS, _WARM_CALLS]
        self.calls = 0

    def walk_next(self) -> bool:
        band, walk = self.cost
        if band is None:
            return False
        if walk is None and (walk := _WALK_COSTS.get(self.shape)) is None:
            return True
        self.calls += 1
        return (walk < band) != (self.calls % _PROBE_EVERY == 0)

    def took(self, walk: bool, windows: int, seconds: float) -> None:
        if self.untimed[walk] > 0:
            self.untimed[walk] -= 1
            return
        per_window = seconds / max(windows, 1)
        last = self.cost[walk]
        self.cost[walk] = per_window if last is None else last + _COST_WEIGHT * (per_window - last)
        if walk:
            _WALK_COSTS[self.shape] = self.cost[walk]


#: The walk's latest cost per window (`_PathChoice`) by shape (rows, columns tested).
_WALK_COSTS: dict[tuple[int, int], float] = {}


class _Int8Bounds:
    """`CurrentBounds`'s band and sign-definite tests on exact integers (`int_gemm`): A_g and C_0
    are exact products with W's digits, so they are compared with the limits themselves, no
    rounding margin. T_g is an upper bound: 2**q times the product of the group indicator with
    ceil(|W| / 2**q), one int8 digit (q the smallest shift that makes it fit; at most 2**q - 1
    above |W| per row), for every group (a product costs less than the dense T_0's float sum);
    the compiled test bounds a dense drive's T_0 by the column's sum of that digit less the
    other groups' (`kernels.band_worst`, in int32), so its T product has bands - 1 blocks of
    rows instead of bands. Values in int32 where every |A_g - M| + T_g fits
    (8 (reach + 1) < 2**31), else int64.

    The compiled test (`failures`) takes A_g from one digit: W = base H + L with H = W / base
    rounded, base = ceil(max |W| / 127) (|H| <= 127, |L| <= base / 2; base 1 and L = 0 where
    |W| <= 127). Then A_g = base (x_g H) + x_g L, x_g H one exact int8 product, and
    |x_g L| <= max_i |L_ij| sum_i |x_g,i|, so the test takes the worst A_g of that interval:
    still a proof, for one product instead of one per digit of W (two at HERMES's conductance
    resolution). Measured at 256 x 256 with the twin benchmark's uniform weights and inputs: 6
    bands fail 1.36 % of the pairs (exact A_g: 0.97 %; 5 exact bands 1.68 %), ~14.4 products
    per 1,000 windows with the charge's instead of ~17.3; with the dense T_0 (these inputs are
    dense), 1.43 % for ~13.4 products."""

    def __init__(self, bounds: CurrentBounds, torch):
        w, cols = bounds.w, bounds.cols
        w_int = w.w_int if bounds.all_cols else w.w_int[:, cols]
        self.a = int_gemm.Int8Matrix(torch, w_int)
        magnitude = np.abs(w_int)
        largest, self.shift = int(magnitude.max(initial=0)), 0
        while -(-largest >> self.shift) > 127:  # ceil(|W| / 2**q) must fit int8
            self.shift += 1
        ceiling = -(-magnitude >> self.shift)
        # a column of ones after them: the products' column `cols` counts each group's rows;
        # zero columns pad the width to a multiple of 16 (torch's int8 GEMM takes 1.5-2x as
        # long for 257 columns as for 256 or 272, measured)
        counted = np.zeros((len(ceiling), -(-(ceiling.shape[1] + 1) // 16) * 16), dtype=np.int64)
        counted[:, :ceiling.shape[1]] = ceiling
        counted[:, ceiling.shape[1]] = 1
        self.t = int_gemm.Int8Matrix(torch, counted)
        ceiling_sum = ceiling.sum(axis=0)
        reach = ceiling_sum << self.shift
        self.t_reach = ceiling_sum.astype(np.int32)  # a dense drive's T_0 bound (`failures`)
        # the limits clamped to [-reach - 1, reach + 1] (|I_c| <= reach): the same outcomes, and
        # limits beyond the range on the wrong side (high < -reach) still fail every pair
        exact_reach = w.reach[cols]
        high = np.clip(bounds.upper[cols], -exact_reach - 1, exact_reach)
        low = np.clip(bounds.lower[cols], -exact_reach, exact_reach + 1)
        wide = 8 * (int(reach.max(initial=0)) + 1) >= 2**31
        self.dtype = np.int64 if wide else np.int32
        self.mid, self.half = (high + low).astype(self.dtype), (high - low).astype(self.dtype)
        self.start_limit = {1: bounds.upper[cols],
                            -1: -np.maximum(bounds.lower[cols], -np.iinfo(np.int64).max)}
        # the compiled test's one-digit A_g (`failures`): W = base H + L, H = W / base rounded
        # (|H| <= 127), |L| <= base / 2; per column max |L| and L (cols, rows) for the scan starts
        self.base, high_digit, low_part = _high_digit(w_int)
        self.a_high = int_gemm.Int8Matrix(torch, high_digit)
        low_max = np.abs(low_part).max(axis=0, initial=0)
        # the compiled bound |base a - M| + (t << shift) + max|L| |x_g|_1 in int32: every term
        # and sum below 2**31 (|x_g|_1 <= 2 rows, |a| <= 127 |x_g|_1, t <= 127 rows)
        rows = w.rows
        largest = (self.base * 254 * rows + int(np.abs(self.mid).max(initial=0))
                   + (127 * rows << self.shift) + 2 * rows * int(low_max.max(initial=0)))
        self.int32_test = not wide and largest < 2**31
        self.low_max = low_max.astype(np.int32 if self.int32_test else np.int64)
        # L transposed, in the narrowest type that holds it (|L| <= base / 2): the failed pairs'
        # sums read a column's row of it each, at random, so its size decides their cache misses
        low_type = np.int8 if self.base < 256 else np.int32 if self.int32_test else np.int64
        self.low_t = np.ascontiguousarray(low_part.T, dtype=low_type)

    def bands(self, d: np.ndarray, s: np.ndarray, bands: int, n_window_cycles: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `CurrentBounds._float32_bands` for the drive (d, s) with every T_g a product
        (first = 0): A_g exact, T_g bounds, and the group sizes. The left operands come from
        the indicators [d > e_g] by int8 arithmetic (half the time of `_band_tables` lookups)."""
        edges = _band_edges(bands, n_window_cycles)
        windows, rows = d.shape
        cols = len(self.mid)
        conducts = np.zeros((bands + 1, windows, rows), dtype=np.bool_)  # [d > e_g], e_bands = n: none
        for g in range(bands):
            np.greater(d, edges[g], out=conducts[g])
        on = conducts.view(np.int8)
        left = np.empty((2 * bands, windows, rows), dtype=np.int8)
        np.add(on[:-1], on[1:], out=left[:bands])  # A_g: s ([d > e_g] + [d > e_g+1])
        left[:bands] *= s
        np.subtract(on[:-1], on[1:], out=left[bands:])  # T_g: [e_g < d <= e_g+1]
        a = self.a.product(left[:bands].reshape(bands * windows, rows), self.dtype)
        part = self.t.product(left[bands:].reshape(bands * windows, rows), np.int32)  # one digit
        t = np.left_shift(part[:, :cols], self.shift, dtype=self.dtype)
        counts = part[:, cols].reshape(bands, windows)
        return a.reshape(bands, windows, cols), t.reshape(bands, windows, cols), counts

    def failures(self, d: np.ndarray, s: np.ndarray, bands: int, n_window_cycles: int, compiled,
                 dense: bool = False) -> _FailedPairs:
        """`CurrentBounds._band_test` on the drive (d, s) with its elementwise steps compiled
        (`kernels`): the left operands built, then A_g's one-digit products (class doc) and
        T_g's tested (`band_worst`), the failed pairs listed with their scan starts
        (`band_failures`: C_g_hi+1's one-digit part) and made exact (`low_sums`: the rest,
        summed over the pair's rows), instead of some 30 numpy passes over (bands, windows,
        cols) arrays. Separate kernels, not one: LLVM compiles each loop slower in one function
        with the others (measured; see each)."""
        edges = _band_edges_to_end(bands, n_window_cycles)
        windows, rows = d.shape
        first = 1 if dense else 0  # T_0 from the column sums (`kernels.band_worst`): one product fewer
        left = np.empty((2 * bands - first, windows, rows), dtype=np.int8)
        compiled.band_operands(d, s, edges, left)
        a = self.a_high.product(left[:bands].reshape(bands * windows, rows), np.int32)  # one digit
        part = self.t.product(left[bands:].reshape((bands - first) * windows, rows), np.int32)  # one digit
        sizes = part[:, len(self.mid)].reshape(bands - first, windows)
        worst = np.empty((windows, len(self.mid)), dtype=np.int32)
        compiled.band_worst(a, part, sizes, np.int32(self.shift), self.mid, np.int32(self.base), self.low_max,
                            self.t_reach, np.int32(rows), worst)
        window, column, *start = compiled.band_failures(worst, a, part, sizes, self.shift, self.mid,
                                                        self.half, self.base, self.low_max, self.t_reach,
                                                        rows, edges)
        compiled.low_sums(d, s, self.low_t, window, column, start[3], start[0])  # value: C_g_hi+1 exact
        return _FailedPairs(window, column, tuple(start))


def _scan_start(a: np.ndarray, y: np.ndarray, above: np.ndarray, flat: np.ndarray, half: np.ndarray,
                edges: np.ndarray) -> tuple[np.ndarray, ...]:
    """(value, first, last, top, bottom) of the failed pairs (flat indices window * cols +
    column), from `_band_test`'s per-band values y (bands, B, cols), A_g (exact integers),
    above (bands + 1, B), the number of rows with d > e_g, and the band edges (e_bands = n):
    the scan covers the cycles of the pair's failed bands g_lo .. g_hi (and of any proven band
    between them), the prefixes of the rows sorted by decreasing duration from the first =
    above[g_hi + 1] rows, those with d > top = e_g_hi+1, whose sum is the current C_g_hi+1
    (value: C_bands = 0, C_g = A_g - C_g+1, exact in float64), to last = above[g_lo], those
    with d > bottom = e_g_lo. `_prefix_scan` takes the positions (value, first, last), the
    compiled scan (`kernels.scan_pairs`) the durations (value, top, bottom)."""
    bands, _, cols = a.shape
    window, column = np.divmod(flat, cols)
    failed = np.take(y.reshape(bands, -1), flat, axis=1) > np.take(half, column)  # (bands, pairs)
    g_lo = np.argmax(failed, axis=0)
    g_hi = bands - 1 - np.argmax(failed[::-1], axis=0)
    currents = np.zeros((bands + 1, len(flat)))  # C_g of the pairs, C_bands = 0
    currents[:bands] = np.take(a.reshape(bands, -1), flat, axis=1)  # A_g
    for g in range(bands - 1, -1, -1):
        currents[g] -= currents[g + 1]
    pair = np.arange(len(flat))
    return (currents[g_hi + 1, pair], above[g_hi + 1, window], above[g_lo, window], edges[g_hi + 1],
            edges[g_lo])


@dataclass(frozen=True)
class _FailedPairs:
    """The (window, column) pairs a band test failed and, if it has them, their scan starts
    (value, first, last, top, bottom) (`_scan_start`)."""

    window: np.ndarray
    column: np.ndarray
    start: tuple[np.ndarray, ...] | None

    @staticmethod
    def joined(parts: list[_FailedPairs]) -> _FailedPairs:
        if len(parts) == 1:
            return parts[0]
        starts = [part.start for part in parts]
        start = None if starts[0] is None else tuple(np.concatenate(x) for x in zip(*starts, strict=True))
        return _FailedPairs(np.concatenate([part.window for part in parts]),
                            np.concatenate([part.column for part in parts]), start)


_NO_PAIRS = (np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp))


def _full_scan(pairs: int, rows: int, longest: int) -> tuple[np.ndarray, ...]:
    """The scan start (value, first, last, top, bottom) that covers every cycle (`_scan_start`;
    longest: the longest duration)."""
    zeros = np.zeros(pairs, dtype=np.int64)
    return zeros, zeros, np.full(pairs, rows, dtype=np.int64), np.full(pairs, longest, dtype=np.int64), zeros


def terms_sign(w: SelectedConductance, d: np.ndarray, s: np.ndarray) -> int:
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


def _band_count(w: SelectedConductance, cols: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> int:
    """The first band count of the band test (`CurrentBounds._adapt_bands` moves it):
    _BANDS_PER_REACH times the mean over the columns of reach_j over the half-width
    (upper_j - lower_j) / 2 of the limits, rounded up, within [2, _MAX_BANDS].

    For durations spread over the window, a band's T_g is about reach / bands, and the band
    bound passes a pair only if T_g / 2 plus its current stays within the limits: these bands
    leave the current well over half the range (the twin benchmark's full-range uniform
    weights: ratio 4.0, 5 bands; `pcmhil bench model`'s weights: ratio 1.9, 3 bands, which
    adapt to 2).
    """
    half_width = np.maximum((upper[cols] - lower[cols].astype(np.float64)) / 2, 1)
    ratio = float(np.mean(w.reach[cols] / half_width))
    return min(max(math.ceil(_BANDS_PER_REACH * ratio), 2), _MAX_BANDS)


@cache
def _band_edges(bands: int, n_window_cycles: int) -> np.ndarray:
    """The first cycles e_g = floor(n (1 - (1 - g / bands)**_BAND_EDGE_POWER)) of the bands of
    `_band_test` (e_0 = 0; read-only, shared). A column's current spreads with the number of
    rows that conduct, most at the start of a window whose durations spread over it: earlier
    bands are shorter (T_g smaller where C_g is larger). Measured on the twin benchmark's
    uniform weights and inputs: 5 bands leave 4,200 of 256,000 (window, column) pairs to the
    exact scan with these edges, 8,000 with equal bands."""
    edges = np.floor(n_window_cycles * (1 - (1 - np.arange(bands) / bands) ** _BAND_EDGE_POWER))
    edges = edges.astype(np.int64)
    edges.flags.writeable = False
    return edges


@cache
def _band_edges_to_end(bands: int, n_window_cycles: int) -> np.ndarray:
    """`_band_edges` and e_bands = n (read-only, shared)."""
    edges = np.append(_band_edges(bands, n_window_cycles), n_window_cycles)
    edges.flags.writeable = False
    return edges


@cache
def _band_tables(bands: int, n_window_cycles: int) -> tuple[np.ndarray, np.ndarray]:
    """The left operands of `_band_test` per signed duration v = d s (index v + n, float32
    (bands, 2 n + 1), read-only, shared): A_g's s ([d > e_g] + [d > e_g+1]) and T_g's group
    indicator [e_g < d <= e_g+1] (e_bands = n)."""
    edges = _band_edges_to_end(bands, n_window_cycles)
    v = np.arange(-n_window_cycles, n_window_cycles + 1)
    on = np.abs(v) > edges[:, None]  # (bands + 1, 2 n + 1): row conducts at the band's start
    table_a = (np.sign(v) * (on[:-1].astype(np.int64) + on[1:])).astype(np.float32)
    table_t = (on[:-1] & ~on[1:]).astype(np.float32)
    for table in (table_a, table_t):
        table.flags.writeable = False
    return table_a, table_t


def _prefix_scan(w: SelectedConductance, d: np.ndarray, s: np.ndarray, window: np.ndarray,
                 column: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                 start: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 block: int = _SCAN_BLOCK[False]) -> np.ndarray:
    """(pairs,) bool: True where the current of the pair is proven within the limits in every
    cycle (start None) or in the cycles `start` gives (see below), by exact integer arithmetic.

    With a window's conducting rows sorted by decreasing duration (`rows_by_duration`), the
    rows conducting in cycle c are a prefix of that order, so every current I_c[j] is a prefix
    sum of the terms s_i W[i, j] in it, and 0 (the idle current) is always inside. The scan
    tests every prefix sum, one sorted position at a time over all pairs at once (a few
    operations on arrays as long as the pair list: the cost is O(rows) per pair, without a
    matmul's waste on the columns that passed). The prefix sums inside a run of equal
    durations are the current of no cycle: a pair they take outside is listed in vain.
    Integers throughout: int32 where every prefix sum, bounded by reach, fits, else int64.

    start = (value, first, last) per pair: the prefix sums of first .. last rows, from value,
    the sum of the first `first` rows (an exact integer); last may exceed the window's
    conducting rows (the rest add 0); e.g. the bands a band test failed (`_scan_start`).
    None: every prefix, from 0. Pairs are taken in order of decreasing length, so each step
    works on the prefix of them still going.
    """
    windows, pair_window = np.unique(window, return_inverse=True)
    signed, _ = rows_by_duration(d[windows], s[windows], durations=False)
    positions = signed.shape[1]
    start = _full_scan(len(window), w.rows, int(d.max(initial=0)))[:3] if start is None else start
    value = start[0].astype(w.scan_terms.dtype)  # exact integers (`exact32`)
    first = np.minimum(start[1], positions)
    length = np.minimum(start[2], positions) - first
    # `block` positions of padding (the term index of no row, whose term is 0): a pair's last
    # block may run past its window's rows without reaching the next window's
    padded = np.full((len(signed), positions + block), 2 * w.rows, dtype=signed.dtype)
    padded[:, :positions] = signed
    terms = w.scan_terms
    order = np.argsort(-length, kind="stable")
    at_row = pair_window[order] * (positions + block) + first[order]  # flat position of the next row
    at_column = column[order] * (2 * w.rows + 1)
    going = np.searchsorted(-length[order], -np.arange(length.max(initial=0)))  # length > step
    current = value[order]
    highest, lowest = current.copy(), current.copy()
    flat = padded.ravel()
    for k in range(0, len(going), block):  # a block of positions at once: fewer numpy calls
        m = going[k]  # the first m pairs still go (the others' later sums are currents, too)
        index = np.take(flat, np.add.outer(np.arange(k, k + block, dtype=np.intp), at_row[:m]))
        sums = np.take(terms, np.add(index, at_column[:m]), mode="clip")  # "clip": np.take's unbuffered path
        for row in range(1, len(sums)):  # 5x faster than np.cumsum along this axis
            np.add(sums[row], sums[row - 1], out=sums[row])
        sums += current[:m]
        np.maximum(highest[:m], sums.max(axis=0), out=highest[:m])
        np.minimum(lowest[:m], sums.min(axis=0), out=lowest[:m])
        current[:m] = sums[-1]
    highest[order], lowest[order] = highest.copy(), lowest.copy()
    return (highest <= upper[column]) & (lowest >= lower[column])


def rows_by_duration(d: np.ndarray, s: np.ndarray, durations: bool = True
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """The conducting rows of each window by decreasing duration, as (signed, d_sorted), both
    (B, most conducting rows of a window): signed (int16 up to 16,383 rows) indexes the row's
    term s_i W[i, j] in `signed_terms` (2 rows where a window has no row left, d_sorted 0;
    d_sorted None without `durations`). Rows of equal duration come in signed-index order (the
    positive polarity's rows first, each polarity's in row order); every user sums over whole
    runs of equal durations, so their order within a run changes no result.

    One sort of (longest - d) << b | signed per row: numpy sorts 32-bit integers with SIMD
    (x86-simd-sort), twice as fast as the stable radix argsort of the keys alone, and the
    values carry their rows, which saves argsort's gathers (measured at 990 x 256: 0.27 vs
    0.50 ms for the sort)."""
    rows = d.shape[1]
    longest = int(d.max(initial=0))
    conducting = int(np.count_nonzero(d, axis=1).max(initial=0))
    shift = (2 * rows).bit_length()  # bits of a signed index (0 .. 2 rows)
    wide = longest.bit_length() + shift > 32
    packed_type = np.uint64 if wide else np.uint32
    # each (window, row)'s term index, in one of the narrowest dtype's few passes
    index_type = np.int16 if 2 * rows < 2**15 else np.intp
    signed = np.multiply(s < 0, rows, dtype=index_type)
    signed += np.arange(rows, dtype=index_type)
    np.copyto(signed, 2 * rows, where=d == 0)
    packed = np.subtract(longest, d, dtype=packed_type, casting="unsafe")  # 0 <= d <= longest
    packed <<= packed_type(shift)
    packed |= signed.astype(packed_type)
    packed.sort(axis=1)
    packed = packed[:, :conducting]
    order = (packed & packed_type(2**shift - 1)).astype(index_type)
    if not durations:
        return order, None
    return order, np.subtract(longest, packed >> packed_type(shift), dtype=d.dtype, casting="unsafe")


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
    """float32 (len(cols),) M and H of `_band_test`: M = upper + lower and H = upper - lower of
    the limits clamped to [-reach, reach], H moved inwards by the test's margin."""
    reach = w.reach[cols].astype(np.float64)
    high, low = np.minimum(upper[cols], reach), np.maximum(lower[cols], -reach)
    margin = (8 * w.rows + 32) * FLOAT32_UNIT * (reach + 1.0)
    return (high + low).astype(np.float32), _float32_below(high - low - margin)


def _float32_below(x: np.ndarray) -> np.ndarray:
    """The largest float32 <= x (float64) elementwise."""
    y = x.astype(np.float32)
    return np.where(y > x, np.nextafter(y, np.float32(-np.inf)), y)


def _float32_above(x: np.ndarray) -> np.ndarray:
    """The smallest float32 >= x (float64) elementwise."""
    return -_float32_below(-x)
