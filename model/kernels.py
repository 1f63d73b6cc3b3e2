"""Compiled loops of the window path (numba): what numpy does there as many passes over whole
arrays, done an element or a pair at a time in one loop each.

- the band test's elementwise steps (`drive._Int8Bounds.failures`): its int8 left operands from
  the durations (`band_operands`), and its verdicts from the int8 GEMM's products with one
  digit of W and a bound on the rest (`band_worst`), with the failed pairs' exact scan starts
  (`band_failures`, `low_sums`), instead of ~30 numpy passes over (bands, windows, cols) arrays;
- the exact scans and sums of the pairs left open (`scan_pairs`, `exact_pairs`): one column's
  terms s_i W[i, j] walked over the window's rows sorted by decreasing duration, whose prefix
  sums at the ends of runs of equal durations are the cycles' currents (docs/numerics.md
  section 9); numpy does them a sorted position at a time over all pairs
  (`drive._prefix_scan`, `CcoTransfer.exact_advance`), gathering and storing every prefix sum;
- the exact sums of every pair of a few windows (`exact_windows`: a co-simulation's windows
  come one at a time), a sorted row at a time over all columns, without the band test;
- the walk that may replace the band test and scans of large batches (`walk_extremes`,
  `drive._PathChoice`): every window's rows sorted, added a row at a time to all columns' sums
  in 16 bits (W's high digit, `drive._Walk`), offset so that one unsigned maximum over the
  cycles flags the sums that leave the limits less a bound on the rest (`walk_limits`); where
  llvmlite compiles them, by `walk_ir`'s blocks of columns whose sums stay in vector registers
  over a window's rows (windows sorted first, `_sort_windows`), else numba's loop (`walk_rows`,
  also for 32-bit sums; `PCMHIL_BLOCK_WALK=0` keeps it), checked against each other at load
  (`_walk_blocks_agree`);
- cycle mode's clock (`cycle_step`: `analog_tile.CycleWindow.step`): the changed rows'
  currents, the CCO phases and their pulses;
- the counts (`bracketed_counts`, `charged_counts`): the keyed hash, the noise bracket and the
  pulses of `CcoTransfer.counts_after` per element, the advance computed in the same loop from
  the charge's int8 products (`CcoTransfer.counts_of_charge`).

Each computes the same integers, or the same IEEE operations in the same order (numba fuses no
multiply-add without fastmath), as numpy's path, except the band test, whose compiled bound is
looser (a superset of numpy's failed pairs, which the exact scans then decide), and the walk
(a superset of the pairs that leave, which the exact sums then decide), so every count is the
same either way: tests/test_model_kernels.py compares each with numpy's version or the
per-cycle contract (the band test: a proof that fails every pair numpy's fails and every pair
that leaves the limits, with exact scan starts), and the window tests and the equivalence
regression run the twin on both paths.

Numba is a dependency, but `PCMHIL_JIT=0` turns the kernels off, and an import or a check that
fails leaves numpy's path. Like torch's import (`int_gemm`), loading happens on a process's
second large batch (`for_large_batch`), after LOAD_AFTER_SMALL_WINDOWS windows in small batches
(`for_small_batch`, `for_cycle_window`) or by `warm_up`, in the calling thread; the compiled code
is cached on disk (numba's `cache=True`, in `__pycache__` beside this file), so the first
process on a machine compiles (~10 s) and later ones load it (~0.5 s with numba's import).
Before they are used, the scans and exact sums are checked against the per-cycle contract
(`_self_check`), cycle mode's clock against numpy's steps (`_steps_agree`), and a small batch
through the whole window path against numpy's path (`_counts_agree`), which also compiles
every kernel for the argument types the path gives it.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from . import lazy, walk_ir

_ENV_SWITCH = "PCMHIL_JIT"
#: "0" keeps the walk on numba's loop instead of `walk_ir`'s register blocks (same flags).
_BLOCK_WALK_SWITCH = "PCMHIL_BLOCK_WALK"
#: A process that counts windows a few at a time (a co-simulation's transaction mode: one per
#: call) loads the kernels after this many, about when the time they would have saved pays for
#: the load (~0.5-0.8 s cached; they save ~0.1-0.25 ms a window at 256 x 256,
#: `cco._EXACT_ALL_MAX_WINDOWS`), so a run never loses more than about twice the load.
LOAD_AFTER_SMALL_WINDOWS = 4096
#: ... where a window of cycle mode counts as this many (`for_cycle_window`: compiled, each of
#: its ~130 steps takes ~11 instead of ~63 us at 256 x 256, `cycle_step`).
CYCLE_WINDOW_WEIGHT = 32
#: Durations up to this many cycles are sorted by counting (O(rows + longest) per window); a
#: window with longer ones (a long VERIFY_ROW window) by a merge sort.
_COUNTING_SORT_MAX = 4096


def module():
    """The compiled kernels (a namespace of the functions the module doc lists), once loaded and
    checked; else None."""
    return _loader.loaded


def for_large_batch() -> None:
    """Count a batch of many windows; on the process's second, load the kernels (once)."""
    _loader.for_large_batch()


def for_small_batch(windows: int) -> None:
    """Count the windows of a small batch; once the process has counted
    LOAD_AFTER_SMALL_WINDOWS, load the kernels (once)."""
    _loader.for_small_batch(windows, LOAD_AFTER_SMALL_WINDOWS)


def for_cycle_window() -> None:
    """Count a window of cycle mode as CYCLE_WINDOW_WEIGHT windows of a small batch (what the
    compiled steps save on it)."""
    _loader.for_small_batch(CYCLE_WINDOW_WEIGHT, LOAD_AFTER_SMALL_WINDOWS)


def warm_up() -> bool:
    """Load (compile or read from the cache) and check the kernels now, once; whether they are
    available."""
    return _loader.warm_up()


