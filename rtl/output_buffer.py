"""The output buffer: a FIFO of beats that holds the largest output packet (VERIFY_DATA, cols + 1
beats), between the packet assembler and the chip's output arbiter (docs/numerics.md 8).

A packet leaves only once its last beat is in the FIFO, so once started it is sent without gaps
(the arbiter forwards one whole packet at a time). The beats leave through a register, so that
tx starts at flip-flops rather than at the FIFO's block RAM.
"""

from amaranth import Module, Mux, Signal
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
        sink, tx = self.sink, self.tx
        # Buffered: the read port is registered, as block RAM needs; it still reads a beat per
        # cycle while the FIFO holds data.
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=Beat.size, depth=self.depth)
        # Beats of whole packets in the FIFO, counted on the write side (a packet's beats are
        # released with its last one), so that no read of the block RAM feeds back into it.
        partial = Signal(range(self.depth + 1))  # beats of the packet being written
        releasable = Signal(range(self.depth + 1))
        take = fifo.r_rdy & (releasable != 0) & (~tx.valid | tx.ready)
        completed = sink.valid & sink.payload.last
        with m.If(sink.valid):
            m.d.sync += partial.eq(Mux(sink.payload.last, 0, partial + 1))
        m.d.sync += releasable.eq(releasable + Mux(completed, partial + 1, 0) - take)
        with m.If(take):
            m.d.sync += [tx.valid.eq(1), tx.payload.eq(fifo.r_data)]
        with m.Elif(tx.ready):
            m.d.sync += tx.valid.eq(0)
        m.d.comb += [
            fifo.w_data.eq(sink.payload),
            fifo.w_en.eq(sink.valid),
            fifo.r_en.eq(take),
            self.room.eq(self.depth - fifo.level),
        ]
        return m
