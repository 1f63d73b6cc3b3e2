"""model/kernels.py: the window path's per-pair loops compiled with numba.

The counts never depend on the path (tests/test_model_cco.py runs the window tests on numpy's
path, the int8 GEMM and the compiled kernels, `window_path`); here each kernel against numpy's
version or the per-cycle contract on random drives, their check at load, the switch and when
they load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from pcmhil.model import drive, int_gemm, kernels
from pcmhil.model.cco import CcoTransfer
from pcmhil.model.drive import SelectedConductance, check_drive
from pcmhil.model.keyed_rng import KeyedRng
from pcmhil.model.presets import PRESETS, CcoPreset


@pytest.fixture(scope="module")
def compiled():
    assert kernels.warm_up(), "numba is a dependency (pyproject.toml): the compiled kernels must load"
    return kernels.module()


def _drive(rng, windows: int, rows: int, longest: int, ties: bool):
    """Durations (windows, rows) in [0, longest], with many ties or all distinct, and signs."""
    if ties:
        d = rng.integers(0, min(longest, 9) + 1, (windows, rows)) * max(longest // 9, 1)
    else:
        d = np.array([rng.permutation(longest + 1)[:rows] for _ in range(windows)])
    s = rng.choice([-1, 1], (windows, rows))
    return check_drive(d, s, rows, longest, batched=True)


#: scan_pairs' totals not wanted (window length, offset, gain, fmax, an empty output)
_NO_TOTALS = (0, np.zeros(0, np.int64), np.zeros(0, np.int64), 0, np.zeros(0, np.int64))


def _range_sums(w_int, d, s, b, j, top, bottom):
    """The current of the rows with d > top, then the prefix sums as the rows with
    bottom < d <= top join by decreasing duration (window b, column j; distinct durations)."""
    start = int((s[b] * w_int[:, j])[d[b] > top].sum())
    rows = np.flatnonzero((d[b] > bottom) & (d[b] <= top))
    rows = rows[np.argsort(-d[b, rows], kind="stable")]
    return np.concatenate([[start], start + np.cumsum(s[b, rows] * w_int[rows, j])])


@pytest.mark.parametrize("rows", [1, 7, 64, 300])
def test_scan_flags_exactly_the_pairs_whose_prefix_sums_leave_the_limits(compiled, rows):
    """Distinct durations: every prefix sum is the current of a cycle. Pairs in random order
    (a window's rows sorted again where the window changes; runs of pairs of one window share
    a sort) with random duration ranges (bottom, top], from the exact sum of the rows with
    durations above the range; some ranges reach past the longest duration, some are empty."""
    rng = np.random.default_rng(rows)
    cols, windows = 11, 30
    w_int = rng.integers(-1000, 1001, (rows, cols))
    d, s = _drive(rng, windows, rows, rows + 3, ties=False)
    pairs = 400
    window, column = rng.integers(0, windows, pairs), rng.integers(0, cols, pairs)
    window[:100] = np.sort(window[:100])  # runs of one window's pairs
    top, bottom = rng.integers(0, rows + 6, pairs), rng.integers(0, rows + 6, pairs)
    top, bottom = np.maximum(top, bottom), np.minimum(top, bottom)
    reach = np.abs(w_int).sum(axis=0)
    lower, upper = -rng.integers(0, reach + 1), rng.integers(0, reach + 1)
    value, expected = np.empty(pairs, np.int64), np.empty(pairs, bool)
    for p in range(pairs):
        sums = _range_sums(w_int, d, s, window[p], column[p], top[p], bottom[p])
        value[p] = sums[0]
        expected[p] = (sums < lower[column[p]]).any() or (sums > upper[column[p]]).any()
    out = np.empty(pairs, np.bool_)
    terms = SelectedConductance.of(w_int).terms.reshape(cols, -1)
    compiled.scan_pairs(terms, d, s, window, column, value, top, bottom, lower, upper, out, *_NO_TOTALS)
    assert np.array_equal(out, expected)
    assert 0 < expected.sum() < pairs  # both outcomes were tested


def test_scan_of_long_durations_merge_sorts_the_rows_in_range(compiled):
    """Duration ranges longer than the counting sort's table: the same verdicts by a merge sort."""
    rng = np.random.default_rng(3)
    rows, cols, windows, longest = 40, 6, 5, 3 * kernels._COUNTING_SORT_MAX
    w_int = rng.integers(-1000, 1001, (rows, cols))
    d, s = _drive(rng, windows, rows, longest, ties=False)
    window, column = np.divmod(np.arange(windows * cols), cols)
    top, bottom = np.full(len(window), longest), np.zeros(len(window), np.int64)
    top[::2] = rng.integers(longest // 2, longest, len(top[::2]))
    bottom[1::3] = rng.integers(0, longest // 3, len(bottom[1::3]))
    limit = np.full(cols, 2000)
    value, expected = np.empty(len(window), np.int64), np.empty(len(window), bool)
    for p in range(len(window)):
        sums = _range_sums(w_int, d, s, window[p], column[p], top[p], bottom[p])
        value[p], expected[p] = sums[0], (np.abs(sums) > 2000).any()
    out = np.empty(len(window), np.bool_)
    terms = SelectedConductance.of(w_int).terms.reshape(cols, -1)
    compiled.scan_pairs(terms, d, s, window, column, value, top, bottom, -limit, limit, out, *_NO_TOTALS)
    assert np.array_equal(out, expected)
    assert 0 < expected.sum() < len(window)


def _cycle_currents(w_int, d, s, n):
    """I_c (windows, n, cols) by the contract: the rows with d > c, one matrix product per cycle."""
    return np.stack([((d > c) * s) @ w_int for c in range(n)], axis=1)


def test_scan_with_ties_never_misses_a_cycle_outside(compiled):
    """Runs of equal durations: the prefix sums inside a run are no cycle's current, so the
    scan may flag a pair in vain, but never misses one whose current leaves."""
    rng = np.random.default_rng(5)
    rows, cols, windows, n = 50, 13, 40, 40
    w_int = rng.integers(-500, 501, (rows, cols))
    d, s = _drive(rng, windows, rows, n, ties=True)
    currents = _cycle_currents(w_int, d, s, n)
    limit = np.percentile(np.abs(currents).max(axis=1), 50, axis=0).astype(np.int64)
    window, column = np.divmod(np.arange(windows * cols), cols)
    out = np.empty(len(window), np.bool_)
    pairs = len(window)
    start = (np.zeros(pairs, np.int64), np.full(pairs, n, np.int64), np.zeros(pairs, np.int64))
    terms = SelectedConductance.of(w_int).terms.reshape(cols, -1)
    compiled.scan_pairs(terms, d, s, window, column, *start, -limit, limit, out, *_NO_TOTALS)
    truth = (np.abs(currents) > limit).any(axis=1).ravel()
    assert truth.any() and (out | ~truth).all()


@pytest.mark.parametrize("case", ["ties", "distinct", "long durations"])
def test_scan_totals_are_the_exact_sums_where_only_the_range_can_clip(compiled, case):
    """A flagged pair's total from its range alone (the rows with bottom < d <= top, from the
    current of the rows above it) equals the sum of the saturated rate over every cycle, when
    the currents of the cycles outside [bottom, top) stay within the limits: ranges around the
    cycles whose currents leave them, with ties and distinct durations, empty ranges too;
    'long durations' sorts by merge sort (ranges over _COUNTING_SORT_MAX)."""
    rng = np.random.default_rng(len(case))
    ties = case == "ties"
    rows, cols, windows, n = 40, 9, 30, 50
    if case == "long durations":
        windows, n = 6, 3 * kernels._COUNTING_SORT_MAX + 5
    w_int = rng.integers(-300, 301, (rows, cols))
    d, s = _drive(rng, windows, rows, n, ties=ties)
    currents = _cycle_currents(w_int, d, s, n)  # (windows, n, cols)
    # CCOs whose current limits (`CcoTransfer.current_limits`) lie inside about 40 % of the pairs' ranges
    limit = np.percentile(np.abs(currents).max(axis=1), 60, axis=0).astype(np.int64)
    gain = rng.integers(1, 4, cols)
    offset, fmax = gain * limit, int(2 * (gain * limit).max())
    lower, upper = -(offset // gain), (fmax - offset) // gain
    outside = (currents < lower) | (currents > upper)  # (windows, n, cols)
    window, column = np.divmod(np.arange(windows * cols), cols)
    # each pair's range: the cycles from its first to its last outside (none: an empty range)
    out_any = outside[window, :, column]  # (pairs, n)
    first_out = np.where(out_any.any(axis=1), np.argmax(out_any, axis=1), 0)
    last_out = np.where(out_any.any(axis=1), n - 1 - np.argmax(out_any[:, ::-1], axis=1), -1)
    bottom = np.maximum(first_out - rng.integers(0, 3, len(window)), 0)
    top = np.minimum(np.maximum(last_out + 1 + rng.integers(0, 3, len(window)), bottom), n)
    value = ((d[window] > top[:, None]) * s[window] * w_int[:, column].T).sum(axis=1)
    out, totals = np.empty(len(window), np.bool_), np.full(len(window), -1, np.int64)
    terms = SelectedConductance.of(w_int).terms.reshape(cols, -1)
    compiled.scan_pairs(terms, d, s, window, column, value, top, bottom, lower, upper, out, n, offset, gain,
                        fmax, totals)
    exact = np.clip(offset + gain * currents, 0, fmax).sum(axis=1).ravel()  # (windows * cols,)
    assert out_any.any(axis=1).sum() > 10 and (out | ~out_any.any(axis=1)).all()
    if case == "long durations":
        assert (top - bottom)[out].max() > kernels._COUNTING_SORT_MAX
    assert np.array_equal(totals[out], exact[out])
    assert (totals[~out] == -1).all()  # only flagged pairs are summed


@pytest.mark.parametrize("case", ["ties", "distinct", "long durations"])
def test_exact_sums_equal_numpy_and_the_contract(compiled, monkeypatch, case):
    """The compiled exact sums against `CcoTransfer.exact_advance` on numpy's path and the
    per-cycle contract; 'long durations' sorts by merge sort (over _COUNTING_SORT_MAX)."""
    rng = np.random.default_rng(len(case))
    rows, cols, windows = 37, 9, 25
    n = 5000 if case == "long durations" else 60
    w_int = rng.integers(-300, 301, (rows, cols))
    d, s = _drive(rng, windows, rows, n if case != "distinct" else 50, ties=case != "distinct")
    transfer = CcoTransfer(gain=rng.integers(1, 2**20, cols), offset=rng.integers(0, 2**24, cols),
                           fmax=2**26, knee=0.0, output_noise_pulses=0.0)
    window, column = rng.integers(0, windows, 300), rng.integers(0, cols, 300)
    got = transfer.exact_advance(w_int, d, s, n, window, column)
    monkeypatch.setattr(kernels, "module", lambda: None)
    assert np.array_equal(got, transfer.exact_advance(w_int, d, s, n, window, column))
    if n <= 60:
        currents = _cycle_currents(w_int, d, s, n)[window, :, column]  # (pairs, n)
        rate = transfer.offset[column, None] + transfer.gain[column, None] * currents
        rate = np.clip(rate, 0, transfer.fmax)
        assert np.array_equal(got, rate.sum(axis=1))
        assert (rate == 0).any() and (rate == transfer.fmax).any()  # both clips were taken


@pytest.mark.parametrize("case", ["ties", "distinct", "long durations"])
@pytest.mark.parametrize("rows", [1, 37, 300])
def test_exact_windows_equal_the_exact_pairs_and_the_contract(compiled, case, rows):
    """Every pair of every window summed at once (`exact_windows`) against the per-pair sums
    (`exact_pairs`, pinned to the contract above) and, for short windows, the per-cycle
    contract: both polarities, idle windows and rows, and both clips taken."""
    rng = np.random.default_rng(rows + len(case))
    cols, windows = 11, 6
    n = 5000 if case == "long durations" else max(60, rows)
    w_int = rng.integers(-300, 301, (rows, cols))
    d, s = _drive(rng, windows, rows, n, ties=case != "distinct")
    d[0] = 0  # a window that drives no row: the offset for all n cycles
    transfer = CcoTransfer(gain=rng.integers(1, 2**20, cols), offset=rng.integers(0, 2**24, cols),
                           fmax=2**26, knee=0.0, output_noise_pulses=0.0)
    got = np.empty((windows, cols), np.int64)
    compiled.exact_windows(w_int, d, s, n, transfer.offset, transfer.gain, transfer.fmax, got)
    window, column = np.repeat(np.arange(windows), cols), np.tile(np.arange(cols), windows)
    pairs = np.empty(len(window), np.int64)
    compiled.exact_pairs(SelectedConductance.of(w_int).terms.reshape(cols, -1), d, s, window, column, n,
                         transfer.offset, transfer.gain, transfer.fmax, pairs)
    assert np.array_equal(got.ravel(), pairs)
    assert np.array_equal(got[0], n * transfer.offset)
    if n <= 300:
        currents = _cycle_currents(w_int, d, s, n)  # (windows, n, cols)
        rate = np.clip(transfer.offset + transfer.gain * currents, 0, transfer.fmax)
        assert np.array_equal(got, rate.sum(axis=1))
        if rows > 1:
            assert (rate == 0).any() and (rate == transfer.fmax).any()  # both clips were taken


def test_a_few_windows_are_summed_exactly_and_many_take_the_band_test(compiled, monkeypatch):
    """At the default thresholds, calls of up to cco._EXACT_ALL_MAX_WINDOWS windows sum every
    pair (`exact_windows`: no band test), larger ones do not; the counts are the same."""
    from pcmhil.model import cco
    from pcmhil.model.crossbar import Crossbar, CrossbarConfig

    rng = np.random.default_rng(8)
    bar = Crossbar(CrossbarConfig(preset="hermes-2dev", rows=64, cols=32, seed=8))
    bar.program_weights(rng.uniform(-1, 1, (64, 32)), op_index=0)
    x = rng.integers(-128, 128, (cco._EXACT_ALL_MAX_WINDOWS + 1, 64))
    calls = []
    spied = SimpleNamespace(**vars(compiled))
    spied.exact_windows = lambda *a: calls.append(len(a[1])) or compiled.exact_windows(*a)
    monkeypatch.setattr(kernels, "module", lambda: spied)
    large = bar.cco.window_counts_batch(np.abs(x), np.where(x < 0, -1, 1), "plus", 128, np.arange(len(x)))
    assert calls == []
    few = bar.cco.window_counts_batch(np.abs(x[:-1]), np.where(x[:-1] < 0, -1, 1), "plus", 128,
                                      np.arange(len(x) - 1))
    assert calls == [len(x) - 1]
    assert np.array_equal(few, large[:-1])


@pytest.mark.parametrize(("w_max", "bands", "density"), [(19_436, 5, 1.0), (100, 2, 0.5), (2**20, 8, 0.9)])
def test_compiled_band_test_is_a_proof(compiled, monkeypatch, w_max, bands, density):
    """The compiled band test (one digit of W and an interval for the rest) fails every pair
    numpy's exact band test fails and every pair whose current leaves the limits in some
    cycle; a pair it fails starts its scan at the exact current C_g_hi+1 of its last failed
    band; for W of one, two and three base-256 digits, sparse and dense drives, few and many
    bands. W within int8 (w_max 100) makes the interval empty: the same pairs as numpy's."""
    if not int_gemm.warm_up():
        pytest.skip("no int8 GEMM path here: torch (the `torch` extra) is not installed, or its kernel "
                    "is not exact on this CPU (model/int_gemm.py)")
    monkeypatch.setattr(int_gemm, "MIN_ROWS", 1)
    rng = np.random.default_rng(bands)
    rows, cols, windows, n = 256, 70, 230, 128
    w_int = rng.integers(-w_max, w_max + 1, (rows, cols))
    w = SelectedConductance.of(w_int)
    x = rng.integers(-128, 128, (windows, rows)) * (rng.random((windows, rows)) < density)
    d, s = check_drive(np.abs(x), np.where(x < 0, -1, 1), rows, n, batched=True)
    half = (w.reach // 4).astype(np.int64)
    lower, upper = -half + rng.integers(-5, 5, cols), half
    bounds = w.bounds(lower, upper)
    bounds.bands = bands
    numpy_path = bounds._band_test(d, s, n, density == 1.0)
    compiled_path = bounds._band_test(d, s, n, density == 1.0, compiled)
    failed = np.zeros((windows, cols), dtype=bool)
    failed[compiled_path.window, compiled_path.column] = True
    assert 0 < len(numpy_path.window) and failed.sum() < windows * cols
    assert failed[numpy_path.window, numpy_path.column].all()
    if w_max <= 127:
        assert failed.sum() == len(numpy_path.window)
    # every cycle's current, exactly: the pairs that leave the limits are all failed
    cycles = np.arange(n)
    currents = np.einsum("bci,ij->bcj", (d[:, None, :] > cycles[:, None]) * s[:, None, :].astype(np.int64),
                         w_int)
    leaves = ((currents < lower) | (currents > upper)).any(axis=1)
    assert failed[leaves].all() and (leaves.any() or density < 1)  # sparse drives: none leave
    # the scan starts, from the bound's formula in numpy: the failed bands g_lo .. g_hi; the
    # exact current C_g_hi+1 and the rows conducting at e_g_hi+1 and e_g_lo
    exact = bounds.int8(windows)
    edges = drive._band_edges_to_end(bands, n)
    on = np.array([d > e for e in edges]).astype(np.int64)  # (bands + 1, windows, rows)
    x_g = (on[:-1] + on[1:]) * s
    high = np.floor_divide(w_int + exact.base // 2, exact.base)
    ceiling = -(-np.abs(w_int) >> exact.shift)
    group_abs = np.einsum("gbi,ij->gbj", on[:-1] - on[1:], ceiling) << exact.shift
    above = on.sum(axis=2)  # (bands + 1, windows)
    if density == 1.0:  # a dense drive: T_0 bounded by the column's sum less the other groups'
        group_abs[0] = (ceiling.sum(axis=0) << exact.shift) - group_abs[1:].sum(axis=0)
        above[0] = rows
    spread = (above[:-1] + above[1:])[..., None]
    y = np.abs(exact.base * (x_g @ high) - exact.mid) + group_abs + exact.low_max * spread
    window, column = compiled_path.window, compiled_path.column
    band_failed = y[:, window, column] > exact.half[column]  # (bands, pairs)
    g_lo = np.argmax(band_failed, axis=0)
    g_hi = bands - 1 - np.argmax(band_failed[::-1], axis=0)
    current_at_edge = np.array([currents[:, e, :] if e < n else np.zeros((windows, cols), np.int64)
                                for e in edges])
    value, first, last, top, bottom = compiled_path.start
    assert band_failed.any(axis=0).all()
    assert np.array_equal(value, current_at_edge[g_hi + 1, window, column])
    assert np.array_equal(first, above[g_hi + 1, window])
    assert np.array_equal(last, above[g_lo, window])
    assert np.array_equal(top, edges[g_hi + 1]) and np.array_equal(bottom, edges[g_lo])


@pytest.mark.parametrize(("w_max", "rows", "density"),
                         [(100, 64, 0.5), (19_436, 256, 1.0), (2**20, 300, 0.9), (2**36 + 5, 40, 1.0)])
def test_walk_flags_every_pair_that_leaves_and_in_vain_only_near_a_limit(compiled, w_max, rows, density):
    """`kernels.walk_extremes` on `drive._Walk`'s operands against every cycle's exact current:
    it flags every pair whose current leaves its limits, and a pair inside only where its
    current comes within twice the rounding slack (sum_i |L_ij|) of a limit; with W within int8
    (base 1, no slack) exactly the pairs that leave. Sums in 16 bits up to 258 rows, 32 above;
    W of one to five base-256 digits; sparse and dense drives (ties, rows that never conduct,
    windows with and without idle cycles); limits 1 LSB inside a column's extremes, limits that
    exclude the idle current 0, no limits (a CCO without gain), limits beyond every current."""
    rng = np.random.default_rng(rows)
    cols, windows, n = 24, 120, 128
    w_int = rng.integers(-w_max, w_max + 1, (rows, cols))
    x = rng.integers(-128, 128, (windows, rows)) * (rng.random((windows, rows)) < density)
    d, s = check_drive(np.abs(x), np.where(x < 0, -1, 1), rows, n, batched=True)
    cycles = np.arange(n)
    currents = np.einsum("bci,ij->bcj", (d[:, None, :] > cycles[:, None]) * s[:, None, :].astype(np.int64),
                         w_int)  # (windows, cycles, cols)
    half = np.abs(currents).max(axis=(0, 1)) * 3 // 4
    lower, upper = -half + rng.integers(-5, 5, cols), half.copy()
    # every other column: limits 1 LSB inside the extremes it reaches (the slack decides there)
    upper[3::2], lower[3::2] = currents.max(axis=(0, 1))[3::2] - 1, currents.min(axis=(0, 1))[3::2] + 1
    lower[0] = 5  # 0 outside: idle cycles leave
    int64 = np.iinfo(np.int64)
    lower[1], upper[1] = int64.min, int64.max
    lower[2], upper[2] = -(2**40), 2**40
    walk = drive._Walk(w_int, lower, upper)
    assert walk.limits[0].dtype == (np.uint16 if rows <= 258 else np.uint32)
    flags = np.empty((windows, cols), dtype=np.bool_)
    compiled.walk_extremes(walk.table, d, s, n, *walk.limits, flags)
    highest, lowest = currents.max(axis=1), currents.min(axis=1)
    leaves = (highest > upper) | (lowest < lower)
    assert leaves[:, 3:].sum() > cols and leaves[:, 0].any() and not (leaves & ~flags).any()
    assert not flags[:, 1:3].any()
    base = max(1, -(-np.abs(w_int).max() // 127))
    slack = np.abs(w_int - base * np.floor_divide(w_int + base // 2, base)).sum(axis=0)
    near = (highest > upper - 2 * slack) | (lowest < lower + 2 * slack)
    assert not (flags & ~leaves & ~near).any()
    if w_max <= 127:
        assert np.array_equal(flags, leaves)
    else:
        assert (flags & ~leaves).sum() < 0.05 * (~leaves).sum()  # the slack flags few in vain


@pytest.mark.parametrize(("rows", "largest"),
                         [(1, 127), (3, 127), (258, 127), (259, 127), (1057, 31), (1057, 32)])
def test_walk_limits_flag_exactly_the_sums_outside_up_to_the_largest_sum(compiled, rows, largest):
    """`kernels.walk_limits`' offset unsigned sums (one maximum instead of a minimum and a
    maximum) flag exactly the windows whose current leaves, for currents up to the largest
    sum, reach = rows x largest, on both sides (258 x 127: uint16; 1,057 x 31 = 32,767, the
    widest sums uint16 holds: 2 reach + 1 = 2**16 - 1; 259 x 127 and 1,057 x 32: uint32),
    limits on and 1 beyond those sums, empty ranges, limits excluding 0, and ranges that let
    the first rows skip the maximum (`quiet`) or not."""
    w = np.full((rows, 1), largest)
    reach = largest * rows
    # windows: every row at once, + or -, or half of them longer than the rest with the other sign
    x = np.array([np.full(rows, 5), np.full(rows, -5), np.where(np.arange(rows) < rows // 2, 7, -3),
                  np.where(np.arange(rows) < rows // 2, -7, 3), np.zeros(rows, np.int64)])
    d, s = check_drive(np.abs(x), np.where(x < 0, -1, 1), rows, 8, batched=True)
    currents = ((d[:, None, :] > np.arange(8)[:, None]) * s[:, None, :].astype(np.int64)) @ w[:, 0]
    table = np.concatenate([w, -w]).astype(np.int8)
    edges = [-(2**40), -reach - 1, -reach, -reach + 1, -largest, -1, 0, 1, largest - 1, largest,
             reach - 1, reach, reach + 1, 2**40]
    limits = np.array([(lo, hi) for lo in edges for hi in edges])
    lower, upper = limits[:, 0], limits[:, 1]
    bias, span, quiet = kernels.walk_limits(lower, upper, largest, rows)
    assert bias.dtype == (np.uint16 if reach <= 32_767 else np.uint32)
    flags = np.empty((len(x), len(limits)), dtype=np.bool_)
    compiled.walk_extremes(np.repeat(table, len(limits), axis=1), d, s, 8, bias, span, quiet, flags)
    leaves = (currents.max(axis=1)[:, None] > upper) | (currents.min(axis=1)[:, None] < lower)
    assert np.array_equal(flags, leaves)
    for inside in (0, largest - 1, largest, 3 * largest, reach + 5):  # every column's limits +-inside
        bias, span, quiet = kernels.walk_limits(np.full(2, -inside), np.full(2, inside), largest, rows)
        assert quiet == min(rows, inside // largest)
        flags = np.empty((len(x), 2), dtype=np.bool_)
        compiled.walk_extremes(np.repeat(table, 2, axis=1), d, s, 8, bias, span, quiet, flags)
        assert np.array_equal(flags[:, 0], (np.abs(currents) > inside).any(axis=1))


@pytest.mark.parametrize("margin", [-1, 0, 1, 2])
@pytest.mark.parametrize(("w", "slack"), [(254, 0), (255, 0), (253, 1)])
def test_walk_thresholds_round_towards_flagging_by_no_more_than_the_slack(compiled, w, slack, margin):
    """The walk's limits in units of base round outwards by no more than they must: one row
    conducting every cycle, W = [w, -w] (254: base 2 and 255: base 3, both exact; 253: base 2,
    rest 1), both signs, limits `margin` beyond the current's |I| = w: flagged exactly where
    the current leaves, and only there once it is twice the slack inside (253: margin 2)."""
    d, s = check_drive(np.full((2, 1), 8), np.array([[1], [-1]]), 1, 8, batched=True)
    walk = drive._Walk(np.array([[w, -w]]), np.full(2, -w - margin), np.full(2, w + margin))
    flags = np.empty((2, 2), dtype=np.bool_)
    compiled.walk_extremes(walk.table, d, s, 8, *walk.limits, flags)
    if margin < 0 or margin >= 2 * slack:
        assert np.array_equal(flags, np.full((2, 2), margin < 0))


@pytest.mark.parametrize("cols", [1, 3, 15, 16, 17, 127, 128, 129, 150, 256, 300, 512])
def test_walk_register_blocks_flag_what_numbas_loop_flags(compiled, cols):
    """`walk_ir`'s blocks (128, 16 and 1 columns wide, `kernels._walk`) against numba's loop
    (`walk_rows`) on the same operands, for column counts that leave every kind of remainder:
    the same flags, for uniform int8 rows, drives of 8-bit durations with ties, windows with no
    row on and with every row on for all cycles, limits that many pairs leave, some that exclude
    the idle current 0, and 0, a few or most rows quiet."""
    assert compiled.walk_blocks is not None, "llvmlite (numba's) must compile the blocks here"
    rng = np.random.default_rng(cols)
    rows, windows, n = 96, 40, 128
    w = rng.integers(-127, 128, (rows, cols))
    table = np.concatenate([w, -w]).astype(np.int8)
    x = rng.integers(-128, 128, (windows, rows))
    x[0], x[1], x[2, ::2] = 0, n, 3
    d, s = check_drive(np.abs(x), np.where(x < 0, -1, 1), rows, n, batched=True)
    reach = rows * 127
    for quiet in (0, 5, rows - 20):
        low, high = -rng.integers(0, reach // 8, cols), rng.integers(0, reach // 8, cols)
        low[1::5] = rng.integers(1, 200, len(low[1::5]))  # 0 outside: cycles with no row on leave
        bias, span, _ = kernels.walk_limits(low, high, 127, rows)
        expect, got = np.empty((windows, cols), np.bool_), np.empty((windows, cols), np.bool_)
        compiled.walk_rows(table, d, s, n, bias, span, quiet, expect)
        compiled.walk_extremes(table, d, s, n, bias, span, quiet, got)
        assert expect.any() and not expect.all()
        assert np.array_equal(got, expect)


def _highest_sums(table, order, durations, counts, quiet, n_window_cycles, bias) -> np.ndarray:
    """`walk_ir`'s contract, window by window in numpy: the unsigned maximum of the wrapping
    16-bit sums bias + table[order[0]] + ... taken after the rows q >= quiet that end a run of
    equal durations, starting from the bias if the window has cycles with no row on, else 0."""
    out = np.empty((len(counts), table.shape[1]), np.uint16)
    for b, count in enumerate(counts):
        idle = n_window_cycles > durations[b, 0]
        highest = bias.astype(np.int64) if idle else np.zeros_like(bias, np.int64)
        sums = (bias.astype(np.int64) + np.cumsum(table[order[b, :count]].astype(np.int64), axis=0)) % 2**16
        ends = [q for q in range(quiet, count) if durations[b, q] != durations[b, q + 1]]
        out[b] = np.maximum(highest, sums[ends].max(axis=0)) if ends else highest
    return out


@pytest.mark.parametrize("cols", [1, 17, 150, 300])
def test_walk_register_blocks_give_each_windows_highest_sums(compiled, cols):
    """The blocks' maxima themselves (not only the flags), against the numpy contract above, for
    sums that wrap (any uint16 bias), runs of equal durations, windows with no row on, with all
    rows on for all cycles and with idle cycles after some, and 0, a few or most rows quiet."""
    rng = np.random.default_rng(cols + 7)
    rows, windows, n = 50, 30, 20
    table = rng.integers(-128, 128, (2 * rows, cols)).astype(np.int8)
    d = rng.integers(0, n + 1, (windows, rows)).astype(np.int16)
    d[0], d[1], d[2] = 0, n, rng.integers(0, 4, rows)
    s = rng.choice(np.array([-1, 1], dtype=np.int8), (windows, rows))
    order, durations = np.empty((windows, rows + 1), np.int64), np.empty((windows, rows + 1), np.int64)
    counts = np.empty(windows, np.int64)
    compiled.sort_windows(d, s, order, durations, counts)
    bias = rng.integers(0, 2**16, cols).astype(np.uint16)
    for quiet in (0, 4, rows - 5):
        got = np.empty((windows, cols), np.uint16)
        compiled.walk_blocks.highest(table, order, durations, counts, quiet, n, bias, got)
        expect = _highest_sums(table, order, durations, counts, quiet, n, bias)
        assert np.array_equal(got, expect)
        assert (expect != bias).any() and (expect == bias).any()


def test_walk_register_blocks_refuse_operands_of_the_wrong_kind(compiled):
    blocks = compiled.walk_blocks
    order = np.zeros((2, 5), np.int64)
    table, counts, bias = np.zeros((8, 16), np.int8), np.zeros(2, np.int64), np.zeros(16, np.uint16)
    blocks.highest(table, order, order.copy(), counts, 0, 4, bias, np.empty((2, 16), np.uint16))
    out = np.empty((2, 16), np.uint16)
    for bad in (dict(table=table.astype(np.int16)), dict(bias=bias[:8]), dict(out=out.astype(np.int32)),
                dict(table=np.zeros((16, 8), np.int8).T)):
        operands = dict(table=table, bias=bias, out=out) | bad
        with pytest.raises(ValueError, match="wrong type, shape or layout"):
            blocks.highest(operands["table"], order, order.copy(), counts, 0, 4, operands["bias"],
                           operands["out"])
    for flat in (order.ravel(), order[:, :, None]):  # order 1-D or 3-D: still C-contiguous
        with pytest.raises(ValueError, match="wrong type, shape or layout"):
            blocks.highest(table, flat, flat.copy(), counts, 0, 4, bias, out)
    with pytest.raises(ValueError, match=r"row counts must lie in \[0, 4\]"):
        blocks.highest(table, order, order.copy(), np.array([0, 5]), 0, 4, bias, out)
    d, s = np.ones((2, 5), np.int16), np.ones((2, 5), np.int8)  # 5 rows: the table must hold 10 terms
    for sums in (np.uint16, np.int64):  # the blocks' operands, numba's loop's
        with pytest.raises(ValueError, match="the table has 8 rows, not the 2 x 5 signed terms"):
            compiled.walk_extremes(table, d, s, 4, bias.astype(sums), bias, 0, np.empty((2, 16), np.bool_))


def test_the_block_walk_switch_keeps_numbas_loop():
    code = "from pcmhil.model import kernels; kernels.warm_up(); print(kernels.module().walk_blocks)"
    assert _in_subprocess(code, PCMHIL_BLOCK_WALK="0") == ["None"]
    assert _in_subprocess(code)[0].startswith("<pcmhil.model.walk_ir.BlockWalk")


@pytest.mark.parametrize("case", ["wide", "large base"])
def test_band_test_beyond_int32_takes_numpys_int8_path(compiled, monkeypatch, case):
    """Where the compiled bound would not fit int32, the compiled path takes numpy's exact int8
    band test: the same failed pairs and scan starts. "wide": W of three base-256 digits on 256
    rows (the products themselves need int64); "large base": a few huge conductances in
    columns of small ones (int32 products, but base max|W| / 127 times A_g does not fit)."""
    if not int_gemm.warm_up():
        pytest.skip("no int8 GEMM path here: torch (the `torch` extra) is not installed, or its kernel "
                    "is not exact on this CPU (model/int_gemm.py)")
    monkeypatch.setattr(int_gemm, "MIN_ROWS", 1)
    rng = np.random.default_rng(7)
    rows, cols, windows, n = 256, 40, 120, 128
    if case == "wide":
        w_int = rng.integers(-2**22, 2**22 + 1, (rows, cols))
    else:
        w_int = rng.integers(-200, 201, (rows, cols))
        w_int[rng.integers(0, rows, cols), np.arange(cols)] = rng.choice([-2**23, 2**23], cols)
    w = SelectedConductance.of(w_int)
    x = rng.integers(-128, 128, (windows, rows))
    d, s = check_drive(np.abs(x), np.where(x < 0, -1, 1), rows, n, batched=True)
    half = (w.reach // 4).astype(np.int64)
    bounds = w.bounds(-half, half)
    bounds.bands = 4
    exact = bounds.int8(windows)
    assert not exact.int32_test and (exact.dtype == np.int64) == (case == "wide")
    numpy_path = bounds._band_test(d, s, n, True)
    compiled_path = bounds._band_test(d, s, n, True, compiled)
    assert len(numpy_path.window) > 0
    assert np.array_equal(compiled_path.window, numpy_path.window)
    assert np.array_equal(compiled_path.column, numpy_path.column)
    for got, expected in zip(compiled_path.start, numpy_path.start, strict=True):
        assert np.array_equal(got, expected)


_CCOS = {"hermes": PRESETS["hermes-2dev"].cco, "ideal": PRESETS["ideal"].cco,
         "linear, noisy": CcoPreset(nonlinearity_beta=0.0, output_noise_pulses=0.3)}


@pytest.mark.parametrize("cco", sorted(_CCOS))
def test_bracketed_counts_equal_numpy(compiled, monkeypatch, cco):
    """counts_after compiled and on numpy's path, with advances spread over the counts and
    bunched just below and above whole pulses (where the bracket stays open)."""
    rng = np.random.default_rng(7)
    cols, windows = 40, 300
    transfer = CcoTransfer.draw(_CCOS[cco], cols, 2.0e6, KeyedRng(3, 0))
    key = KeyedRng(11, 2)
    ops = rng.integers(0, 2**63, windows).astype(np.uint64)
    advance = rng.integers(0, 200 * 2**32, (windows, cols)).astype(np.float64)
    advance[::2] = np.rint(advance[::2] / 2**32) * 2**32 + rng.integers(-2**29, 2**29, (windows // 2, cols))
    got = transfer.counts_after(key, ops, advance)
    monkeypatch.setattr(kernels, "module", lambda: None)
    assert np.array_equal(got, transfer.counts_after(key, ops, advance))


def test_a_kernel_that_disagrees_with_the_contract_is_not_used(compiled):
    broken = SimpleNamespace(**vars(compiled))
    assert kernels._self_check(broken)
    broken.exact_pairs = lambda *args: args[-1].fill(0)
    assert not kernels._self_check(broken)
    broken = SimpleNamespace(**vars(compiled))
    broken.exact_windows = lambda *args: args[-1].fill(0)
    assert not kernels._self_check(broken)
    assert kernels._steps_agree(compiled)
    broken = SimpleNamespace(**vars(compiled))
    broken.cycle_step = lambda *args: args[-1].fill(1) or 0  # a pulse every cycle, whatever the phase
    assert not kernels._steps_agree(broken)

    def raises(*args):
        raise TypeError("no matching definition")

    assert not kernels._self_check(SimpleNamespace(scan_pairs=raises, exact_pairs=compiled.exact_pairs))


def _in_subprocess(code: str, **env) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_switch_turns_the_kernels_off():
    code = ("from pcmhil.model import kernels; import sys; "
            "print(kernels.warm_up(), kernels.module(), 'numba' in sys.modules)")
    assert _in_subprocess(code, PCMHIL_JIT="0") == ["False", "None", "False"]


def test_kernels_load_on_the_second_large_batch(compiled):
    """No numba import for a program with one large batch (e.g. `pcmhil mvm`); on the second."""
    code = ("import sys; from pcmhil.model import kernels; "
            "kernels.for_large_batch(); print('numba' in sys.modules, kernels.module() is None); "
            "kernels.for_large_batch(); print(kernels.module() is not None)")
    assert _in_subprocess(code) == ["False", "True", "True"]


def test_kernels_load_after_many_windows_in_small_batches(compiled):
    """A co-simulation counts one window at a time: the kernels load once the process has counted
    LOAD_AFTER_SMALL_WINDOWS of them, not before."""
    code = ("import sys; from pcmhil.model import kernels; "
            "kernels.for_small_batch(kernels.LOAD_AFTER_SMALL_WINDOWS - 1); "
            "print('numba' in sys.modules, kernels.module() is None); "
            "kernels.for_small_batch(1); print(kernels.module() is not None)")
    assert _in_subprocess(code) == ["False", "True", "True"]


@pytest.mark.parametrize("kind", ["1-phase", "one sign to 128", "negative weights"])
def test_window_counts_from_the_charges_products_equal_numpy(compiled, monkeypatch, kind):
    """`cco.window_counts` with the advances computed in the compiled counts loop from the
    charge's int8 products (`charge_digits`, also negated: durations up to 128) and the pairs
    that clip overriding them (exact sums for mixed signs, the clipped start for one sign),
    against numpy's path."""
    from pcmhil.model.cco import window_counts
    from pcmhil.model.drive import charge_digits, currents_may_leave

    if not int_gemm.warm_up():
        pytest.skip("no int8 GEMM path here: torch (the `torch` extra) is not installed, or its kernel "
                    "is not exact on this CPU (model/int_gemm.py)")
    rng = np.random.default_rng(len(kind))
    rows, cols, windows, n = 64, 20, 150, 128
    w_int = rng.integers(-3000, 3001, (rows, cols))
    if kind != "1-phase":
        w_int = np.abs(w_int) * (-1 if kind == "negative weights" else 1)
    w = SelectedConductance.of(w_int)
    fmax = 3 * 2**32
    transfer = CcoTransfer(((fmax // 2) // np.maximum(w.reach // 4, 1)).astype(np.int64),
                           np.full(cols, fmax // 2, dtype=np.int64), fmax, 384 * 2**32 / 0.02, 0.1)
    if kind == "1-phase":
        x = rng.integers(-128, 128, (windows, rows))
        d, s = np.abs(x), np.where(x < 0, -1, 1)
    else:
        d = rng.integers(0, 129, (windows, rows)) * (rng.random((windows, rows)) < 0.3)
        s = np.ones((windows, rows), dtype=np.int8)
        d[0, 0] = 128
    d, s = check_drive(d, s, rows, n, batched=True)
    ops, key = rng.integers(0, 2**40, windows).astype(np.uint64), KeyedRng(9, 1)
    assert charge_digits(w, d, s)[1] == (kind != "1-phase")  # negated for durations up to 128
    assert len(currents_may_leave(w, d, s, n, *transfer.current_limits)[0])  # pairs that may clip
    got = window_counts(transfer, key, w, d, s, n, ops)
    monkeypatch.setattr(kernels, "module", lambda: None)
    assert np.array_equal(got, window_counts(transfer, key, w, d, s, n, ops))
