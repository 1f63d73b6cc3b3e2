"""ADC counters against numerics.md section 3 in both boundary modes: restart at cycle 0 and
per-cycle accumulation (cycle mode), load at e_W (transaction mode), clamping, the number of
saturated column-windows."""

from __future__ import annotations

import numpy as np
from rtl_sim import simulate
from rtl_tile_bench import words_of_lanes

from pcmhil.interface import (
    CCO_COUNT_LANE_BITS,
    CCO_PULSE_BITS,
    COUNTER_MAX,
    BoundaryLayout,
    Geometry,
)
from pcmhil.rtl.adc_counters import AdcCounters

GEOMETRY = Geometry(rows=4, cols=36)  # two cco_pulses words, nine cco_count words
LAY = BoundaryLayout(GEOMETRY)
PULSES_MAX = 2**CCO_PULSE_BITS - 1


def _set_words(ctx, words, lanes, bits):
    for word, value in zip(words, words_of_lanes(lanes, bits, len(words)), strict=True):
        ctx.set(word, value)


async def _window(ctx, dut, cycles: int, pulses=None, count=None, idle_pulses=None):
    """Drive one window as the PWM driver does (setup in the cycle before cycle 0, last in
    cycle W-1) with per-cycle pulses (cycle mode) or a count presented in cycle W-1
    (transaction mode). Returns the saturation sums reported after it."""
    cols = GEOMETRY.cols
    if idle_pulses is not None:  # pulses outside a window are not counted
        _set_words(ctx, dut.cco_pulses, idle_pulses, CCO_PULSE_BITS)
        await ctx.tick().repeat(3)
    ctx.set(dut.setup, 1)
    await ctx.tick()
    ctx.set(dut.setup, 0)
    transaction = ctx.get(dut.boundary_mode)
    for c in range(cycles):
        ctx.set(dut.last, c == cycles - 1)
        ctx.set(dut.count_enable, c == cycles - 1 if transaction else 1)
        if pulses is not None:
            _set_words(ctx, dut.cco_pulses, pulses[c], CCO_PULSE_BITS)
        if count is not None:
            lanes = count if c == cycles - 1 else [0xFFFF] * cols
            _set_words(ctx, dut.cco_count, lanes, CCO_COUNT_LANE_BITS)
        await ctx.tick()
    ctx.set(dut.last, 0)
    ctx.set(dut.count_enable, 0)
    if idle_pulses is not None:
        _set_words(ctx, dut.cco_pulses, idle_pulses, CCO_PULSE_BITS)
    sums = []
    while True:
        if ctx.get(dut.saturations.valid):
            sums.append(ctx.get(dut.saturations.payload))
        if not ctx.get(dut.busy):
            return sums
        await ctx.tick()


def _counts(ctx, dut) -> list[int]:
    return [ctx.get(dut.counts[j]) for j in range(GEOMETRY.cols)]


def test_cycle_mode_counts_clamp_and_saturation():
    dut = AdcCounters(GEOMETRY)
    rng = np.random.default_rng(3)
    cols = GEOMETRY.cols
    cycles = 1400  # 3 pulses per cycle for 1400 cycles = 4200 > COUNTER_MAX
    rate = rng.integers(0, PULSES_MAX + 1, size=cols)
    steady = np.arange(cols) < 5  # saturate: 3 pulses every cycle
    pulses = [np.where(steady | (rng.random(cols) < 0.9), rate | steady * PULSES_MAX,
                       rng.integers(0, PULSES_MAX + 1, cols)) for _ in range(cycles)]
    pulses_total = np.sum(pulses, axis=0)
    short = [rng.integers(0, PULSES_MAX + 1, size=cols) for _ in range(130)]
    seen = {}

    async def bench(ctx):
        ctx.set(dut.boundary_mode, 0)
        seen["first"] = await _window(ctx, dut, cycles, pulses=pulses, idle_pulses=[PULSES_MAX] * cols)
        seen["counts"] = _counts(ctx, dut)
        await ctx.tick().repeat(5)  # the counts stay until the next window
        seen["held"] = _counts(ctx, dut)
        # a second window restarts from 0 and clears the saturation flags
        seen["second"] = await _window(ctx, dut, len(short), pulses=short, idle_pulses=[PULSES_MAX] * cols)
        seen["short"] = _counts(ctx, dut)

    simulate(dut, bench)
    assert seen["counts"] == seen["held"] == list(np.minimum(pulses_total, COUNTER_MAX))
    assert seen["first"] == [int(np.count_nonzero(pulses_total > COUNTER_MAX))]
    assert seen["first"][0] >= 5
    assert seen["short"] == list(np.sum(short, axis=0))
    assert seen["second"] == [0]


def test_transaction_mode_loads_at_the_last_cycle():
    dut = AdcCounters(GEOMETRY)
    cols = GEOMETRY.cols
    count = np.arange(cols) * 97 % 5000
    count[:4] = [COUNTER_MAX, COUNTER_MAX + 1, 2**CCO_COUNT_LANE_BITS - 1, 0]
    seen = {}

    async def bench(ctx):
        ctx.set(dut.boundary_mode, 1)
        # cycle-mode pulses are ignored in transaction mode
        _set_words(ctx, dut.cco_pulses, [PULSES_MAX] * cols, CCO_PULSE_BITS)
        seen["sums"] = await _window(ctx, dut, 128, count=count)
        seen["counts"] = _counts(ctx, dut)
        seen["again"] = await _window(ctx, dut, 128, count=[5] * cols)
        seen["counts_again"] = _counts(ctx, dut)

    simulate(dut, bench)
    assert seen["counts"] == list(np.minimum(count, COUNTER_MAX))
    assert seen["sums"] == [int(np.count_nonzero(count > COUNTER_MAX))]
    assert seen["again"] == [0] and seen["counts_again"] == [5] * cols
