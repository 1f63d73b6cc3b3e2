"""The tiles' output packet streams -> the chip's one output stream (docs/numerics.md section 8).

Round robin over whole packets: once a source's first beat is on the output, that source keeps
the output until its `tlast` beat is accepted, so the beats of two packets never interleave, and
the output never changes under a beat the sink has not taken yet (AXI4-Stream requires TDATA
to stay stable while TVALID is high and TREADY low). After a packet, the source after it has
the highest priority, so every busy tile gets every n-th packet.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pcmhil.rtl.signatures import packet_stream


class StreamArbiter(wiring.Component):
    """`rx[0 .. sources-1]` -> `tx`, whole packets, round robin."""

    def __init__(self, sources: int):
        super().__init__({
            "rx": In(packet_stream()).array(sources),
            "tx": Out(packet_stream()),
        })

    def _round_robin_winner(self, m: Module, first: Signal) -> Signal:
        """The first source with a valid beat, looking from `first` upwards and wrapping."""
        sources = len(self.rx)
        winner = Signal.like(first)
        with m.Switch(first):
            for start in range(sources):
                with m.Case(start):
                    # The last assignment wins: give `start` the highest priority.
                    for offset in reversed(range(sources)):
                        source = (start + offset) % sources
                        with m.If(self.rx[source].valid):
                            m.d.comb += winner.eq(source)
        return winner

    def elaborate(self, platform):
        m = Module()
        sources = len(self.rx)
        tx = self.tx
        if sources == 1:  # nothing to arbitrate (and no zero-width grant registers)
            wiring.connect(m, wiring.flipped(self.rx[0]), wiring.flipped(tx))
            return m

        first = Signal(range(sources))  # highest priority for the next packet
        busy = Signal()  # a packet is on the output; `grant` holds its source
        grant = Signal.like(first)
        winner = self._round_robin_winner(m, first)
        selected = Signal.like(first)
        m.d.comb += selected.eq(Mux(busy, grant, winner))

        with m.Switch(selected):
            for source, rx in enumerate(self.rx):
                with m.Case(source):
                    m.d.comb += [
                        tx.payload.eq(rx.payload),
                        tx.valid.eq(rx.valid),
                        rx.ready.eq(tx.ready),
                    ]

        with m.If(tx.valid & tx.ready & tx.payload.last):
            m.d.sync += [
                busy.eq(0),
                first.eq(Mux(selected == sources - 1, 0, selected + 1)),
            ]
        with m.Elif(tx.valid):
            m.d.sync += [busy.eq(1), grant.eq(selected)]
        return m
