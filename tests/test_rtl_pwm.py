"""PWM row drivers against numerics.md sections 1 and 2: durations, polarities and masks of every
window kind, and the exact cycle of win_start / win_active / drive_en / last against the window's
cycle index, on registered outputs."""

from __future__ import annotations

import numpy as np
import pytest
from rtl_sim import simulate
from rtl_tile_bench import bits_of_words

from pcmhil.interface import (
    BYTES_PER_BEAT,
    FOUR_PHASE_WINDOWS,
    INPUT_MAX,
    INPUT_MIN,
    PWM_MAX_CYCLES,
    DeviceSelect,
    Geometry,
)
from pcmhil.rtl.pwm import START_LATENCY, PwmDriver

GEOMETRY = Geometry(rows=12, cols=4)

ONE_PHASE = {"select": DeviceSelect.DIFFERENTIAL, "positive": 1, "negative": 1, "bipolar": 1}
FOUR_PHASE = [{"select": select, "positive": int(sign > 0), "negative": int(sign < 0), "bipolar": 0}
              for sign, select, _ in FOUR_PHASE_WINDOWS]


def expected_drive(x: np.ndarray, window: dict) -> tuple[np.ndarray, np.ndarray]:
    """numerics 1: (d_i, drive_neg_i) of a window."""
    conducts = np.where(x > 0, window["positive"], np.where(x < 0, window["negative"], 0))
    return np.where(conducts, np.abs(x), 0), (x < 0) & bool(window["bipolar"])


def _words(x: np.ndarray) -> list[int]:
    data = x.astype(np.int8).view(np.uint8)
    return [int.from_bytes(data[k:k + BYTES_PER_BEAT].tobytes(), "little")
            for k in range(0, len(data), BYTES_PER_BEAT)]


def _trace(vectors: list[tuple[np.ndarray, list[tuple[dict, int]]]]):
    """For each (x, windows): load x, run the windows back to back. Per window, the boundary
    seen in every cycle from the one after the start strobe until busy has fallen."""
    dut = PwmDriver(GEOMETRY)
    traces = []

    async def bench(ctx):
        for x, windows in vectors:
            await _load(ctx, dut, x)
            for window, cycles in windows:
                traces.append(await _window(ctx, dut, window, cycles))

    simulate(dut, bench)
    return traces


async def _load(ctx, dut, x):
    for word in _words(x):
        ctx.set(dut.control.load.valid, 1)
        ctx.set(dut.control.load.payload, word)
        await ctx.tick()
    ctx.set(dut.control.load.valid, 0)


async def _window(ctx, dut, window, cycles):
    ctx.set(dut.control.drive, window)
    ctx.set(dut.control.cycles, cycles)
    ctx.set(dut.control.start, 1)
    await ctx.tick()
    ctx.set(dut.control.start, 0)
    seen = []
    while True:
        seen.append({
            "busy": ctx.get(dut.control.busy),
            "setup": ctx.get(dut.setup),
            "start": ctx.get(dut.win_start),
            "active": ctx.get(dut.win_active),
            "last": ctx.get(dut.last),
            "count_enable": ctx.get(dut.count_enable),
            "select": ctx.get(dut.win_select),
            "cycles": ctx.get(dut.win_cycles),
            "full": ctx.get(dut.win_full),
            "en": bits_of_words([ctx.get(w) for w in dut.drive_en], 64),
            "neg": bits_of_words([ctx.get(w) for w in dut.drive_neg], 64),
            "mag": bits_of_words([ctx.get(w) for w in dut.drive_mag], 8 * len(dut.drive_mag), 8),
        })
        if not seen[-1]["busy"] and len(seen) > 1:
            return seen
        await ctx.tick()


def _check_window(trace, x, window: dict, cycles: int) -> None:
    rows = GEOMETRY.rows
    durations, negative = expected_drive(x, window)
    # the first START_LATENCY - 1 entries are busy but not yet active, window cycle c is entry
    # c + START_LATENCY - 1, the entry after the window's last cycle is idle
    lead = START_LATENCY - 1
    assert all(seen["busy"] and not seen["active"] and not seen["en"].any() for seen in trace[:lead])
    assert [seen["setup"] for seen in trace] == [0] * (lead - 1) + [1] + [0] * (len(trace) - lead)
    body = trace[lead:lead + cycles]
    assert len(trace) == lead + cycles + 1 and not trace[-1]["busy"] and not trace[-1]["active"]
    for c, seen in enumerate(body):
        assert seen["busy"] and seen["active"]
        assert seen["start"] == (c == 0)
        assert seen["last"] == (c == cycles - 1)
        assert seen["select"] == window["select"] and seen["cycles"] == cycles
        conducting = durations > 0 if window.get("full") else c < durations
        np.testing.assert_array_equal(seen["en"][:rows], conducting, err_msg=f"cycle {c}")
        np.testing.assert_array_equal(seen["neg"][:rows], negative)
        np.testing.assert_array_equal(seen["mag"][:rows], durations)
        # pad bits of the Out words are 0
        assert not seen["en"][rows:].any() and not seen["neg"][rows:].any() and not seen["mag"][rows:].any()
    assert not trace[-1]["en"].any() and not trace[-1]["start"]
    # cycle mode (the test's): the counters take a value in every window cycle
    assert [t["count_enable"] for t in trace] == [t["active"] for t in trace]


@pytest.mark.parametrize("cycles", [PWM_MAX_CYCLES, PWM_MAX_CYCLES + 5])
def test_one_and_four_phase_windows(cycles):
    rng = np.random.default_rng(cycles)
    x = np.concatenate([[INPUT_MIN, INPUT_MAX, 0, -1, 1],
                        rng.integers(INPUT_MIN, INPUT_MAX + 1, GEOMETRY.rows - 5)])
    windows = [(ONE_PHASE, cycles)] + [(w, cycles) for w in FOUR_PHASE]
    traces = _trace([(x, windows)])
    for trace, (window, n) in zip(traces, windows, strict=True):
        _check_window(trace, x, window, n)


def test_full_window_drives_for_all_cycles():
    """VERIFY_ROW's full windows (win_full): a row with a non-zero duration conducts for all W
    cycles, whatever its duration."""
    x = np.zeros(GEOMETRY.rows, dtype=np.int64)
    x[5] = INPUT_MIN
    window = {"select": DeviceSelect.PLUS, "positive": 0, "negative": 1, "bipolar": 0, "full": 1}
    cycles = PWM_MAX_CYCLES + 40
    trace, = _trace([(x, [(window, cycles)])])
    _check_window(trace, x, window, cycles)
    assert trace[START_LATENCY]["full"] == 1


def test_short_windows_and_reload():
    """A window of W cycles drives c < min(d_i, W); loading a new vector replaces every row."""
    first = np.full(GEOMETRY.rows, INPUT_MIN)
    first[3] = 2
    second = -np.arange(GEOMETRY.rows)
    vectors = [(first, [(ONE_PHASE, 3), (FOUR_PHASE[2], 1)]), (second, [(ONE_PHASE, PWM_MAX_CYCLES)])]
    traces = iter(_trace(vectors))
    for x, windows in vectors:
        for window, cycles in windows:
            _check_window(next(traces), x, window, cycles)
