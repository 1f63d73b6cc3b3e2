"""The LDPU (local digital processing unit), docs/numerics.md section 5: per column

    acc = raw * gain + bias;  y = (acc + 2**(s-1)) >> s (s > 0);  ReLU;  out = sat(y, int8)

for LDPU_LANES columns per clock, in five registered stages so that no stage has more than one
carry chain (or the DSP multiply) between registers:
1. the inputs;  2. raw * gain (DSP), bias + 2**(s-1);  3. their sum (LDPU_ACC_BITS);  4. >> s;
5. saturation to int8 and ReLU.
"""

from amaranth import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import (
    LDPU_ACC_BITS,
    LDPU_BIAS_BITS,
    LDPU_GAIN_BITS,
    LDPU_LANES,
    LDPU_SHIFT_BITS,
    OUTPUT_BITS,
    OUTPUT_MAX,
    OUTPUT_MIN,
    RAW_BITS,
)


class LdpuParams(data.Struct):
    """One column's parameters, as staged by LDPU_PARAMS: gain from the low bits of the first
    beat, bias = the second beat (numerics 8)."""

    gain: signed(LDPU_GAIN_BITS)
    bias: signed(LDPU_BIAS_BITS)


class LdpuLane(data.Struct):
    raw: signed(RAW_BITS)
    params: LdpuParams


#: One group of columns in, one RESULT beat out (column 4k + m in byte m, numerics 5).
LdpuGroup = data.ArrayLayout(LdpuLane, LDPU_LANES)
ResultBeat = data.ArrayLayout(signed(OUTPUT_BITS), LDPU_LANES)


def rounding_half(shift):
    """2**(shift-1) for shift > 0, else 0: the round-half-up term of a right shift."""
    return (Const(1, 1) << shift)[1:]


class Ldpu(wiring.Component):
    """i: a group of raw values with their parameters; o: the group's int8 codes, LATENCY cycles
    later; shift (LDPU_SHIFT), relu (CONFIG.activation): static during a command."""

    LATENCY = 5

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(LdpuGroup, always_ready=True)),
            "o": Out(stream.Signature(ResultBeat, always_ready=True)),
            "shift": In(LDPU_SHIFT_BITS),
            "relu": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        valid = self.i.valid
        for _ in range(self.LATENCY):
            staged = Signal()
            m.d.sync += staged.eq(valid)
            valid = staged
        m.d.comb += self.o.valid.eq(valid)
        half = rounding_half(self.shift)
        for lane in range(LDPU_LANES):
            m.d.comb += self.o.payload[lane].eq(self._lane(m, self.i.payload[lane], half))
        return m

    def _lane(self, m: Module, lane_in, half):
        lane = Signal.like(lane_in)
        product = Signal(signed(RAW_BITS + LDPU_GAIN_BITS))
        biased = Signal(signed(LDPU_BIAS_BITS + 1))
        acc = Signal(signed(LDPU_ACC_BITS))
        shifted = Signal(signed(LDPU_ACC_BITS))
        code = Signal(signed(OUTPUT_BITS))
        # sat(y, OUTPUT_MIN, OUTPUT_MAX) without comparators: y fits the code iff its bits from
        # the code's sign bit up are all equal; ReLU then maps every negative y to 0
        negative = shifted[-1]
        upper = shifted[OUTPUT_BITS - 1:]
        fits = ~upper.any() | upper.all()
        saturated = Mux(fits, shifted[:OUTPUT_BITS], Mux(negative, OUTPUT_MIN, OUTPUT_MAX))
        rectified = Mux(self.relu & negative, 0, saturated)
        m.d.sync += [
            lane.eq(lane_in),
            product.eq(lane.raw * lane.params.gain),
            biased.eq(lane.params.bias + half),
            acc.eq(product + biased),
            shifted.eq(acc >> self.shift),  # arithmetic: acc is signed
            code.eq(rectified),
        ]
        return code