def _load():
    """The kernels compiled (or read from numba's cache), if the checks pass (`_self_check`,
    `_steps_agree`, `_counts_agree`); else None (`_loader`)."""
    kernels = _compiled()
    if kernels is None or not _self_check(kernels) or not _steps_agree(kernels):
        return None
    if kernels.walk_blocks is not None and not _walk_blocks_agree(kernels):
        kernels.walk_blocks = None  # numba's walk, then
    _loader.loaded = kernels  # for the whole window path to take them in the check
    try:
        return kernels if _counts_agree() else None
    finally:
        _loader.loaded = None


def _compiled():
    """The kernels as numba dispatchers (each compiled, or read from the cache, on its first
    call for a set of argument types), or None without numba."""
    try:
        import numba
    except Exception:  # noqa: BLE001 - no numba (or a broken one): numpy's path
        return None
    global _sorted_rows, _pair_scratch, _bracketed_row, _rate, _knee_pulses, _range_total  # noqa: PLW0603
    jit = numba.njit(nogil=True, cache=True)  # resolves callees by name: the compiled ones, bound first
    _rate, _knee_pulses = jit(_rate), jit(_knee_pulses)
    _sorted_rows, _pair_scratch = jit(_sorted_rows), jit(_pair_scratch)
    _bracketed_row, _range_total = jit(_bracketed_row), jit(_range_total)
    blocks = walk_ir.load() if os.environ.get(_BLOCK_WALK_SWITCH, "1") != "0" else None
    kernels = SimpleNamespace(scan_pairs=jit(_scan_pairs), exact_pairs=jit(_exact_pairs),
                              exact_windows=jit(_exact_windows), walk_rows=jit(_walk_extremes),
                              sort_windows=jit(_sort_windows), walk_blocks=blocks,
                              cycle_step=jit(_cycle_step),
                              band_operands=jit(_band_operands), band_worst=jit(_band_worst),
                              band_failures=jit(_band_failures), low_sums=jit(_low_sums),
                              bracketed_counts=jit(_bracketed_counts), charged_counts=jit(_charged_counts))
    kernels.walk_extremes = lambda *operands: _walk(kernels, *operands)
    return kernels


def _walk(kernels, table, d, s, n_window_cycles, bias, span, quiet, flags) -> None:
    """`_walk_extremes`'s flags: by `walk_ir`'s register blocks on the windows sorted first
    (`_sort_windows`) where the sums are uint16 and the blocks loaded, else by numba's loop."""
    if table.shape[0] < 2 * d.shape[1]:  # both kernels read row rows + i for a negative row i
        raise ValueError(f"walk: the table has {table.shape[0]} rows, not the 2 x {d.shape[1]} signed "
                         "terms (w, then -w) the drive's rows index")
    blocks = kernels.walk_blocks
    if blocks is None or bias.dtype != np.uint16 or table.dtype != np.int8:
        kernels.walk_rows(table, d, s, n_window_cycles, bias, span, quiet, flags)
        return
    windows, rows = d.shape
    order, durations = np.empty((windows, rows + 1), np.int64), np.empty((windows, rows + 1), np.int64)
    counts = np.empty(windows, np.int64)
    kernels.sort_windows(d, s, order, durations, counts)
    highest = np.empty(flags.shape, np.uint16)
    blocks.highest(np.ascontiguousarray(table), order, durations, counts, quiet, n_window_cycles,
                   np.ascontiguousarray(bias), highest)
    np.greater(highest, span, out=flags)


_loader = lazy.LazyLoad(_ENV_SWITCH, _load)


