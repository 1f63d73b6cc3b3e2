"""The input buffer: one activation vector (docs/numerics.md section 8, "the tile buffers one
vector"), written by the packet parser, read word by word into the PWM latch by the controller.
"""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out

from pcmhil.interface import BUS_DATA_BITS, Geometry, PacketType, packet_payload_beats
from pcmhil.rtl.sizes import address_width, memory_depth
from pcmhil.rtl.tile_rx import PayloadSink


class InputBuffer(wiring.Component):
    """sink: ACTIVATIONS payload; read: word k = payload beat k (rows 4k .. 4k+3), one cycle
    latency; full: a committed vector is waiting; release: the controller has taken it."""

    def __init__(self, geometry: Geometry):
        self.words = packet_payload_beats(PacketType.ACTIVATIONS, geometry)
        super().__init__({
            "sink": In(PayloadSink(self.words)),
            "read": Out(ReadPort.Signature(addr_width=address_width(self.words), shape=BUS_DATA_BITS)),
            "full": Out(1),
            "release": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory = memory = Memory(shape=BUS_DATA_BITS, depth=memory_depth(self.words), init=[])
        write = memory.write_port()
        m.d.comb += [
            write.addr.eq(self.sink.index),
            write.data.eq(self.sink.data),
            write.en.eq(self.sink.valid),
        ]
        wiring.connect(m, wiring.flipped(self.read), memory.read_port())
        # The parser only starts an ACTIVATIONS packet while the buffer is empty, so a commit and
        # a release never coincide.
        with m.If(self.sink.commit):
            m.d.sync += self.full.eq(1)
        with m.If(self.release):
            m.d.sync += self.full.eq(0)
        return m
