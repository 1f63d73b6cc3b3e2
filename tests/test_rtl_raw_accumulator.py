"""Raw column values against numerics.md section 4: the signed 4-phase combination from reset,
windows that do not accumulate, the clear, and a CALIBRATE sum of 2^8 full-scale counts."""

from __future__ import annotations

import numpy as np
from rtl_sim import simulate

from pcmhil.interface import CALIBRATE_MAX_LOG2, COUNTER_MAX, FOUR_PHASE_WINDOWS, Geometry
from pcmhil.rtl.raw_accumulator import RawAccumulator

GEOMETRY = Geometry(rows=4, cols=12)


async def _combine(ctx, dut, counts, subtract: bool, accumulate: bool = True):
    """A window's end: `last` in its last cycle, the counts final in the next one."""
    ctx.set(dut.control.accumulate, accumulate)
    ctx.set(dut.control.subtract, subtract)
    ctx.set(dut.last, 1)
    await ctx.tick()
    ctx.set(dut.last, 0)
    ctx.set(dut.counts, list(counts))
    await ctx.tick()


async def _clear(ctx, dut):
    ctx.set(dut.control.clear, 1)
    await ctx.tick()
    ctx.set(dut.control.clear, 0)


def test_four_phase_combination_and_calibrate_sum():
    dut = RawAccumulator(GEOMETRY)
    rng = np.random.default_rng(1)
    cols = GEOMETRY.cols
    phases = rng.integers(0, COUNTER_MAX + 1, size=(4, cols))
    phases[:, 0] = [0, COUNTER_MAX, COUNTER_MAX, 0]  # most negative
    phases[:, 1] = [COUNTER_MAX, 0, 0, COUNTER_MAX]  # most positive
    seen = {}

    async def bench(ctx):
        for counts, (_, _, sign) in zip(phases, FOUR_PHASE_WINDOWS, strict=True):
            await _combine(ctx, dut, counts, subtract=sign < 0)
            await _combine(ctx, dut, counts, subtract=False, accumulate=False)  # no effect
        seen["raw"] = list(ctx.get(dut.values))
        await _clear(ctx, dut)
        for _ in range(1 << CALIBRATE_MAX_LOG2):
            await _combine(ctx, dut, [COUNTER_MAX] * cols, subtract=False)
        seen["sum"] = list(ctx.get(dut.values))

    simulate(dut, bench)
    signs = np.array([sign for _, _, sign in FOUR_PHASE_WINDOWS])
    assert seen["raw"] == list(signs @ phases)
    assert seen["raw"][:2] == [-2 * COUNTER_MAX, 2 * COUNTER_MAX]
    assert seen["sum"] == [COUNTER_MAX << CALIBRATE_MAX_LOG2] * cols
