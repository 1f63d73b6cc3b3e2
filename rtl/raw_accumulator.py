"""Raw column values: the per-column combination of a command's window counts (docs/numerics.md
section 4), in parallel for every column as each window ends.

acc_j <- acc_j +/- count_j, from acc_j = 0 (cleared before a command's first window). With it:
- 1-phase: acc = count (the ADC offset is subtracted lane by lane on the way to the LDPU);
- 4-phase: acc = c1 - c2 - c3 + c4 (signs of FOUR_PHASE_WINDOWS);
- CALIBRATE: acc = the sum of 2^k counts (numerics 6), hence the width;
- VERIFY_ROW: acc = the G+ count while the counters keep the G- count.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import CALIBRATE_MAX_LOG2, COUNTER_BITS, RAW_BITS, Geometry

#: Holds a CALIBRATE sum of 2**CALIBRATE_MAX_LOG2 counts and a signed 4-phase raw value.
ACC_BITS = max(COUNTER_BITS + CALIBRATE_MAX_LOG2, RAW_BITS - 1) + 1


def add_or_subtract(value, operand, subtract):
    """value + operand, or value - operand = value + ~operand + 1 when `subtract`, with a single
    carry chain: the + 1 enters as the carry out of an extra low bit (1 + subtract)."""
    width = len(Value.cast(value))
    flipped = Cat(operand, Const(0, width - len(operand))) ^ subtract.replicate(width)
    return (Cat(Const(1, 1), value) + Cat(subtract, flipped))[1:width + 1]


class CombineControl(wiring.Signature):
    """clear: zero every value (one cycle, before a command's first window); accumulate and
    subtract: how the counts of the window being run enter the values (held during the window).
    All are registers at the controller: they reach every column."""

    def __init__(self):
        super().__init__({"clear": Out(1), "accumulate": Out(1), "subtract": Out(1)})


class RawAccumulator(wiring.Component):
    """counts: the ADC counters; control: from the controller; last: the window's last cycle
    (the counts are final in the next one, when they are combined); values: every column's."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        super().__init__({
            "counts": In(data.ArrayLayout(COUNTER_BITS, geometry.cols)),
            "control": In(CombineControl()),
            "last": In(1),
            "values": Out(data.ArrayLayout(signed(ACC_BITS), geometry.cols)),
        })

    def elaborate(self, platform):
        m = Module()
        control = self.control
        combine = Signal()  # a register: it enables every column
        m.d.sync += combine.eq(self.last & control.accumulate)
        for j in range(self.geometry.cols):
            value = self.values[j]
            with m.If(control.clear):  # a synchronous clear: the flip-flops' own reset input
                m.d.sync += value.eq(0)
            with m.Elif(combine):
                m.d.sync += value.eq(add_or_subtract(value, self.counts[j], control.subtract))
        return m
