"""The smallest design that proves the whole flow: Amaranth -> Verilog -> Verilator -> cocotb.

`pcmhil doctor` and the CI smoke test build it (cached) and run `smoke_bench` against it.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pcmhil.cosim.toolchain import BuildSpec

TOPLEVEL = "pcmhil_smoke"


class SmokeAccumulator(wiring.Component):
    """Saturating accumulator: adds `data` when `valid`, `clear` zeroes it; `total` saturates."""

    def __init__(self, data_width: int = 8, total_width: int = 12):
        self.total_max = 2**total_width - 1
        super().__init__({
            "data": In(data_width),
            "valid": In(1),
            "clear": In(1),
            "total": Out(total_width),
        })

    def elaborate(self, platform):
        m = Module()
        wide = Signal(len(self.total) + 1)
        m.d.comb += wide.eq(self.total + self.data)
        with m.If(self.clear):
            m.d.sync += self.total.eq(0)
        with m.Elif(self.valid):
            with m.If(wide > self.total_max):
                m.d.sync += self.total.eq(self.total_max)
            with m.Else():
                m.d.sync += self.total.eq(wide)
        return m


def smoke_build_spec() -> BuildSpec:
    text = verilog.convert(SmokeAccumulator(), name=TOPLEVEL, emit_src=False)
    return BuildSpec(toplevel=TOPLEVEL, verilog={f"{TOPLEVEL}.v": text})
