"""The output buffer: a FIFO of beats that holds the largest output packet (VERIFY_DATA, cols + 1
beats), between the packet assembler and the chip's output arbiter (docs/numerics.md 8).

A packet leaves only once its last beat is in the FIFO, so once started it is sent without gaps
(the arbiter forwards one whole packet at a time).
"""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from pcmhil.interface import Geometry
from pcmhil.rtl.signatures import Beat, packet_stream
from pcmhil.rtl.tile_tx import OUTPUT_PACKET_TYPES, packet_beats


class OutputBuffer(wiring.Component):
    """sink: beats from the assembler, which never writes more than `room`; tx: packets out."""

    def __init__(self, geometry: Geometry):
        self.depth = max(packet_beats(kind, geometry) for kind in OUTPUT_PACKET_TYPES)
        super().__init__({
            "sink": In(stream.Signature(Beat, always_ready=True)),
            "room": Out(range(self.depth + 1)),
            "tx": Out(packet_stream()),
        })

    def elaborate(self, platform):
        m = Module()
        # Buffered: the read port is registered, as block RAM needs; it still reads a beat per
        # cycle while the FIFO holds data.
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=Beat.size, depth=self.depth)
        packets = Signal(range(self.depth + 1))  # whole packets in the FIFO
        written_last = self.sink.valid & self.sink.payload.last
        sent_last = self.tx.valid & self.tx.ready & self.tx.payload.last
        m.d.sync += packets.eq(packets + written_last - sent_last)
        m.d.comb += [
            fifo.w_data.eq(self.sink.payload),
            fifo.w_en.eq(self.sink.valid),
            self.room.eq(self.depth - fifo.level),
            self.tx.payload.eq(fifo.r_data),
            self.tx.valid.eq(fifo.r_rdy & (packets != 0)),
            fifo.r_en.eq(self.tx.ready & self.tx.valid),
        ]
        return m
