"""Crossbar windows and the CCO front end: cycle mode == window mode, exact charge, read modes.

The central property (DESIGN.md, the two fidelity modes): stepping a window clock by clock
(`column_currents` + `CCO.step`, what the cosim cycle mode does) emits exactly the pulses that
`window_counts` / `window_counts_batch` return for the same drive and operation index, for
random geometries, drives and seeds that hit both saturations, the flat part of the
nonlinearity, the cap on the initial phase, IR drop and every device select.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.model import (
    CCO,
    SELECTS,
    CcoTransfer,
    Crossbar,
    CrossbarConfig,
    FaultRates,
    get_preset,
    read_mode_windows,
)
from pcmhil.model.cco import PHASE_PER_PULSE
from pcmhil.model.drive import SelectedConductance, _prefix_scan, check_exact, currents_may_leave
from pcmhil.model.keyed_rng import KeyedRng

CASES = 40


def random_case(seed: int):
    """A small crossbar with an aggressive CCO (strong nonlinearity, noise, mismatch, small
    full scale) and a batch of random windows."""
    rng = np.random.default_rng(seed)
    rows, cols, n = int(rng.integers(1, 40)), int(rng.integers(1, 10)), int(rng.integers(1, 140))
    base = get_preset(str(rng.choice(["hermes-2dev", "pcm"])))
    cco = dataclasses.replace(base.cco, nonlinearity_beta=0.5,
                              nonlinearity_ref_pulses=float(rng.integers(20, 200)), output_noise_pulses=0.7,
                              gain_mismatch_rel=0.2, offset_mismatch_pulses_per_cycle=0.3)
    config = CrossbarConfig(preset=dataclasses.replace(base, cco=cco), rows=rows, cols=cols, seed=seed,
                            tile=seed % 3, i_full_scale_us=base.g_max_us * rng.uniform(0.5, 4),
                            ir_drop_wire_ohm=float(rng.choice([0.0, 20.0])))
    bar = Crossbar(config)
    bar.program_weights(rng.uniform(-1, 1, (rows, cols)), op_index=seed)
    bar.devices.advance_time(float(rng.uniform(0, 1e5)))
    batch = 6
    durations = rng.integers(0, n + 1, (batch, rows))
    durations[rng.random((batch, rows)) < 0.3] = 0
    durations[0], durations[1] = n, 0
    polarity = rng.choice([-1, 1], (batch, rows))
    return bar, durations, polarity, str(rng.choice(SELECTS)), n, rng.integers(0, 2**40, batch)


def step_window(bar: Crossbar, durations, polarity, select, n, op_index):
    """Cycle mode: the per-cycle pulses (n, cols) and the per-cycle rate increments before clipping."""
    bar.cco.start_window(op_index)
    pulses, raw_rates = [], []
    for cycle in range(n):
        currents = bar.column_currents(np.where(durations > cycle, polarity, 0), select)
        raw_rates.append(bar.cco.transfer.offset + bar.cco.transfer.gain * currents)
        pulses.append(bar.cco.step(currents))
    return np.array(pulses, dtype=np.int64), np.array(raw_rates)


def test_cycle_mode_equals_window_mode_single_and_batched(window_path):
    seen = {"top": 0, "bottom": 0, "flat": 0, "capped_start": 0}
    for seed in range(CASES):
        bar, d, s, select, n, ops = random_case(seed)
        batched = bar.cco.window_counts_batch(d, s, select, n, ops)
        t = bar.cco.transfer
        for b in range(len(d)):
            pulses, raw = step_window(bar, d[b], s[b], select, n, int(ops[b]))
            assert pulses.max() <= 3 and pulses.min() >= 0
            single = bar.cco.window_counts(d[b], s[b], select, n, int(ops[b]))
            assert np.array_equal(pulses.sum(axis=0), single), (seed, b)
            assert np.array_equal(single, batched[b]), (seed, b)
            seen["top"] += int((raw > t.fmax).any())
            seen["bottom"] += int((raw < 0).any())
            phase0 = t.initial_phase(bar.cco._rng, np.array([ops[b]], np.uint64))[0]
            seen["capped_start"] += int((phase0 == PHASE_PER_PULSE - 1).any())
            seen["flat"] += int(t.knee > 0 and (phase0 + np.clip(raw, 0, t.fmax).sum(axis=0) > t.knee).any())
    assert all(count > 0 for count in seen.values()), seen


def test_idle_windows_of_a_cco_without_offset_count_as_in_cycle_mode(window_path):
    """A CCO without zero-current offset (a preset may set offset_pulses_per_cycle = 0) has a
    current limit at 0, so idle windows (no row conducting, e.g. CALIBRATE) fail the band test
    and reach the exact sums with nothing to sort: their counts are those of cycle mode, alone,
    in a batch and mixed with driven windows."""
    base = get_preset("hermes-2dev")
    cco = dataclasses.replace(base.cco, offset_pulses_per_cycle=0.0)
    bar = Crossbar(CrossbarConfig(preset=dataclasses.replace(base, cco=cco), rows=16, cols=8, seed=2))
    bar.program_weights(np.random.default_rng(2).uniform(-1, 1, (16, 8)), op_index=0)
    n = 40
    durations = np.zeros((5, 16), dtype=np.int64)
    durations[3] = np.arange(16) % (n + 1)
    polarity = np.where(np.arange(16) % 2, -1, 1) * np.ones((5, 1), dtype=np.int64)
    ops = np.arange(100, 105)
    assert (bar.cco.transfer.current_limits[0] == 0).any()
    for windows in (slice(0, 1), slice(0, 3), slice(0, 5)):
        batched = bar.cco.window_counts_batch(durations[windows], polarity[windows], "differential", n,
                                              ops[windows])
        for b, counts in zip(range(5)[windows], batched, strict=True):
            pulses, _ = step_window(bar, durations[b], polarity[b], "differential", n, int(ops[b]))
            assert np.array_equal(pulses.sum(axis=0), counts), (windows, b)


@pytest.mark.parametrize("polarity", [1, -1])
def test_clipping_of_monotone_currents_counts_as_in_cycle_mode(polarity, monkeypatch, window_path):
    """Windows whose terms share one sign (4-phase; here one device select and one polarity)
    with currents far past the CCO's limit at the start: the walk over only the clipped cycles
    (`CcoTransfer.monotone_clipping`, upper limit for +1, lower for -1) gives the counts of cycle
    mode, in a batch and alone, for pairs that clip for part of the window, all of it, or not."""
    base = get_preset("hermes-2dev")
    cco = dataclasses.replace(base.cco, nonlinearity_beta=0.3, output_noise_pulses=0.4)
    rows, cols, n = 24, 6, 50
    bar = Crossbar(CrossbarConfig(preset=dataclasses.replace(base, cco=cco), rows=rows, cols=cols, seed=4,
                                  i_full_scale_us=base.g_max_us * 2))
    rng = np.random.default_rng(4)
    bar.program_weights(rng.uniform(-1, 1, (rows, cols)), op_index=0)
    durations = rng.integers(0, n + 1, (12, rows))
    durations[0], durations[1] = n, 0
    durations[2, :rows // 2] = 0
    s = np.full((12, rows), polarity)
    walked = []
    walk = CcoTransfer.monotone_clipping
    monkeypatch.setattr(CcoTransfer, "monotone_clipping",
                        lambda self, *a: walked.append(len(a[3])) or walk(self, *a))
    ops = np.arange(7, 19)
    batched = bar.cco.window_counts_batch(durations, s, "plus", n, ops)
    saw = {"all": 0, "part": 0, "none": 0}
    lower, upper = bar.cco.transfer.current_limits
    for b in range(len(durations)):
        pulses, _ = step_window(bar, durations[b], s[b], "plus", n, int(ops[b]))
        assert np.array_equal(pulses.sum(axis=0), batched[b]), b
        assert np.array_equal(bar.cco.window_counts(durations[b], s[b], "plus", n, int(ops[b])), batched[b])
        currents = np.array([bar.column_currents(np.where(durations[b] > c, s[b], 0), "plus")
                             for c in range(n)])
        outside = (currents > upper) | (currents < lower)
        saw["all"] += int((outside.all(axis=0) & (durations[b].max() == n)).sum())
        saw["part"] += int((outside.any(axis=0) & ~outside.all(axis=0)).sum())
        saw["none"] += int((~outside.any(axis=0)).sum())
    assert all(saw.values()), saw
    # the walk ran (on the "exact" path every pair is summed in full instead)
    assert (sum(walked) > 0) == (window_path != "exact"), walked


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_cumulative_pulses_are_monotone_and_at_most_fmax_per_cycle(beta):
    """Nl in float64 stays monotone and never lets a full-rate cycle emit a 4th pulse, also
    around and beyond the knee; without nonlinearity E is the phase in whole pulses."""
    cco = dataclasses.replace(get_preset("ideal").cco, nonlinearity_beta=beta, nonlinearity_ref_pulses=50.0)
    bar = Crossbar(CrossbarConfig(preset=dataclasses.replace(get_preset("ideal"), cco=cco), rows=1, cols=1))
    t = bar.cco.transfer
    rng = np.random.default_rng(0)
    start = rng.integers(-2 * PHASE_PER_PULSE, 200 * PHASE_PER_PULSE, 20000)
    for increment in (t.fmax, 1, int(rng.integers(1, t.fmax))):
        step = t.cumulative_pulses(start + increment) - t.cumulative_pulses(start)
        assert step.min() >= 0 and step.max() <= 3
    phase = np.arange(0, 200 * PHASE_PER_PULSE, 977_137)
    emitted = t.cumulative_pulses(phase)
    assert (np.diff(emitted) >= 0).all()
    if beta == 0:
        assert np.array_equal(emitted, phase >> 32)
    else:
        knee = 50.0 / beta
        assert emitted[-1] == int((1 - 2.0**-20) * knee / 2)  # flat beyond the knee at knee / 2
        u = np.minimum(phase / PHASE_PER_PULSE, knee)
        nl = u * (1 - u / (2 * knee))  # Nl(phi) = phi - beta phi^2 / (2 phi_ref), in pulses
        assert np.all((emitted <= nl) & (emitted > nl - 1.001))


def test_cycle_mode_equals_window_mode_on_every_branch_of_the_window_path(window_path):
    """The window path's other branches: one polarity on a unipolar select (4-phase windows:
    sign-definite terms, one-matmul test), rows that no window of the batch drives (left out
    of every matmul), and dense signed drives (no zero durations: the band test's dense form);
    each saturating at the top (+) and at the bottom (-)."""
    seen = {(branch, side): 0 for branch in ("one polarity", "dense") for side in ("top", "bottom")}
    for seed in range(10):
        bar, d, s, _, n, ops = random_case(seed)
        rng = np.random.default_rng(seed + 100)
        undriven = np.where(rng.random(d.shape[1]) < 0.3, 0, d)
        drives = [("one polarity", undriven, np.full_like(d, sign), select)
                  for select in SELECTS for sign in (1, -1)]
        drives.append(("dense", rng.integers(1, n + 1, d.shape), s, "differential"))
        t = bar.cco.transfer
        for branch, durations, polarity, select in drives:
            batched = bar.cco.window_counts_batch(durations, polarity, select, n, ops)
            for b in range(len(d)):
                pulses, raw = step_window(bar, durations[b], polarity[b], select, n, int(ops[b]))
                assert np.array_equal(pulses.sum(axis=0), batched[b]), (seed, branch, select, b)
                seen[branch, "top"] += int((raw > t.fmax).any())
                seen[branch, "bottom"] += int((raw < 0).any())
    assert all(count > 0 for count in seen.values()), seen


@pytest.mark.parametrize("scan", ["no scan", "scan"])
@pytest.mark.parametrize("w_max", [40_000, 2**36 + 12345])
@pytest.mark.parametrize("drive", ["mixed signs", "dense mixed signs", "one sign"])
def test_current_bounds_list_every_pair_whose_current_leaves_its_limits(w_max, drive, scan, window_path,
                                                                        monkeypatch):
    """currents_may_leave against the exact per-cycle currents, with limits 1 LSB inside the
    extremes each column reaches (so the float32 rounding margin is what decides), also with
    |W| far above 2**24 (W itself rounded in float32), for each of its tests (band test, the
    band test of a dense drive, one-sign test), the band test alone or followed by the exact
    scan from its starts (for any number of failed pairs): it may list pairs in vain, never
    miss one."""
    from pcmhil.model import drive as drive_module

    monkeypatch.setattr(drive_module, "_SCAN_MIN_PAIRS", 0 if scan == "scan" else 10**9)
    rng = np.random.default_rng(w_max % 97 + len(drive))
    rows, cols, n, batch = 64, 24, 32, 300
    w_int = rng.integers(0 if drive == "one sign" else -w_max, w_max, (rows, cols))
    w = SelectedConductance.of(w_int)
    d = rng.integers(1 if drive == "dense mixed signs" else 0, n + 1, (batch, rows))
    if drive == "mixed signs":
        d[:, :8] = 0  # rows that never conduct
    s = np.ones_like(d) if drive == "one sign" else rng.choice([-1, 1], d.shape)
    currents = np.stack([((d > c) * s) @ w_int for c in range(n)])  # exact int64 (n, batch, cols)
    highest, lowest = currents.max(axis=0), currents.min(axis=0)
    # limits contain 0, the idle current, as a CCO's always do (offset within [0, fmax])
    upper, lower = np.maximum(highest.max(axis=0) - 1, 0), np.minimum(lowest.min(axis=0) + 1, 0)
    leaves = (highest > upper) | (lowest < lower)
    listed = np.zeros_like(leaves)
    listed[currents_may_leave(w, d, s, n, lower, upper)] = True
    bounds = w.bounds(lower, upper)  # the path under test ran:
    if drive != "one sign":
        assert (bounds._walk is not None) == (window_path == "walk")
    int8_test = window_path != "numpy" and (window_path != "walk" or drive == "one sign")
    assert (bounds._int8 is not None) == int8_test
    assert leaves.sum() >= cols and not (leaves & ~listed).any()
    assert (listed & ~leaves).sum() < 0.05 * (~leaves).sum()  # the bound still proves most inside
    wide = 2 * np.abs(currents).max(axis=(0, 1))
    assert not any(len(a) for a in currents_may_leave(w, d, s, n, -wide, wide))


@pytest.mark.parametrize("start", ["from 0", "split"])
@pytest.mark.parametrize("w_max", [3000, 40_000, 2**36 + 12345])
def test_prefix_scan_is_exact_when_every_prefix_of_rows_is_a_current(w_max, start):
    """With distinct durations in each window every prefix of the rows sorted by duration is
    the current of some cycle, so the exact scan (the last test of currents_may_leave) proves
    inside exactly the pairs whose current never leaves its limits (limits 1 LSB inside the
    extremes, as above; int32 and int64 sums): scanning every prefix from 0, or each pair's
    prefixes in two scans split at a random length f (0 .. f rows from 0, then f .. all rows,
    and some past them, from the exact sum of the first f, as the band test's scan starts do)."""
    rng = np.random.default_rng(5)
    rows, cols, n, batch = 24, 16, 40, 200
    w_int = rng.integers(-w_max, w_max, (rows, cols))
    d = np.stack([rng.permutation(np.arange(1, n + 1))[:rows] for _ in range(batch)])
    d[:, :3] = 0  # rows that never conduct
    s = rng.choice([-1, 1], d.shape)
    currents = np.stack([((d > c) * s) @ w_int for c in range(n + 1)])  # cycle n: no row, 0
    upper = np.maximum(currents.max(axis=(0, 1)) - 1, 0)
    lower = np.minimum(currents.min(axis=(0, 1)) + 1, 0)
    leaves = (currents.max(axis=0) > upper) | (currents.min(axis=0) < lower)
    window, column = (a.ravel() for a in np.meshgrid(np.arange(batch), np.arange(cols), indexing="ij"))
    w = SelectedConductance.of(w_int)
    if start == "from 0":
        inside = _prefix_scan(w, d, s, window, column, lower, upper)
    else:
        conducting = rows - 3
        f = rng.integers(0, conducting + 1, len(window))
        cycle = np.sort(d, axis=1)[window, -np.maximum(f, 1)] - 1  # last cycle of the f longest alone
        value = currents[np.where(f > 0, cycle, n), window, column]
        zero = np.zeros(len(window), dtype=np.intp)
        inside = (_prefix_scan(w, d, s, window, column, lower, upper, (zero, zero, f))
                  & _prefix_scan(w, d, s, window, column, lower, upper, (value, f, zero + rows + 5)))
    assert leaves.sum() >= cols and np.array_equal(inside, ~leaves.ravel())


class FixedConductance:
    """A ConductanceSource with given integer G+ and G- (no device physics involved)."""

    def __init__(self, plus: np.ndarray, minus: np.ndarray):
        self._selected = {name: SelectedConductance.of(w) for name, w in
                          {"differential": plus - minus, "plus": plus, "minus": minus}.items()}

    def selected(self, select: str) -> SelectedConductance:
        return self._selected[select]


#: sha256 of the counts of `pinned_window_counts`, taken before the window-mode speed-up
#: (issue 5): that work had to leave every count unchanged. A deliberate change of the CCO
#: contract or of the keyed noise changes it; update it then, saying why.
PINNED_COUNTS_SHA256 = "8beb4c637f75f5874d7cd22c74a2bd2acff83044cd1e67a9b4871f58ac8465a3"


def pinned_window_counts():
    """A fixed seeded 256 x 256 workload: integer conductances (no device physics, so no
    platform-dependent float math) of clipped N(0, 1) weights, the hermes-2dev CCO; 1-phase
    and 4-phase windows of dense int8 inputs, of inputs on the first 96 rows only, and of
    inputs aligned with one column's weights (its current saturates at the top or bottom);
    the 1-phase windows of each kind as a batch of their own (a dense drive, rows left out of
    the matmuls, pairs on the exact path)."""
    rng = np.random.default_rng(2024)
    weights = np.clip(rng.standard_normal((256, 256)), -3, 3)
    g = np.rint(weights * 6000).astype(np.int64)
    common = rng.integers(0, 400, (256, 256))
    source = FixedConductance(np.maximum(g, 0) + common, np.maximum(-g, 0) + common)
    keyed = KeyedRng(seed=11, tile=1)
    full_scale_lsb = 2 * np.sqrt(256) * 2**14  # the crossbar's default: 2 sqrt(rows) g_max
    cco = CCO(CcoTransfer.draw(get_preset("hermes-2dev").cco, 256, full_scale_lsb, keyed), source, keyed)
    x = rng.integers(-128, 128, (300, 256))
    x[200:250, 96:] = 0
    aligned = np.sign(weights[:, rng.integers(0, 256, 50)].T) * rng.choice([-1, 1], (50, 1))
    x[250:] = (aligned * rng.integers(40, 129, (50, 256))).astype(int)
    parts = (slice(0, 200), slice(200, 250), slice(250, 300))  # 1-phase: one batch per kind
    windows = [w for part in parts for w in read_mode_windows(x[part], "1-phase")]
    windows += read_mode_windows(x, "4-phase")
    counts = []
    for k, w in enumerate(windows):
        ops = 2**40 + 1000 * k + np.arange(len(w.durations))
        counts.append(cco.window_counts_batch(w.durations, w.polarity, w.select, 128, ops))
    return cco, source, x, np.concatenate(counts)


def test_counts_of_a_full_size_batch_are_pinned(window_path):
    cco, source, x, counts = pinned_window_counts()
    assert counts.shape == (1500, 256) and (counts.min(), counts.max()) == (23, 361)
    lower, upper = cco.transfer.current_limits
    cycle0 = np.sign(x[250:]) @ source.selected("differential").w_int  # the saturating windows
    assert (cycle0 > upper).any() and (cycle0 < lower).any()
    assert hashlib.sha256(counts.astype("<i8").tobytes()).hexdigest() == PINNED_COUNTS_SHA256


def test_batching_does_not_change_counts():
    bar, d, s, select, n, ops = random_case(1234)
    whole = bar.cco.window_counts_batch(d, s, select, n, ops)
    halves = [bar.cco.window_counts_batch(d[k::2], s[k::2], select, n, ops[k::2]) for k in (0, 1)]
    assert np.array_equal(whole[0::2], halves[0]) and np.array_equal(whole[1::2], halves[1])
    reversed_order = bar.cco.window_counts_batch(d[::-1], s[::-1], select, n, ops[::-1])
    assert np.array_equal(reversed_order[::-1], whole)
    shifted = bar.cco.window_counts_batch(d, s, select, n, ops + 1)
    assert not np.array_equal(shifted, whole)  # the output noise is keyed by the operation


def test_fast_path_equals_exact_path_where_nothing_clips(window_path):
    bar, d, s, select, n, _ = random_case(7)
    t, w = bar.cco.transfer, bar.selected(select)
    window, column = (a.ravel() for a in np.meshgrid(np.arange(len(d)), np.arange(bar.cols), indexing="ij"))
    exact = t.exact_advance(w.w_int, d, s, n, window, column).reshape(len(d), bar.cols)
    charge = bar.integrated_charge(d, s, select)
    currents = np.array([[bar.column_currents(np.where(d[b] > c, s[b], 0), select) for c in range(n)]
                         for b in range(len(d))])
    per_cycle = np.clip(t.offset + t.gain * currents, 0, t.fmax).sum(axis=1)
    assert np.array_equal(exact, per_cycle)
    no_clip = ((t.offset + t.gain * currents >= 0) & (t.offset + t.gain * currents <= t.fmax)).all(axis=1)
    assert no_clip.any() and (~no_clip).any()
    assert np.array_equal((n * t.offset + t.gain * charge)[no_clip], exact[no_clip])


def test_ideal_cco_counts_the_charge_linearly():
    bar = Crossbar(CrossbarConfig(preset="ideal", rows=64, cols=16, seed=0))
    bar.program_weights(np.random.default_rng(0).uniform(-1, 1, (64, 16)), op_index=0)
    t = bar.cco.transfer
    expected_gain = np.rint(1.5 * PHASE_PER_PULSE * bar.conductance_lsb_us / bar.i_full_scale_us)
    assert (t.gain == expected_gain).all() and (t.offset == 3 * PHASE_PER_PULSE // 2).all()
    assert bar.i_full_scale_us == pytest.approx(2 * np.sqrt(64) * 25.0)
    x = np.random.default_rng(1).integers(-128, 128, (20, 64))
    (window,) = read_mode_windows(x, "1-phase")
    counts = bar.cco.window_counts_batch(window.durations, window.polarity, "differential", 128,
                                         np.arange(20))
    charge = bar.integrated_charge(window.durations, window.polarity, "differential")
    phase = PHASE_PER_PULSE // 2 + 128 * t.offset + t.gain * charge
    assert np.array_equal(counts, phase // PHASE_PER_PULSE)


def test_output_noise_shifts_the_count_by_keyed_normal_phase():
    """Idle window: count = 150 + floor(0.5 + u), u ~ N(0, 0.3) with the start phase capped below
    one pulse, so count - 150 = k <= 0 with P(k) = P(k - 0.5 <= u < k + 0.5) for k < 0."""
    from scipy.stats import norm

    sigma = 0.3
    preset = dataclasses.replace(get_preset("ideal"), cco=dataclasses.replace(
        get_preset("ideal").cco, output_noise_pulses=sigma))
    bar = Crossbar(CrossbarConfig(preset=preset, rows=4, cols=512))
    counts = bar.cco.window_counts_batch(np.zeros((400, 4), int), np.ones((400, 4), int), "differential",
                                         100, np.arange(400))
    k = np.arange(-6, 0)
    p = norm.cdf((k + 0.5) / sigma) - norm.cdf((k - 0.5) / sigma)
    mean = (k * p).sum()
    assert counts.max() == 150
    assert counts.mean() - 150 == pytest.approx(mean, rel=0.03)
    assert counts.std() == pytest.approx(np.sqrt((k**2 * p).sum() - mean**2), rel=0.03)


def test_integrated_charge_is_the_exact_integer_sum_of_the_cycle_currents(window_path):
    bar = Crossbar(CrossbarConfig(preset="hermes-2dev", rows=48, cols=12, seed=3))
    bar.program_weights(np.random.default_rng(3).standard_normal((48, 12)), op_index=0)
    rng = np.random.default_rng(4)
    d, s = rng.integers(0, 129, (5, 48)), rng.choice([-1, 1], (5, 48))
    for select in SELECTS:
        w = {"differential": bar.read_int()[..., 0] - bar.read_int()[..., 1],
             "plus": bar.read_int()[..., 0], "minus": bar.read_int()[..., 1]}[select]
        charge = bar.integrated_charge(d, s, select)
        assert charge.dtype == np.int64 and np.array_equal(charge, (d * s) @ w)  # int64 matmul: exact
        assert np.array_equal(bar.integrated_charge(d[2], s[2], select), charge[2])
        cycles = sum(bar.column_currents(np.where(d[2] > c, s[2], 0), select) for c in range(128))
        assert np.array_equal(cycles, charge[2])


def test_exactness_bound_is_enforced():
    with pytest.raises(ConfigError, match=r"rows x cycles x max conductance must be < 2\*\*53"):
        check_exact(SelectedConductance.of(np.full((4, 1), 2**51, dtype=np.int64)), 4)


@pytest.mark.parametrize("preset", ["pcm", "hermes-2dev"])
def test_four_phase_windows_combine_to_the_one_phase_charge(preset):
    bar = Crossbar(CrossbarConfig(preset=preset, rows=32, cols=8, seed=1))
    bar.program_weights(np.random.default_rng(1).uniform(-1, 1, (32, 8)), op_index=0)
    x = np.random.default_rng(2).integers(-128, 128, (7, 32))
    (one,) = read_mode_windows(x, "1-phase")
    four = read_mode_windows(x, "4-phase")
    assert [(w.select, w.sign) for w in four] == [("plus", 1), ("minus", -1), ("plus", -1), ("minus", 1)]
    assert all((w.polarity == 1).all() and (w.durations >= 0).all() for w in four)
    combined = sum(w.sign * bar.integrated_charge(w.durations, w.polarity, w.select) for w in four)
    expected = x @ (bar.read_int()[..., 0] - bar.read_int()[..., 1])
    assert np.array_equal(combined, expected)
    assert np.array_equal(bar.integrated_charge(one.durations, one.polarity, one.select), expected)


def test_ir_drop_attenuates_by_position_and_keeps_the_charge_linear():
    weights = np.ones((64, 64))
    plain = Crossbar(CrossbarConfig(preset="ideal", rows=64, cols=64))
    dropped = Crossbar(CrossbarConfig(preset="ideal", rows=64, cols=64, ir_drop_wire_ohm=2.0))
    for bar in (plain, dropped):
        bar.program_weights(weights, op_index=0)
    ratio = dropped.read_int()[..., 0] / plain.read_int()[..., 0]
    assert (ratio <= 1).all() and ratio.min() < 0.9
    assert ratio[-1, 0] == ratio.max() and ratio[0, -1] == ratio.min()  # near driver and CCO vs. far
    assert (np.diff(ratio, axis=1) <= 1e-4).all() and (np.diff(ratio, axis=0) >= -1e-4).all()
    rng = np.random.default_rng(0)
    d1, d2 = rng.integers(0, 64, 64), rng.integers(0, 64, 64)
    ones = np.ones(64, dtype=int)
    q = [dropped.integrated_charge(d, ones, "differential") for d in (d1, d2, d1 + d2)]
    assert np.array_equal(q[0] + q[1], q[2])


def test_dead_columns_count_only_the_offset():
    bar = Crossbar(CrossbarConfig(preset="ideal", rows=16, cols=64, faults=FaultRates(dead_column=0.3)))
    bar.program_weights(np.ones((16, 64)), op_index=0)
    dead = bar.devices.faults["dead_column"]
    assert dead.any() and not dead.all()
    counts = bar.cco.window_counts(np.full(16, 100), np.ones(16, int), "differential", 100, op_index=0)
    assert (counts[dead] == 150).all() and (counts[~dead] > 150).all()


@pytest.fixture(scope="module")
def small_bar():
    bar = Crossbar(CrossbarConfig(preset="pcm", rows=4, cols=3))
    bar.program_weights(np.ones((4, 3)), op_index=0)
    return bar


@pytest.mark.parametrize("call, message", [
    (lambda b: b.cco.window_counts([1, 2, 3, 17], [1] * 4, "plus", 16, 0),
     r"durations must be within \[0, 16\] cycles \(n_window_cycles = 16\), not 17 at index \(3,\)"),
    (lambda b: b.cco.window_counts([1, -2, 3, 4], [1] * 4, "plus", 16, 0),
     r"durations must be within \[0, 16\]"),
    (lambda b: b.cco.window_counts([1, 2, 3, 4], [1, 1, 0, 1], "plus", 16, 0),
     r"polarity must be \+1 or -1, not 0 at index \(2,\)"),
    (lambda b: b.cco.window_counts([1, 2, 3], [1] * 3, "plus", 16, 0),
     r"durations must have shape \(4\), not \(3,\)"),
    (lambda b: b.cco.window_counts([1.0] * 4, [1] * 4, "plus", 16, 0), r"durations must be an integer array"),
    (lambda b: b.cco.window_counts([1] * 4, [1] * 4, "both", 16, 0),
     r"select must be one of 'differential', 'plus', 'minus', not 'both'"),
    (lambda b: b.cco.window_counts([1] * 4, [1] * 4, "plus", 0, 0),
     r"n_window_cycles must be an integer within \[1, "),
    (lambda b: b.cco.window_counts([1] * 4, [1] * 4, "plus", 16, -1),
     r"op_index must be an integer within \[0, "),
    (lambda b: b.cco.window_counts_batch(np.ones((2, 4), int), np.ones((2, 4), int), "plus", 16, [0]),
     r"op_indices must have shape \(2\), not \(1,\)"),
    (lambda b: b.cco.window_counts_batch(np.ones((2, 4), int), np.ones((2, 4), int), "plus", 16, [0, -3]),
     r"op_indices must be >= 0, not -3"),
    (lambda b: b.column_currents([0, 1, 2, 0], "plus"),
     r"row_drive must be within \[-1, 1\], not 2 at index \(2,\)"),
    (lambda b: b.cco.step(np.zeros(4, int)), r"currents must have shape \(3\), not \(4,\)"),
    (lambda b: b.integrated_charge(np.ones((1, 2, 4), int), np.ones((1, 2, 4), int), "plus"),
     r"durations must have shape \(rows,\) or \(B, rows\), not \(1, 2, 4\)"),
    (lambda b: read_mode_windows(np.ones(4, int), "2-phase"),
     r"read_mode must be one of '1-phase', '4-phase'"),
    (lambda b: read_mode_windows(np.ones((1, 1, 4), int), "1-phase"),
     r"inputs must have shape \(rows,\) or \(B, rows\), not \(1, 1, 4\)"),
])
def test_bad_window_arguments_are_named(small_bar, call, message):
    with pytest.raises(ConfigError, match=message):
        call(small_bar)


def test_step_before_start_window_is_an_error():
    bar = Crossbar(CrossbarConfig(preset="pcm", rows=2, cols=2))
    with pytest.raises(ConfigError, match=r"start_window must be called before step"):
        bar.cco.step(np.zeros(2, int))


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "nope"},
     r"preset must be one of 'pcm', 'hermes-2dev', 'hermes-1dev', 'projected', 'ideal', not 'nope'"),
    ({"rows": 0}, r"rows must be an integer within \[1, 65536\], not 0"),
    ({"conductance_lsb_us": -1.0}, r"conductance_lsb_us must be within \[.*, 20.7\] uS, not -1.0"),
    ({"i_full_scale_us": 1e-9}, r"i_full_scale_us must be finite and >= 0.0012.* uS, not 1e-09"),
    ({"ir_drop_wire_ohm": -1.0}, r"ir_drop_wire_ohm must be within \[0.0, 1000000.0\] ohm, not -1.0"),
    ({"seed": 2**64}, r"seed must be an integer within \[0, 18446744073709551615\]"),
])
def test_bad_crossbar_configuration_is_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Crossbar(CrossbarConfig(**kwargs))
