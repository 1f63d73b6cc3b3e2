"""The tile's packet parser: input packets from the router into the input buffer, the program
staging and the LDPU parameter staging (docs/numerics.md section 8).

The router has already checked the type (one of INPUT_PACKET_TYPES) and the tile index; the
parser checks the length. A packet whose tlast comes before its last payload beat, or not on it,
raises PACKET_LENGTH and is consumed up to tlast without being committed, so the sink keeps its
previous staged state. An ACTIVATIONS packet waits at the door (its header is not accepted)
while the input buffer holds a vector; other packet types are never back-pressured.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import (
    BUS_DATA_BITS,
    INPUT_PACKET_TYPES,
    Geometry,
    PacketHeader,
    PacketType,
    packet_payload_beats,
)
from pcmhil.rtl.signatures import packet_stream
from pcmhil.rtl.sizes import address_width


class PayloadSink(wiring.Signature):
    """The payload beats of one packet type (parser's view).

    `valid` strobes payload beat number `index` with `data`; `commit` is high together with the
    last beat of a packet of the right length. Beats of a packet that is never committed may
    have been written: a sink keeps them out of its staged state until `commit`.
    """

    def __init__(self, beats: int):
        super().__init__({
            "valid": Out(1),
            "index": Out(address_width(beats)),
            "data": Out(BUS_DATA_BITS),
            "commit": Out(1),
        })


#: The parser's output member of each input packet type.
SINK_NAMES = {
    PacketType.ACTIVATIONS: "act",
    PacketType.PROGRAM_DATA: "prog",
    PacketType.LDPU_PARAMS: "ldpu",
}


class TileRx(wiring.Component):
    """rx: input packets; act/prog/ldpu: payload of each type; act_full: the input buffer holds
    a vector (back-pressure ACTIVATIONS); error: PACKET_LENGTH strobe."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        members = {"rx": In(packet_stream()), "act_full": In(1), "error": Out(1)}
        for kind in INPUT_PACKET_TYPES:
            members[SINK_NAMES[kind]] = Out(PayloadSink(packet_payload_beats(kind, geometry)))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        rx = self.rx
        header = PacketHeader(rx.payload.data)
        longest = max(packet_payload_beats(kind, self.geometry) for kind in INPUT_PACKET_TYPES)
        kind = Signal(8)  # type byte of the packet being received
        index = Signal(range(longest))  # payload beat number
        final_index = Signal(range(longest))  # number of the packet's last payload beat
        beat = rx.valid & rx.ready
        at_final = index == final_index

        for packet_type in INPUT_PACKET_TYPES:
            sink = getattr(self, SINK_NAMES[packet_type])
            m.d.comb += [sink.index.eq(index), sink.data.eq(rx.payload.data)]
        m.d.comb += rx.ready.eq(1)  # payload and discarded beats are never back-pressured

        with m.FSM():
            with m.State("HEADER"):
                stall = (header.type == PacketType.ACTIVATIONS.value) & self.act_full
                m.d.comb += rx.ready.eq(~stall)
                with m.If(beat):
                    m.d.sync += [kind.eq(header.type), index.eq(0)]
                    with m.Switch(header.type):
                        for packet_type in INPUT_PACKET_TYPES:
                            with m.Case(packet_type.value):
                                m.d.sync += final_index.eq(
                                    packet_payload_beats(packet_type, self.geometry) - 1)
                    with m.If(rx.payload.last):
                        m.d.comb += self.error.eq(1)  # a header alone: every type has a payload
                    with m.Else():
                        m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                self._deliver(m, kind, beat & rx.payload.last & at_final, beat)
                with m.If(beat):
                    m.d.sync += index.eq(index + 1)
                    with m.If(rx.payload.last):
                        m.d.comb += self.error.eq(~at_final)
                        m.next = "HEADER"
                    with m.Elif(at_final):
                        m.d.comb += self.error.eq(1)
                        m.next = "DISCARD"
            with m.State("DISCARD"):
                with m.If(beat & rx.payload.last):
                    m.next = "HEADER"
        return m

    def _deliver(self, m: Module, kind: Signal, commit, beat) -> None:
        """Strobe the payload beat (and the commit) into the sink of the packet's type."""
        for packet_type in INPUT_PACKET_TYPES:
            sink = getattr(self, SINK_NAMES[packet_type])
            mine = kind == packet_type.value
            m.d.comb += [
                sink.valid.eq(beat & mine),
                sink.commit.eq(commit & mine),
            ]
