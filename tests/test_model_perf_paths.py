"""The window model's speed paths give the counts of the plain definitions, code for code.

One window alone (the cosim's transaction mode), batches that take the exact scan from the band
test's start and run in two threads, and the rewritten elementwise tail (keyed noise, pulses) are
each compared with what they replace: single-window calls, brute-force per-cycle currents, the
former IEEE operation sequences. Workload of the twin benchmark: 256 x 256, hermes-2dev, uniform
weights programmed through PROGRAM_ROW, uniform int8 inputs (host/bench.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pcmhil.model import cco, drive, get_preset, keyed_rng, window_worker
from pcmhil.model.analog_tile import PROGRAM_TARGET, make_analog_tiles
from pcmhil.model.cco import PHASE_PER_PULSE, CcoTransfer
from pcmhil.model.drive import SelectedConductance, currents_may_leave, single_threaded_blas
from pcmhil.model.keyed_rng import KeyedRng, Stream, splitmix64


def bench_tile(seed: int = 0, rows: int = 256, cols: int = 256):
    (tile,) = make_analog_tiles(rows, cols, 1, preset="hermes-2dev", seed=seed)
    w = np.random.default_rng(seed).uniform(-1, 1, (rows, cols))
    for row in range(rows):
        tile.program_row(row, np.rint(np.maximum(w[row], 0) * 255), np.rint(np.maximum(-w[row], 0) * 255),
                         PROGRAM_TARGET)
    return tile


def test_a_batch_equals_its_windows_one_at_a_time(window_path):
    """A batch large enough for every batch path (band test with scan starts, exact scan over
    the failed bands, two threads) gives each window the counts it gets alone, in the same
    operation order; also for mixed selects (4-phase windows) and for windows that leave rows
    undriven. On each `window_path`: numpy's, the int8 GEMM's, and with the per-pair loops
    compiled (whose batches split into threads from 128 windows)."""
    x = np.random.default_rng(7).integers(-128, 128, (max(600, cco._PARALLEL_MIN_WINDOWS + 1), 256))
    x[:40, 200:] = 0
    drives = [(np.abs(x), x < 0, np.zeros(len(x), int)),
              (np.abs(x[:90]), np.zeros((90, 256), bool), np.arange(90) % 3)]
    batched, single = bench_tile(), bench_tile()
    for durations, negative, select in drives:
        whole = batched.windows(durations, negative, select, 128)
        alone = np.concatenate([single.windows(durations[k:k + 1], negative[k:k + 1], select[k:k + 1], 128)
                                for k in range(len(durations))])
        assert np.array_equal(whole, alone)
    assert batched.window_index == single.window_index == 690


def test_two_threads_give_the_same_counts_at_any_split(monkeypatch):
    """The caller's share of a batch split between two threads follows their speeds and
    changes no count: shares at both bounds give the counts of equal halves."""
    x = np.random.default_rng(5).integers(-128, 128, (max(300, window_worker.MIN_WINDOWS), 256))
    counts = []
    for share in (0.5, cco._ThreadShare.LOW, cco._ThreadShare.HIGH):
        split = cco._ThreadShare()
        split.share = share
        updates = []
        monkeypatch.setattr(split, "update", lambda *times, _u=updates: _u.append(times))
        monkeypatch.setattr(cco, "_thread_share", split)
        monkeypatch.setattr(cco, "_PARALLEL_MIN_WINDOWS", 1)  # threads on numpy's path too,
        monkeypatch.setattr(window_worker, "for_large_batch", lambda: None)  # not the worker process
        counts.append(bench_tile().windows(np.abs(x), x < 0, np.zeros(len(x), int), 128))
        # split as the share says, both halves timed
        ((caller, caller_s, other, other_s),) = updates
        assert caller == split.split(len(x)) and other == len(x) - caller and caller_s > 0 and other_s > 0
    assert np.array_equal(counts[0], counts[1]) and np.array_equal(counts[0], counts[2])


def test_an_error_in_the_callers_half_waits_for_the_other_half(monkeypatch):
    """When the caller's half of a two-thread batch raises, the error leaves only after the
    other half has ended (no thread goes on writing into the batch's counts)."""
    import threading
    import time

    ended = []
    caller = threading.get_ident()

    def counts(t, rng, w, d, s, n, ops, coarse=False, out=None):
        if threading.get_ident() == caller:
            raise RuntimeError("the caller's half failed")
        time.sleep(0.2)
        ended.append(len(d))
        return out

    monkeypatch.setattr(cco, "window_counts", counts)
    monkeypatch.setattr(cco, "_PARALLEL_MIN_WINDOWS", 1)
    monkeypatch.setattr(window_worker, "for_large_batch", lambda: None)
    x = np.random.default_rng(6).integers(-128, 128, (max(300, window_worker.MIN_WINDOWS), 256))
    with pytest.raises(RuntimeError, match="caller's half failed"):
        bench_tile().windows(np.abs(x), x < 0, np.zeros(len(x), int), 128)
    assert ended == [len(x) - cco._thread_share.split(len(x))]


def test_thread_share_moves_towards_the_faster_thread_within_bounds():
    split = cco._ThreadShare()
    assert split.split(1000) == 500 and split.split(2) == 1
    split.update(500, 0.006, 500, 0.003)  # the caller took twice as long per window
    assert split.share == pytest.approx(0.5 * (0.5 + 1 / 3))
    for _ in range(20):
        split.update(500, 0.009, 500, 0.001)
    assert split.share == cco._ThreadShare.LOW and split.split(1000) == 250
    split.update(500, 0.0, 500, 0.0)  # no time measured: unchanged
    assert split.share == cco._ThreadShare.LOW
    for _ in range(20):
        split.update(500, 0.001, 500, 0.009)
    assert split.share == cco._ThreadShare.HIGH and split.split(3) == 2


def test_path_choice_takes_the_faster_proof_and_keeps_timing_the_other(monkeypatch):
    """`drive._PathChoice`: the band test until one of its calls is timed (the first
    _WARM_CALLS are not), then the walk likewise, then the one whose moving average per window
    is lower, with the other on every _PROBE_EVERY-th call; when the other becomes the faster,
    the choice follows. A later choice for the same shape takes the walk's figure from the
    first (no trial of a walk slower than its band test); another shape tries the walk."""
    monkeypatch.setattr(drive, "_WALK_COSTS", {})
    choice = drive._PathChoice((256, 256))
    for walk, per_window in ((False, 100e-6), (True, 50e-6)):  # then: band test 100 us a window, walk 50
        for _ in range(drive._WARM_CALLS):
            assert choice.walk_next() == walk
            choice.took(walk, 100, 1.0)  # not timed: as slow as you like
        assert choice.walk_next() == walk
        choice.took(walk, 100, 100 * per_window)
    assert choice.cost == [100e-6, 50e-6] and drive._WALK_COSTS == {(256, 256): 50e-6}
    picks = [choice.walk_next() for _ in range(2 * drive._PROBE_EVERY)]
    assert picks.count(False) == 2 and not picks[drive._PROBE_EVERY - 1] and not picks[-1]
    for _ in range(12):
        choice.took(False, 100, 0.002)  # the drive changed: the band test now 20 us a window
    picks = [choice.walk_next() for _ in range(2 * drive._PROBE_EVERY)]
    assert picks.count(True) == 2
    for shape, trial in (((256, 256), False), ((256, 128), True)):
        other = drive._PathChoice(shape)
        for _ in range(drive._WARM_CALLS + 1):
            assert not other.walk_next()
            other.took(False, 100, 0.003)  # band test 30 us a window
        assert other.walk_next() == trial


def test_scan_from_the_band_test_lists_every_pair_that_clips():
    """The batch path's list of pairs that may clip (band test, then the exact scan over the
    bands each pair failed, from the exact current at their end) holds every pair whose
    current leaves its limits in some cycle (brute force over all cycles), and few others."""
    tile = bench_tile()
    w, transfer = tile.crossbar.selected("differential"), tile.crossbar.cco.transfer
    lower, upper = transfer.current_limits
    bounds = w.bounds(lower, upper)
    x = np.random.default_rng(8).integers(-128, 128, (200, 256))
    d, s = np.abs(x), np.where(x < 0, -1, 1)
    assert bounds.exact32
    with single_threaded_blas():
        listed = np.zeros(d.shape[:1] + lower.shape, dtype=bool)
        listed[currents_may_leave(w, d, s, 128, lower, upper)] = True
        currents = np.stack([((d > c) * s).astype(float) @ w.w for c in range(128)])  # exact integers
    leaves = (currents.max(axis=0) > upper) | (currents.min(axis=0) < lower)
    failed_band_test = bounds._band_test(d, s, 128, dense=True)
    assert len(failed_band_test.window) >= drive._SCAN_MIN_PAIRS  # the scan ran, from the band starts
    assert failed_band_test.start is not None
    assert leaves.sum() >= 20 and not (leaves & ~listed).any()
    assert (listed & ~leaves).sum() <= leaves.sum()


@pytest.mark.parametrize("bands, n", [(2, 128), (5, 128), (8, 4095), (5, 3), (8, 1)])
def test_band_edges_start_at_zero_and_cover_the_window(bands, n):
    edges = drive._band_edges(bands, n)
    assert edges[0] == 0 and (np.diff(edges) >= 0).all() and edges[-1] < n and len(edges) == bands
    assert not edges.flags.writeable


def test_band_count_adapts_to_the_failing_pairs_and_ignores_stale_tests():
    """One band more above _MORE_BANDS_ABOVE of the pairs failing, one fewer below
    _FEWER_BANDS_BELOW, within [2, _MAX_BANDS]; a test made with another band count than the
    current one (the other thread's half, begun before a change) moves nothing."""
    rng = np.random.default_rng(3)
    w = SelectedConductance.of(rng.integers(-1000, 1001, (64, 32)))
    bounds = w.bounds(-(w.reach // 4), w.reach // 4)
    pairs = drive._ADAPT_WINDOWS * len(bounds.cols)
    bounds.bands = 4
    bounds._adapt_bands(drive._ADAPT_WINDOWS, int(0.05 * pairs), 4)
    assert bounds.bands == 5
    bounds._adapt_bands(drive._ADAPT_WINDOWS, int(0.05 * pairs), 4)  # made with 4 bands: stale
    assert bounds.bands == 5
    bounds._adapt_bands(drive._ADAPT_WINDOWS // 2, 0, 5)  # judged once _ADAPT_WINDOWS are seen
    assert bounds.bands == 5
    bounds._adapt_bands(drive._ADAPT_WINDOWS // 2, 0, 5)
    assert bounds.bands == 4
    bounds.bands = drive._MAX_BANDS
    bounds._adapt_bands(drive._ADAPT_WINDOWS, pairs, drive._MAX_BANDS)
    assert bounds.bands == drive._MAX_BANDS
    bounds.bands = 2
    bounds._adapt_bands(drive._ADAPT_WINDOWS, 0, 2)
    assert bounds.bands == 2


def former_cumulative_pulses(t: CcoTransfer, phase: np.ndarray) -> np.ndarray:
    """The operation sequence before the tail was shortened (the reference)."""
    u = np.maximum(phase, 0, dtype=np.float64)
    if t.knee > 0:
        k = 0.5 / t.knee
        v = np.subtract(t.knee, np.minimum(u, t.knee, out=u), out=u)
        kv2 = np.multiply(v, v, out=u)
        kv2 *= k
        u = np.subtract(k * (t.knee * t.knee), kv2, out=u)
        u *= 1.0 - 2.0**-20
    u *= 1.0 / PHASE_PER_PULSE
    return np.floor(u, out=u).astype(np.int64)


def former_initial_phase(t: CcoTransfer, rng: KeyedRng, ops: np.ndarray) -> np.ndarray:
    phase = rng.normal(Stream.CCO_OUTPUT, ops, len(t.gain))
    phase *= t.output_noise_pulses
    phase += 0.5
    phase *= PHASE_PER_PULSE
    np.rint(phase, out=phase)
    return np.minimum(phase, PHASE_PER_PULSE - 1, out=phase)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.9])
def test_the_shortened_tail_computes_the_same_floats(beta):
    """Initial phase and pulses with one multiplication fewer each (scalings by powers of two
    are exact) and no floor (the value is >= 0) give the former results bit for bit, at random
    phases, at the knee, at 0 and at pulse boundaries."""
    preset = get_preset("hermes-2dev")
    cco_preset = dataclasses.replace(preset.cco, nonlinearity_beta=beta, output_noise_pulses=0.37)
    rng = KeyedRng(5, 2)
    t = CcoTransfer.draw(cco_preset, 64, 2.0**20, rng)
    ops = np.arange(3000, 3400, dtype=np.uint64)
    assert np.array_equal(t.initial_phase(rng, ops), former_initial_phase(t, rng, ops))
    g = np.random.default_rng(beta == 0)
    phase = np.concatenate([g.integers(-2**40, 2**50, 200_000), np.arange(-5, 5),
                            np.arange(1, 2**12) * PHASE_PER_PULSE + g.integers(-2, 3, 2**12 - 1)])
    if t.knee:
        phase = np.concatenate([phase, np.rint(t.knee) + np.arange(-3, 4)]).astype(np.int64)
    for values in (phase, phase.astype(np.float64)):
        assert np.array_equal(t.cumulative_pulses(values), former_cumulative_pulses(t, values))


@pytest.mark.parametrize("beta, sigma", [(0.0, 0.1), (0.3, 0.37), (0.02, 3.0), (0.3, 0.0)])
def test_counts_from_the_noise_brackets_equal_the_counts_from_phi0(beta, sigma):
    """counts_after (phi_0 bracketed by its hash's bin, ndtri only where the bracket's ends
    give different counts) gives cumulative_pulses(initial_phase + advance) code for code: at
    random advances, and at advances that put a pulse boundary 0 or 1 phase unit from every
    element's phi_0 (every bracket open: the exact path), also in the bins at the ends of the
    uniform range (|z| up to 8.3) and with sigma_out 0 (no noise)."""
    preset = get_preset("hermes-2dev")
    cco_preset = dataclasses.replace(preset.cco, nonlinearity_beta=beta, output_noise_pulses=sigma)
    rng = KeyedRng(3, 1)
    t = CcoTransfer.draw(cco_preset, 256, 2.0**20, rng)
    ops = np.arange(900, 1200, dtype=np.uint64)
    g = np.random.default_rng(int(beta * 100 + sigma * 10))
    phi0 = t.initial_phase(rng, ops)
    pulses = g.integers(0, 400, phi0.shape).astype(np.float64) * PHASE_PER_PULSE
    edge = np.rint(t.knee) if t.knee else 0.0
    near = g.integers(-2, 3, phi0.shape)
    for advance in (np.rint(g.uniform(-2.0**33, 2.0**42, phi0.shape)),
                    pulses - phi0, pulses - phi0 - 1, pulses - phi0 + 1, edge - phi0 + near):
        expected = t.cumulative_pulses(phi0 + advance)
        assert np.array_equal(t.counts_after(rng, ops, advance), expected)
        few = cco._BRACKET_MIN_WINDOWS - 1  # a few windows take phi_0 itself
        assert np.array_equal(t.counts_after(rng, ops[:few], advance[:few]), expected[:few])
    if sigma:
        bins = np.right_shift(rng.bits(Stream.CCO_OUTPUT, ops, 256), np.uint64(64 - cco._NOISE_BIN_BITS))
        assert bins.min() < 8 and bins.max() >= 2**cco._NOISE_BIN_BITS - 8  # the wide bins of the tails ran


def test_few_values_hash_as_python_integers_alike():
    """splitmix64 of up to a few values (one window's operation index) runs on Python integers:
    the same hashes as the numpy loop, also at the ends of the uint64 range."""
    x = np.random.default_rng(10).integers(0, 2**64 - 1, 64, dtype=np.uint64, endpoint=True)
    x[:3] = [0, 2**64 - 1, 2**63]
    whole = splitmix64(x)
    assert len(x) > keyed_rng._FEW_VALUES
    for count in range(1, keyed_rng._FEW_VALUES + 1):
        assert np.array_equal(splitmix64(x[:count]), whole[:count])
        assert np.array_equal(splitmix64(x[:count].reshape(count, 1)), whole[:count, None])


def test_single_threaded_blas_restores_the_thread_counts():
    libraries = drive._blas_libraries()
    before = [library.num_threads for library in libraries]
    with single_threaded_blas():
        with single_threaded_blas():
            assert all(library.num_threads == 1 for library in libraries)
        assert all(library.num_threads == 1 for library in libraries)
    assert [library.num_threads for library in libraries] == before


def test_restricted_select_is_kept_for_the_same_rows():
    w = SelectedConductance.of(np.arange(24).reshape(6, 4) - 10)
    rows = np.array([0, 2, 5])
    first = w.restricted(rows)
    assert w.restricted(rows.copy()) is first and np.array_equal(first.w_int, w.w_int[rows])
    assert w.restricted(np.array([1, 2])) is not first
