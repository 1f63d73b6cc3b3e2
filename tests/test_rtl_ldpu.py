"""The LDPU against numerics.md section 5, written out in Python: random and extreme raws, gains,
biases and shifts, rounding ties, ReLU and saturation, four lanes per clock, fixed latency."""

from __future__ import annotations

import numpy as np
from rtl_sim import simulate

from pcmhil.interface import (
    COUNTER_MAX,
    LDPU_BIAS_BITS,
    LDPU_GAIN_BITS,
    LDPU_LANES,
    LDPU_SHIFT_BITS,
    OUTPUT_MAX,
    OUTPUT_MIN,
)
from pcmhil.rtl.ldpu import Ldpu

RAW_LIMIT = 2 * COUNTER_MAX  # numerics 4: |raw| <= 8190 (4-phase)
GAIN_MIN, GAIN_MAX = -(2 ** (LDPU_GAIN_BITS - 1)), 2 ** (LDPU_GAIN_BITS - 1) - 1
BIAS_MIN, BIAS_MAX = -(2 ** (LDPU_BIAS_BITS - 1)), 2 ** (LDPU_BIAS_BITS - 1) - 1


def reference(raw: int, gain: int, bias: int, shift: int, relu: bool) -> int:
    """numerics.md section 5, one column, Python integers."""
    acc = raw * gain + bias
    y = acc if shift == 0 else (acc + 2 ** (shift - 1)) >> shift
    if relu:
        y = max(y, 0)
    return min(max(y, OUTPUT_MIN), OUTPUT_MAX)


def _cases(rng: np.random.Generator, shift: int, count: int) -> list[tuple[int, int, int]]:
    """(raw, gain, bias): extremes, exact rounding ties at this shift, random values."""
    cases = [(r, g, b) for r in (-RAW_LIMIT, -1, 0, 1, RAW_LIMIT)
             for g in (GAIN_MIN, -1, 0, 1, GAIN_MAX) for b in (BIAS_MIN, 0, BIAS_MAX)]
    if shift:
        # acc = k * 2**shift + 2**(shift-1) (+-1): exactly halfway and both neighbours
        for k in (-3, -1, 0, 2, 100):
            for delta in (-1, 0, 1):
                cases.append((1, 1, k * 2**shift + 2 ** (shift - 1) + delta))
                cases.append((-7, 3, k * 2**shift + 2 ** (shift - 1) + delta + 21))
    cases = [(r, g, b) for r, g, b in cases if BIAS_MIN <= b <= BIAS_MAX]
    while len(cases) < count:
        cases.append((int(rng.integers(-RAW_LIMIT, RAW_LIMIT + 1)),
                      int(rng.integers(GAIN_MIN, GAIN_MAX + 1)),
                      int(rng.integers(BIAS_MIN, BIAS_MAX + 1)) >> int(rng.integers(0, 32))))
    return cases


def test_ldpu_matches_numerics():
    dut = Ldpu()
    rng = np.random.default_rng(5)
    configs = [(s, relu) for s in (0, 1, 2, 7, 15, 16, 28, 2**LDPU_SHIFT_BITS - 1) for relu in (0, 1)]
    seen, expected = [], []

    async def bench(ctx):
        for shift, relu in configs:
            cases = _cases(rng, shift, 120)
            cases += [(0, 1, 0)] * (-len(cases) % LDPU_LANES)
            groups = [cases[k:k + LDPU_LANES] for k in range(0, len(cases), LDPU_LANES)]
            expected.extend([reference(*c, shift, relu) for c in group] for group in groups)
            ctx.set(dut.shift, shift)
            ctx.set(dut.relu, relu)
            outputs = []
            for cycle in range(len(groups) + Ldpu.LATENCY):
                if cycle < len(groups):
                    ctx.set(dut.i.valid, 1)
                    ctx.set(dut.i.payload, [{"raw": r, "params": {"gain": g, "bias": b}}
                                            for r, g, b in groups[cycle]])
                else:
                    ctx.set(dut.i.valid, 0)
                if ctx.get(dut.o.valid):
                    # a group entered in cycle t leaves in cycle t + LATENCY
                    assert cycle - Ldpu.LATENCY == len(outputs)
                    outputs.append(list(ctx.get(dut.o.payload)))
                await ctx.tick()
            seen.extend(outputs)

    simulate(dut, bench)
    assert seen == expected
    assert len(seen) >= len(configs) * 30