def _self_check(kernels) -> bool:
    """The kernels against the contract computed cycle by cycle (every current I_c as a
    matrix product) on small random drives of both polarities. Their durations are distinct
    (one may be 0), so every prefix sum the scan tests is the current of a cycle: it must flag
    exactly the pairs whose currents leave the CCOs' limits, and sum each of them exactly from
    the range of cycles where they leave (the rest of its cycles outside that range); the walk
    over whole windows (exact here: one int8 digit) must flag the same pairs."""
    from .drive import signed_terms  # it imports this module

    rng = np.random.default_rng(12345)
    rows, cols, windows = 9, 5, 4
    w = rng.integers(-50, 51, (rows, cols))
    terms = signed_terms(w).reshape(cols, -1)
    d = np.array([rng.permutation(rows + 1)[:rows] for _ in range(windows)], dtype=np.int16)
    s = rng.choice(np.array([-1, 1], dtype=np.int8), (windows, rows))
    window = np.repeat(np.arange(windows), cols)
    column = np.tile(np.arange(cols), windows)
    pairs = len(window)
    gain = rng.integers(1, 5, cols)
    offset, fmax = 60 * gain, int(130 * gain.max())
    lower, upper = -(offset // gain), (fmax - offset) // gain  # `CcoTransfer.current_limits`
    n = rows + 2
    cycles = np.arange(n)
    currents = np.einsum("bci,ij->bcj", (d[:, None, :] > cycles[:, None]) * s[:, None, :], w)  # (B, n, C)
    leaving = ((currents < lower) | (currents > upper))[window, :, column]  # (pairs, n)
    expect_scan = leaving.any(axis=1)
    expect_exact = np.clip(offset + gain * currents, 0, fmax).sum(axis=1).ravel()
    # each pair's range: its cycles from the first to the last outside the limits (none: all)
    bottom = np.where(expect_scan, np.argmax(leaving, axis=1), 0)
    top = np.where(expect_scan, n - np.argmax(leaving[:, ::-1], axis=1), rows)
    value = np.append(currents, np.zeros((windows, 1, cols), currents.dtype), axis=1)[window, top, column]
    out_scan, out_exact = np.empty(pairs, np.bool_), np.empty(pairs, np.int64)
    out_totals = np.empty(pairs, np.int64)
    out_windows = np.empty((windows, cols), np.int64)
    out_walk = np.empty((windows, cols), np.bool_)
    try:
        kernels.scan_pairs(terms, d, s, window, column, value, top, bottom, lower, upper, out_scan, n, offset,
                           gain, fmax, out_totals)
        kernels.exact_pairs(terms, d, s, window, column, n, offset, gain, fmax, out_exact)
        kernels.exact_windows(w, d, s, n, offset, gain, fmax, out_windows)
        kernels.walk_rows(np.concatenate([w, -w]).astype(np.int8), d, s, n,
                              *walk_limits(lower, upper, int(np.abs(w).max()), len(w)), out_walk)
    except Exception:  # noqa: BLE001 - a kernel that does not compile: numpy's path
        return False
    return bool(expect_scan.any() and np.array_equal(out_scan, expect_scan)
                and np.array_equal(out_exact, expect_exact)
                and np.array_equal(out_totals[out_scan], expect_exact[out_scan])
                and np.array_equal(out_windows.ravel(), expect_exact)
                and np.array_equal(out_walk.ravel(), expect_scan))


def _walk_blocks_agree(kernels) -> bool:
    """`walk_ir`'s blocks against numba's walk on random int8 rows over 151 columns (every
    block width, 128 + 16 + 7 x 1), windows with repeated durations, none on, every row on for
    all cycles, or cycles with none on after some, limits with 0 outside, and 0, 3 or 30 quiet
    rows: the same flags."""
    rng = np.random.default_rng(2468)
    rows, cols, windows, n = 40, 151, 24, 9
    w = rng.integers(-127, 128, (rows, cols))
    table = np.concatenate([w, -w]).astype(np.int8)
    d = rng.integers(0, n + 1, (windows, rows)).astype(np.int16)
    d[0], d[1] = 0, n
    d[2] = rng.integers(0, n - 1, rows)  # rows on, yet cycles with none on: the maxima start at the bias
    s = rng.choice(np.array([-1, 1], dtype=np.int8), (windows, rows))
    reach = rows * 127
    for quiet in (0, 3, rows - 10):  # the same operands for both, whether or not the limits allow it
        low, high = -rng.integers(0, reach // 4, cols), rng.integers(0, reach // 4, cols)
        low[::5] = rng.integers(1, 100, len(low[::5]))  # 0 outside: idle cycles leave
        bias, span, _ = walk_limits(low, high, 127, rows)
        expect, got = np.empty((windows, cols), np.bool_), np.empty((windows, cols), np.bool_)
        kernels.walk_rows(table, d, s, n, bias, span, quiet, expect)
        try:
            _walk(kernels, table, d, s, n, bias, span, quiet, got)
        except Exception:  # noqa: BLE001 - blocks that do not run: numba's walk
            return False
        if not (expect.any() and not expect.all() and np.array_equal(got, expect)):
            return False
    return True


def _steps_agree(kernels) -> bool:
    """Cycle mode's compiled clock (`cycle_step`) against the CCO's numpy steps (the currents as
    one matrix product per cycle) over random drives, with and without the nonlinearity, phases
    that saturate at both ends, and its refusals of a bad drive value and of a current beyond
    the limit."""
    from .cco import CcoTransfer  # it imports this module

    rng = np.random.default_rng(2468)
    rows, cols, cycles = 9, 5, 40
    w = rng.integers(-50, 51, (rows, cols))
    fmax = 3 * 2**32
    for knee in (0.0, 384 * 2**32 / 0.3):
        t = CcoTransfer(rng.integers(2**26, 2**27, cols), rng.integers(0, fmax, cols), fmax, knee, 0.1)
        phase, emitted = rng.integers(0, 2**32, cols), np.zeros(cols, np.int64)
        expect_phase, expect_emitted = phase.copy(), emitted.copy()
        drive, currents, pulses = np.zeros(rows, np.int64), np.zeros(cols, np.int64), np.empty(cols, np.uint8)
        for _ in range(cycles):
            active = rng.integers(-1, 2, rows).astype(np.int8)
            try:
                status = kernels.cycle_step(active, drive, w, currents, phase, emitted, t.offset, t.gain,
                                            t.fmax, 2**40, *t._pulse_constants, pulses)
            except Exception:  # noqa: BLE001 - a kernel that does not compile: numpy's path
                return False
            expect_phase = expect_phase + t.increment(active @ w)
            total = t.cumulative_pulses(expect_phase)
            expect_pulses, expect_emitted = (total - expect_emitted).astype(np.uint8), total
            if not (status == 0 and np.array_equal(pulses, expect_pulses)
                    and np.array_equal(phase, expect_phase)):
                return False
    bad = np.full(rows, 2, np.int8)
    far = np.ones(rows, np.int8)
    return (kernels.cycle_step(bad, drive, w, currents, phase, emitted, t.offset, t.gain, t.fmax, 2**40,
                               *t._pulse_constants, pulses) == 1
            and kernels.cycle_step(far, drive, w, currents, phase, emitted, t.offset, t.gain, t.fmax, 0,
                                   *t._pulse_constants, pulses) == 2)


def _counts_agree() -> bool:
    """A small batch through the whole window path (`cco.window_counts`, 1-phase windows whose
    currents reach past the CCO's limits), and its first few windows (every pair summed
    exactly: `exact_windows`), give the same counts with the loaded kernels as on numpy's
    path, with the mixed-sign test by the band test and by the walk. It also compiles every
    kernel the path calls for the argument types it gives them (the band test's and the
    charge's where torch's int8 GEMM is on), before the first real batch."""
    from .cco import CcoTransfer, window_counts  # they import this module
    from .drive import SelectedConductance, check_drive
    from .keyed_rng import KeyedRng

    rng = np.random.default_rng(54321)
    rows, cols, windows, n = 24, 12, 80, 128
    w = SelectedConductance.of(rng.integers(-3000, 3001, (rows, cols)))
    fmax = 3 * 2**32  # limits at a quarter of each column's reach: a few pairs clip, many fail bands
    transfer = CcoTransfer(((fmax // 2) // np.maximum(w.reach // 4, 1)).astype(np.int64),
                           np.full(cols, fmax // 2, dtype=np.int64), fmax, 384 * 2**32 / 0.02, 0.1)
    x = rng.integers(-128, 128, (windows, rows))
    d, s = check_drive(np.abs(x), np.where(x < 0, -1, 1), rows, n, batched=True)
    ops, key = np.arange(windows, dtype=np.uint64), KeyedRng(1)
    try:
        compiled = window_counts(transfer, key, w, d, s, n, ops)  # the band test (`drive._PathChoice`)
        paths = w.bounds(*transfer.current_limits)._paths
        paths.cost, paths.untimed = [1.0, 0.0], [0, 0]  # then the walk
        walked = window_counts(transfer, key, w, d, s, n, ops)
        few = window_counts(transfer, key, w, d[:3], s[:3], n, ops[:3])  # every pair summed exactly
    except Exception:  # noqa: BLE001 - a kernel that does not compile for these types: numpy's path
        return False
    loaded, _loader.loaded = _loader.loaded, None
    try:
        expect = window_counts(transfer, key, w, d, s, n, ops)
    finally:
        _loader.loaded = loaded
    return bool(np.array_equal(compiled, expect) and np.array_equal(walked, expect)
                and np.array_equal(few, expect[:3]))


# ---- the loops (plain Python; compiled by `_compiled`) ------------------------------------------


def _rate(offset, gain, current, fmax):
    """The CCO's saturated rate clip(offset + gain I, 0, fmax) (`CcoTransfer._saturated_rate`)."""
    return min(max(offset + gain * current, 0), fmax)


def _knee_pulses(u, knee, k, kc, scale):
    """`CcoTransfer._pulses_real` of u = max(phase, 0) with the nonlinearity (knee >
    0), by the same IEEE operations: S0 (C - K v v) 2**-32, v = knee - min(u, knee)."""
    v = knee - min(u, knee)
    return (kc - v * v * k) * scale


def _sorted_rows(d, s, b, order, durations, starts):
    """Window b's conducting rows by decreasing duration into order[:count] (signed term index:
    row, or rows + row for negative polarity) and their durations into durations[:count], with
    durations[count] = 0; returns count. Order within a run of equal durations is arbitrary. Durations up to
    _COUNTING_SORT_MAX by counting (starts: scratch of that size + 2; the rows of duration 0 go
    last, in the same branch-free pass), longer ones by a merge sort."""
    rows = d.shape[1]
    longest = 0
    for i in range(rows):
        longest = max(longest, d[b, i])
    if longest <= _COUNTING_SORT_MAX:
        for v in range(longest + 1):
            starts[v] = 0
        for i in range(rows):
            starts[d[b, i]] += 1
        count = rows - starts[0]
        position = 0
        for v in range(longest, 0, -1):  # starts[v]: the first position of duration v
            n = starts[v]
            starts[v] = position
            position += n
        starts[0] = count
        for i in range(rows):
            v = d[b, i]
            at = starts[v]
            order[at] = i + rows * (s[b, i] < 0)
            durations[at] = v
            starts[v] = at + 1
    else:
        by_duration = np.argsort(-d[b].astype(np.int64), kind="mergesort")
        count = 0
        for p in range(rows):
            i = by_duration[p]
            order[p] = i + rows * (s[b, i] < 0)
            durations[p] = d[b, i]
            count += d[b, i] > 0
    durations[count] = 0
    return count


def _pair_scratch(rows):
    """The scratch of a loop over windows or pairs (`_sorted_rows`): order, durations (rows + 1
    of them), the counting sort's starts."""
    starts = np.empty(_COUNTING_SORT_MAX + 2, np.int64)
    return np.empty(rows, np.int64), np.empty(rows + 1, np.int64), starts


def _scan_pairs(terms, d, s, window, column, value, top, bottom, lower, upper, out, n_window_cycles, offset,
                gain, fmax, totals):
    """out[p]: whether pair p's current (window[p], column[p]) may leave [lower, upper] of its
    column in a cycle whose conducting rows are those with d > top[p] (whose sum is value[p],
    tested too) and a prefix, by decreasing duration, of the rows with bottom[p] < d <= top[p]
    (a band test's failed bands: `drive._scan_start`). Like `drive._prefix_scan`, every prefix
    sum is tested, also those inside a run of equal durations (the current of no cycle): a
    branch per run end would be mispredicted about every other row and cost more than the few
    pairs it would spare the exact sums.

    Consecutive pairs of one window share one sort of the rows their ranges need (the union
    of (bottom, top]): those rows picked without a branch, then sorted by counting. A band
    test fails pairs mostly in its first bands, where few rows have durations in the range, so
    this sorts part of the rows (measured at 256 x 256 with the twin benchmark's workload: ~100
    of 256 rows a window, and 1.10 -> 0.91 us a window against sorting every row).

    totals (int64, one per pair, or empty: not wanted): for each pair flagged, the window's
    sum of clip(offset + gain I_c, 0, fmax) over its n_window_cycles cycles, `_exact_pairs`'
    sum, from the pair's range alone (`_range_total`), where the pair's range holds every cycle
    that can clip (a band test's failed bands): it spares the window's full sort and sums."""
    rows = d.shape[1]
    picked = np.empty(rows, np.int64)
    order = np.empty(rows, np.int64)
    above = np.empty(_COUNTING_SORT_MAX + 2, np.int64)
    position = np.empty(_COUNTING_SORT_MAX + 2, np.int64)
    pairs = len(window)
    p = 0
    while p < pairs:
        b = window[p]
        end, high, low = p, top[p], bottom[p]
        while end < pairs and window[end] == b:
            high, low = max(high, top[end]), min(low, bottom[end])
            end += 1
        low = max(low, 0)
        n = 0
        for i in range(rows):  # the rows with low < d <= high, in row order
            v = d[b, i]
            picked[n] = i
            n += (v > low) & (v <= high)
        span = high - low
        if span <= _COUNTING_SORT_MAX:
            # above[v - low]: the picked rows with duration > v (low <= v <= high)
            for k in range(span + 1):
                above[k] = 0
            for m in range(n):
                above[d[b, picked[m]] - low] += 1
            count = 0
            for k in range(span, -1, -1):
                here = above[k]
                above[k] = count
                position[k] = count
                count += here
            for m in range(n):
                i = picked[m]
                k = d[b, i] - low
                at = position[k]
                order[at] = i + rows * (s[b, i] < 0)
                position[k] = at + 1
        else:  # long durations: a merge sort of the picked rows
            by_duration = np.argsort(-d[b, picked[:n]].astype(np.int64), kind="mergesort")
            for m in range(n):
                i = picked[by_duration[m]]
                order[m] = i + rows * (s[b, i] < 0)
        for q in range(p, end):
            j = column[q]
            t_q, b_q = min(max(top[q], low), high), min(max(bottom[q], low), high)
            if span <= _COUNTING_SORT_MAX:
                first, last = above[t_q - low], above[b_q - low]
            else:
                first, last = 0, 0
                for m in range(n):
                    v = d[b, picked[m]]
                    first += v > t_q
                    last += v > b_q
            current = value[q]
            highest = lowest = current
            for k in range(first, last):
                current += terms[j, order[k]]
                highest = max(highest, current)
                lowest = min(lowest, current)
            out[q] = lowest < lower[j] or highest > upper[j]
            if out[q] and len(totals):
                totals[q] = _range_total(terms, d, s, b, j, order, first, last, value[q], t_q, b_q,
                                         n_window_cycles, offset[j], gain[j], fmax)
        p = end


def _range_total(terms, d, s, b, j, order, first, last, value, top, bottom, n_window_cycles, offset, gain,
                 fmax):
    """Window b's sum of clip(offset + gain I_c, 0, fmax) over its cycles for column j, where no
    cycle outside [bottom, top) can clip, and order[first:last] are the signed term indices of
    the rows with bottom < d <= top by decreasing duration (`_scan_pairs`), from value, the
    current of the rows with d > top. In the range, the exact rate of each run of cycles with
    one current (0 cycles inside a run of equal durations); outside it, every rate is
    offset + gain I_c, so those cycles sum to their count times offset plus gain times their
    charge, sum_i s_i W_ij (max(d_i - top, 0) + min(d_i, bottom)). Integers throughout: the
    range's part is a sum of rates in [0, fmax], and so is the rest taken together (gain times
    the charge alone may be negative), each below n fmax < 2**53."""
    rows = d.shape[1]
    total = 0
    current = value
    upto = top  # cycles [duration of the next row, upto) have the current so far
    for k in range(first, last):
        index = order[k]
        duration = d[b, index if index < rows else index - rows]
        total += _rate(offset, gain, current, fmax) * (upto - duration)
        current += terms[j, index]
        upto = duration
    total += _rate(offset, gain, current, fmax) * (upto - bottom)
    charge = 0  # of the cycles outside the range
    for i in range(rows):
        weight = max(d[b, i] - top, 0) + min(d[b, i], bottom)
        charge += np.int64(weight) * terms[j, i + rows * (s[b, i] < 0)]
    return total + (n_window_cycles - (top - bottom)) * offset + gain * charge


def _exact_pairs(terms, d, s, window, column, n_window_cycles, offset, gain, fmax, out):
    """out[p] = sum over the window's cycles of clip(offset + gain I_c, 0, fmax) for pair p
    (window[p], column[p]; grouped by window): `CcoTransfer.exact_advance`'s sum. Each window
    is sorted once, at its first pair."""
    order, durations, starts = _pair_scratch(d.shape[1])
    sorted_window, count = -1, 0
    for p in range(len(window)):
        if window[p] != sorted_window:
            sorted_window = window[p]
            count = _sorted_rows(d, s, sorted_window, order, durations, starts)
        j = column[p]
        current = 0
        total = (n_window_cycles - durations[0]) * offset[j]  # after the longest duration
        for k in range(count):
            current += terms[j, order[k]]
            # 0 cycles inside a run of equal durations (no branch: see _scan_pairs)
            total += _rate(offset[j], gain[j], current, fmax) * (durations[k] - durations[k + 1])
        out[p] = total


def _walk_extremes(table, d, s, n_window_cycles, bias, span, quiet, flags):
    """flags[b, j]: whether the current of column j in some cycle of window b, in units of the
    rows of table (2 * rows, cols): row i + rows * (s < 0) is s times row i of a matrix, leaves
    its limits [low[j], high[j]], given as `walk_limits` makes them: the sums start at bias[j] =
    -low[j] (unsigned, wrapping), so each holds sum - low modulo 2**bits, which exceeds span[j] =
    high[j] - low[j] exactly where the sum leaves; one unsigned maximum a column, not a minimum
    and a maximum. Each window's conducting rows sorted by decreasing duration (`_sorted_rows`)
    and added a row at a time to all columns' sums (the loop over columns vectorises), the
    maximum taken in the pass that adds a run's last row of equal durations, past the first
    `quiet` rows (whose sums cannot leave): exactly the currents of the window's cycles, and 0
    (bias) for the cycles after the longest duration. Measured at 256 x 256 (500 windows of the
    twin benchmark, ~110 runs a window, one thread, 200 interleaved rounds): 0.83 of the time of
    signed int16 sums with their minimum and maximum in a separate pass per run (int32: 0.77)."""
    rows = d.shape[1]
    cols = table.shape[1]
    order, durations, starts = _pair_scratch(rows)
    current = np.empty(cols, bias.dtype)
    highest = np.empty(cols, bias.dtype)
    for b in range(d.shape[0]):
        count = _sorted_rows(d, s, b, order, durations, starts)
        current[:] = bias
        if n_window_cycles > durations[0]:  # cycles with no row on: current 0
            highest[:] = bias
        else:
            highest[:] = 0  # no cycle yet: 0 <= span, never flagged by itself
        for k in range(count):
            row = table[order[k]]
            if durations[k + 1] != durations[k] and k >= quiet:  # a run's end (durations[count] = 0)
                for j in range(cols):
                    current[j] += row[j]
                    highest[j] = max(highest[j], current[j])
            else:
                for j in range(cols):
                    current[j] += row[j]
        for j in range(cols):
            flags[b, j] = highest[j] > span[j]


def _sort_windows(d, s, order, durations, counts):
    """Every window's rows sorted (`_sorted_rows`) into order[b], durations[b] (each rows + 1
    long) and counts[b], for `walk_ir`'s blocks."""
    starts = np.empty(_COUNTING_SORT_MAX + 2, np.int64)
    for b in range(d.shape[0]):
        counts[b] = _sorted_rows(d, s, b, order[b], durations[b], starts)


def walk_limits(low: np.ndarray, high: np.ndarray, largest: int, rows: int
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """(bias, span, quiet): `walk_extremes`'s operands for sums of up to `rows` terms, each
    within [-largest, largest], tested against [low[j], high[j]] (integers, any values; an
    empty range flags every pair). The limits are clamped to [-reach - 1, reach + 1], reach =
    rows largest, which changes no outcome; then with 2**b > 2 reach + 1 (uint16 up to 258 rows
    of int8 terms, else uint32) and a sum a in [-reach, reach], (a - low) mod 2**b <= span =
    high - low exactly where low <= a <= high: a - low lies in [0, span] there, in (span,
    reach - low] above, below 2**b, and wraps to 2**b + a - low > span below, as high - a <=
    2 reach + 1 < 2**b. quiet: the number of leading rows whose sums (|a| <= k largest) stay
    inside every column's limits."""
    reach = rows * largest
    low = np.clip(low, -reach - 1, reach + 1).astype(np.int64)
    high = np.clip(high, -reach - 1, reach + 1).astype(np.int64)
    dtype = np.uint16 if 2 * reach + 1 < 2**16 else np.uint32
    if 2 * reach + 1 >= 2**32:
        raise ValueError(f"walk sums of {rows} terms within +-{largest} exceed 32 bits")
    bias = np.negative(low) % (int(np.iinfo(dtype).max) + 1)
    inside = int(min(high.min(initial=reach + 1), -low.max(initial=-reach - 1)))  # < 0: 0 leaves somewhere
    if inside < 0:
        quiet = 0
    else:  # k rows' sums within +-k largest: inside while k largest <= inside
        quiet = rows if largest == 0 else min(rows, inside // largest)
    return bias.astype(dtype), high - low, quiet


def _exact_windows(w_int, d, s, n_window_cycles, offset, gain, fmax, out):
    """out[b, j] = sum over window b's cycles of clip(offset + gain I_c, 0, fmax) for every
    column j: `_exact_pairs` for all of a window's pairs at once, a sorted row at a time over all
    columns (the loops over columns vectorise), for the few windows of a call where the band
    test and the int8 GEMM cost more than summing everything (`cco.window_counts`)."""
    rows, cols = w_int.shape
    order, durations, starts = _pair_scratch(rows)
    current = np.empty(cols, np.int64)
    for b in range(d.shape[0]):
        count = _sorted_rows(d, s, b, order, durations, starts)
        for j in range(cols):
            current[j] = 0
            out[b, j] = (n_window_cycles - durations[0]) * offset[j]  # after the longest duration
        for k in range(count):
            i = order[k]
            if i < rows:
                for j in range(cols):
                    current[j] += w_int[i, j]
            else:
                for j in range(cols):
                    current[j] -= w_int[i - rows, j]
            length = durations[k] - durations[k + 1]
            if length:  # 0 inside a run of equal durations
                for j in range(cols):
                    out[b, j] += _rate(offset[j], gain[j], current[j], fmax) * length


def _cycle_step(active, drive, w_int, currents, phase, emitted, offset, gain, fmax, limit, knee, k, kc, scale,
                pulses):
    """One clock of cycle mode (`analog_tile.CycleWindow.step`, `cco.CCO.step`), in place: the
    rows whose drive changed (active vs drive, {-1, 0, +1}) update the column currents
    (integers, exact in any order), the CCO phases advance by clip(offset + gain I, 0, fmax), and
    pulses[j] = E(phase) - emitted[j] by the same IEEE operations as `CcoTransfer._pulses_real`.
    Returns 0, or 1 (nothing changed) for an active value outside {-1, 0, +1}, or 2 (the drive
    and currents updated, no phase) for a current beyond +-limit: the caller raises."""
    rows, cols = w_int.shape
    for i in range(rows):
        if active[i] < -1 or active[i] > 1:
            return 1
    for i in range(rows):
        delta = np.int64(active[i]) - drive[i]
        if delta != 0:
            for j in range(cols):
                currents[j] += delta * w_int[i, j]
            drive[i] = active[i]
    for j in range(cols):
        if currents[j] > limit or currents[j] < -limit:
            return 2
    for j in range(cols):
        phase[j] += _rate(offset[j], gain[j], currents[j], fmax)
    if knee > 0:
        for j in range(cols):
            total = np.int64(_knee_pulses(max(np.float64(phase[j]), 0.0), knee, k, kc, scale))
            pulses[j] = total - emitted[j]
            emitted[j] = total
    else:
        for j in range(cols):
            total = np.int64(max(np.float64(phase[j]), 0.0) * scale)
            pulses[j] = total - emitted[j]
            emitted[j] = total
    return 0


def _band_operands(d, s, edges, left):
    """The int8 left operands of the band test (`drive._Int8Bounds.bands`) in one pass:
    left[g] = s ([d > e_g] + [d > e_g+1]) (A_g) and left[bands + g - first] =
    [e_g < d <= e_g+1] (T_g) for the groups first .. bands - 1, (2 bands - first, windows,
    rows), with e_bands = n (no row conducts beyond the window); first = 1 leaves T_0 to
    `_band_worst` (a dense drive)."""
    bands = len(edges) - 1
    first = 2 * bands - left.shape[0]
    windows, rows = d.shape
    for b in range(windows):
        for g in range(bands):
            low, high = edges[g], edges[g + 1]
            if g < first:  # A_g alone
                for i in range(rows):
                    v = d[b, i]
                    left[g, b, i] = (np.int8(v > low) + np.int8(v > high)) * s[b, i]
                continue
            for i in range(rows):
                v = d[b, i]
                on, next_on = np.int8(v > low), np.int8(v > high)
                left[g, b, i] = (on + next_on) * s[b, i]
                left[bands + g - first, b, i] = on - next_on


def _band_failures(worst, a, t, sizes, shift, mid, half, base, low_max, t_reach, rows, edges):
    """The band test's verdicts (`drive.CurrentBounds._band_test`) from one-digit products:
    worst (windows, cols) int32, each pair's largest band bound (`_band_worst`, from the same
    arguments); a (bands windows, cols) int32, the products of A_g's operands x_g with H,
    W = base H + L (`drive._Int8Bounds`); t ((bands - first) windows, >= cols) int32, T_g's
    bound before the shift (t << shift) and sizes (bands - first, windows), the row counts of
    the groups first .. bands - 1 (first = 1: a dense drive's T_0 from t_reach and rows, as
    `_band_worst`); low_max (cols,) max |L| per column; edges the band edges (e_bands = n).
    A_g = base a + x_g L lies within base a -+ low_max_j |x_g|_1, where |x_g|_1 = (rows with
    d > e_g) + (rows with d > e_g+1): a pair passes band g if |base a - M| + T_g +
    low_max_j |x_g|_1 <= H, a proof for every A_g in that interval.

    Returns the failed pairs (window, column) and their scan starts (value, first, last, top,
    bottom), as `drive._scan_start`, except that value is only base times the one-digit part
    of C_g_hi+1 (C_bands = 0, C_g = a_g - C_g+1, exact integers): `_low_sums` adds the sum
    over the rows with d > e_g_hi+1 of s_i L_ij. The outputs are sized by a first count of the
    failed pairs. The bound's arithmetic is int32, as `_band_worst`'s: mid, half and low_max
    int32, for operands where every term and sum fits (`drive._Int8Bounds.int32_test`)."""
    flat, cols = a.shape
    bands = len(edges) - 1
    windows = flat // bands
    first = bands - sizes.shape[0]
    base32, shift32 = np.int32(base), np.int32(shift)
    above = np.zeros(bands + 1, np.int64)
    failed = 0  # the outputs' size, counted first (no reallocation as they fill)
    for b in range(windows):
        for j in range(cols):
            failed += worst[b, j] > half[j]
    found = 0
    window_out = np.empty(failed, np.int64)
    column_out = np.empty(failed, np.int64)
    value_out = np.empty(failed, np.int64)
    first_out = np.empty(failed, np.int64)
    last_out = np.empty(failed, np.int64)
    top_out = np.empty(failed, np.int64)
    bottom_out = np.empty(failed, np.int64)
    currents = np.empty(bands + 1, np.int64)
    for b in range(windows):
        for g in range(bands - 1, first - 1, -1):
            above[g] = above[g + 1] + sizes[g - first, b]
        if first:
            above[0] = rows  # a bound (`_band_worst`)
        for j in range(cols):
            if worst[b, j] <= half[j]:
                continue
            # the failed bands g_lo .. g_hi and the one-digit part of C_g_hi+1
            g_lo, g_hi = bands, -1
            currents[bands] = 0
            others = np.int32(0)
            for g in range(bands - 1, -1, -1):
                row = g * windows + b
                value = a[row, j]
                spread = np.int32(above[g] + above[g + 1])
                if g >= first:
                    t_g = t[(g - first) * windows + b, j]
                    others = np.int32(others + t_g)
                else:
                    t_g = np.int32(t_reach[j] - others)
                y = np.int32(abs(np.int32(np.int32(base32 * value) - mid[j])))
                y = np.int32(np.int32(y + np.int32(t_g << shift32)) + np.int32(low_max[j] * spread))
                if y > half[j]:
                    g_lo = g
                    if g_hi < 0:
                        g_hi = g
                currents[g] = value - currents[g + 1]
            window_out[found] = b
            column_out[found] = j
            value_out[found] = base * currents[g_hi + 1]  # `_low_sums` adds the rest
            first_out[found] = above[g_hi + 1]
            last_out[found] = above[g_lo]
            top_out[found] = edges[g_hi + 1]
            bottom_out[found] = edges[g_lo]
            found += 1
    return (window_out[:found], column_out[:found], value_out[:found], first_out[:found], last_out[:found],
            top_out[:found], bottom_out[:found])


def _low_sums(d, s, low_t, window, column, top, value):
    """value[p] += sum over the rows of window[p] with d > top[p] of s_i L_ij, j = column[p]
    (`_band_failures`' scan starts: the part of C_g_hi+1 beyond its one digit; none where top
    is the window's end). A kernel of its own: inside `_band_failures`, this loop ran ~3x
    slower (0.2 vs 0.06 us a pair at 256 rows, measured)."""
    for p in range(len(window)):
        b, j, edge = window[p], column[p], top[p]
        low = np.int32(0)
        for i in range(d.shape[1]):  # int32: |L| <= base / 2, and the sum fits (`int32_test`)
            low = np.int32(low + np.int32(np.int32(d[b, i] > edge) * np.int32(s[b, i] * low_t[j, i])))
        value[p] += low


def _band_worst(a, t, sizes, shift32, mid, base32, low_max, t_reach, rows32, worst):
    """worst[b, j] = max over the bands g of |base a - M| + (T_g << shift) + low_max_j |x_g|_1
    for window b and column j (`_band_failures`' bound), int32 throughout; T_g = t's row of
    group g, or, for a dense drive (t and sizes without group 0: first = 1), T_0 = t_reach_j
    (the column's sum over all rows) - the other groups' T_g, and rows conducting at e_0 =
    rows32: upper bounds, one T product fewer. A kernel of its own, called from Python:
    compiled into one function with the failed pairs' steps (also when called from there),
    this loop runs 2.3x slower (measured at 256 x 256, 6 bands: 1.25 vs 0.53 us a window)."""
    windows, cols = worst.shape
    bands = a.shape[0] // windows
    first = bands - sizes.shape[0]
    others = np.empty(cols, np.int32)  # sum of T_g over the groups g >= 1 (dense: T_0's bound)
    for b in range(windows):
        above, above_next = np.int32(0), np.int32(0)  # rows with d > e_g, e_g+1 (e_bands = n: none)
        for j in range(cols):
            worst[b, j] = 0
            others[j] = 0
        for g in range(bands - 1, first - 1, -1):
            above_next, above = above, np.int32(above + sizes[g - first, b])
            row, t_row = g * windows + b, (g - first) * windows + b
            spread = np.int32(above + above_next)
            for j in range(cols):  # int32 throughout (each cast undoes numba's promotion to int64)
                y = np.int32(abs(np.int32(np.int32(base32 * a[row, j]) - mid[j])))
                y = np.int32(np.int32(y + np.int32(t[t_row, j] << shift32)) + np.int32(low_max[j] * spread))
                worst[b, j] = max(worst[b, j], y)
            if first:
                for j in range(cols):
                    others[j] = np.int32(others[j] + t[t_row, j])
        if first:  # band 0 of a dense drive
            spread = np.int32(rows32 + above)
            for j in range(cols):
                y = np.int32(abs(np.int32(np.int32(base32 * a[b, j]) - mid[j])))
                t0 = np.int32(t_reach[j] - others[j])
                y = np.int32(np.int32(y + np.int32(t0 << shift32)) + np.int32(low_max[j] * spread))
                worst[b, j] = max(worst[b, j], y)


def _bracketed_counts(per_op, per_lane, bin_shift, table, advance, knee, k, kc, scale, counts, open_):
    """`cco.CcoTransfer.counts_after`'s bracketed counts of the windows' advances (windows,
    cols) float64 (`_bracketed_row`), open_ where the count at the bin's high end may be higher
    (those take the caller's exact path)."""
    cols = advance.shape[1]
    bins, low, high = np.empty(cols, np.uint64), np.empty(cols), np.empty(cols)
    for b in range(advance.shape[0]):
        _bracketed_row(per_op[b], per_lane, advance[b], bin_shift, table, knee, k, kc, scale, bins, low, high,
                       counts[b], open_[b])


def _charged_counts(charge, negated, gain, n_offset, pair_index, pair_advance, per_op, per_lane, bin_shift,
                    table, knee, k, kc, scale, counts, open_, open_advance):
    """`_bracketed_counts` with each window's advances computed here from the charge's int8
    products (`drive.charge_digits`: Q = (-1 if negated) sum_k 256**k charge[k], (digits,
    windows, cols) int32) as `cco.window_counts` does in float64: Q gain + n offset (gain,
    n_offset float64 (cols,); the same two roundings, none where nothing clips), except for the
    pairs of the flat indices pair_index (window cols + column, ascending), whose advance is
    pair_advance. open_advance: the advance of each open element (for the caller's exact
    path)."""
    digits, windows, cols = charge.shape
    advance = np.empty(cols)
    bins, low, high = np.empty(cols, np.uint64), np.empty(cols), np.empty(cols)
    sign = -1 if negated else 1
    p = 0
    for b in range(windows):
        if digits == 1:  # one loop per digit count: a loop over the digits inside would not vectorise
            for j in range(cols):
                advance[j] = np.float64(sign * np.int64(charge[0, b, j])) * gain[j] + n_offset[j]
        elif digits == 2:
            for j in range(cols):
                q = np.int64(charge[1, b, j]) * 256 + charge[0, b, j]
                advance[j] = np.float64(sign * q) * gain[j] + n_offset[j]
        else:
            for j in range(cols):
                q = np.int64(charge[digits - 1, b, j])
                for d in range(digits - 2, -1, -1):
                    q = q * 256 + charge[d, b, j]
                advance[j] = np.float64(sign * q) * gain[j] + n_offset[j]
        while p < len(pair_index) and pair_index[p] < (b + 1) * cols:
            advance[pair_index[p] - b * cols] = pair_advance[p]
            p += 1
        _bracketed_row(per_op[b], per_lane, advance, bin_shift, table, knee, k, kc, scale, bins, low, high,
                       counts[b], open_[b])
        for j in range(cols):
            if open_[b, j]:
                open_advance[b, j] = advance[j]


def _bracketed_row(op_key, per_lane, advance, bin_shift, table, knee, k, kc, scale, bins, low, high, counts,
                   open_):
    """The counts and open flags of one window's columns: the hashes splitmix64(op_key ^
    per_lane[j]) (`keyed_rng.KeyedRng.bits`), their bins (the hash's top 64 - bin_shift bits)'s
    lowest phase plus the advance, pulses by the same IEEE operations as
    `CcoTransfer._pulses_real` (knee, k = 1 / (2 knee), kc = k knee**2 and scale as it computes
    them; no fused multiply-add: numba contracts nothing without fastmath), the count
    truncated, and open where the count at the bin's high end may be higher (table: a bin's
    lowest phase and reach side by side, `CcoTransfer._bracket_table`). Hashes, the bins'
    table values (into the scratch low, high) and pulses in separate loops, the
    nonlinearity's branch outside: the first and last then vectorise (LLVM vectorises no loop
    that gathers from the tables here: ~20 % slower in one loop, measured)."""
    shift = np.uint64(bin_shift)
    for j in range(len(per_lane)):
        z = (op_key ^ per_lane[j]) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        bins[j] = z >> shift
    for j in range(len(per_lane)):  # unsigned indices: no wraparound test for negative ones
        low[j] = table[bins[j], 0]
        high[j] = table[bins[j], 1]
    if knee > 0:
        for j in range(len(per_lane)):
            u = _knee_pulses(max(low[j] + advance[j], 0.0), knee, k, kc, scale)
            count = np.int64(u)
            counts[j] = count
            open_[j] = u + high[j] >= np.float64(count + 1)
    else:
        for j in range(len(per_lane)):
            u = max(low[j] + advance[j], 0.0) * scale
            count = np.int64(u)
            counts[j] = count
            open_[j] = u + high[j] >= np.float64(count + 1)
