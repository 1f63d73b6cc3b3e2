"""A stand-in for pcmhil.rtl.tile.Tile in tests of the chip's bus side (not a tile model).

Same signature as the real tile. It has the real tile register block (so every tile register
answers its reset value and rw fields store), echoes every packet it receives through a small
FIFO (so a full FIFO back-pressures the router) with the header's `aux` replaced by its tile
index (so a test sees which tile a packet reached), drives `irq` from CONFIG.irq_done, and leaves
the analog boundary idle.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered

from pcmhil.interface import Geometry, PacketHeader, tile_registers
from pcmhil.rtl.csr import RegisterFile
from pcmhil.rtl.signatures import Beat, tile_signature

ECHO_DEPTH = 4


class FakeTile(wiring.Component):
    def __init__(self, geometry: Geometry, tile_index: int):
        self.geometry = geometry
        self.tile_index = tile_index
        super().__init__(tile_signature(geometry))

    def elaborate(self, platform):
        m = Module()
        m.submodules.registers = registers = RegisterFile(tile_registers(self.geometry))
        wiring.connect(m, wiring.flipped(self.csr), registers.bus)
        m.d.comb += self.irq.eq(registers.signal("CONFIG", "irq_done"))

        m.submodules.echo = echo = SyncFIFOBuffered(width=Beat.size, depth=ECHO_DEPTH)
        beat = Beat(echo.r_data)
        header = Signal(PacketHeader)
        first = Signal(init=1)  # the next beat out is a header
        m.d.comb += [
            echo.w_data.eq(self.rx.payload),
            echo.w_en.eq(self.rx.valid),
            self.rx.ready.eq(echo.w_rdy),
            header.eq(beat.data),
            header.aux.eq(self.tile_index),
            self.tx.payload.eq(beat),
            self.tx.valid.eq(echo.r_rdy),
            echo.r_en.eq(self.tx.ready),
        ]
        with m.If(first):
            m.d.comb += self.tx.payload.data.eq(header)
        with m.If(self.tx.valid & self.tx.ready):
            m.d.sync += first.eq(beat.last)
        return m
