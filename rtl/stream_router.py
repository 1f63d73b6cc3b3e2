"""Input packet stream -> one packet stream per tile (docs/numerics.md section 8).

The router looks at the header beat of each packet and forwards the whole packet, beat by beat,
to the tile named in the header's `tile` field; a tile's back-pressure stalls the input. A packet
whose type is not an input type (PACKET_TYPE, checked first) or whose tile does not exist
(PACKET_TILE) is consumed up to its `tlast` and dropped, and the error is reported to the chip
registers (STREAM_STATUS, STREAM_ERRORS), not to a tile. Checking the payload length is the
tile's job (PACKET_LENGTH).

The router adds no register stage (full throughput, no latency): a tile's `ready` reaches
`s_axis_tready` through logic only. If FPGA timing needs it, a register slice at the chip's
stream ports cuts that path without changing the protocol.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import INPUT_PACKET_TYPES, ErrorCode, Geometry, PacketHeader, RegisterMap
from pcmhil.rtl.signatures import packet_stream


class StreamRouter(wiring.Component):
    """`rx` -> `tx[tile]`, with the router's error report for the chip registers.

    `error` is high for one cycle per dropped packet (after its header beat is accepted),
    `error_code` holds the ErrorCode of the last dropped packet and `error_count` counts them
    (wrapping, like the STREAM_ERRORS register it feeds).
    """

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        count = RegisterMap(geometry).register("STREAM_ERRORS").field("count")
        super().__init__({
            "rx": In(packet_stream()),
            "tx": Out(packet_stream()).array(geometry.tiles),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "error_count": Out(count.width),
        })

    def _header_check(self, m: Module, header: PacketHeader) -> Signal:
        """The ErrorCode of a packet with `header` (NONE if it is routed), in the order of section 8."""
        code = Signal(ErrorCode)
        input_type = Signal()
        m.d.comb += input_type.eq(0)
        for kind in INPUT_PACKET_TYPES:
            with m.If(header.type == kind.value):
                m.d.comb += input_type.eq(1)
        with m.If(~input_type):
            m.d.comb += code.eq(ErrorCode.PACKET_TYPE)
        with m.Elif(header.tile >= self.geometry.tiles):
            m.d.comb += code.eq(ErrorCode.PACKET_TILE)
        return code

    def elaborate(self, platform):
        m = Module()
        rx = self.rx
        header = PacketHeader(rx.payload.data)
        code = self._header_check(m, header)

        # Decided at the header beat, kept for the rest of the packet.
        in_packet = Signal()
        route = Signal.like(header.tile)
        dropping = Signal()
        target = Signal.like(header.tile)
        drop = Signal()
        m.d.comb += [
            target.eq(header.tile),
            drop.eq(code != ErrorCode.NONE),
        ]
        with m.If(in_packet):
            m.d.comb += [target.eq(route), drop.eq(dropping)]

        for tile, tx in enumerate(self.tx):
            m.d.comb += [
                tx.payload.eq(rx.payload),
                tx.valid.eq(rx.valid & ~drop & (target == tile)),
            ]
            with m.If(target == tile):
                m.d.comb += rx.ready.eq(tx.ready)
        with m.If(drop):
            m.d.comb += rx.ready.eq(1)  # a dropped packet is consumed up to tlast

        accepted = rx.valid & rx.ready
        header_accepted = accepted & ~in_packet
        with m.If(accepted):
            m.d.sync += in_packet.eq(~rx.payload.last)
        with m.If(header_accepted):
            m.d.sync += [route.eq(header.tile), dropping.eq(drop)]

        m.d.sync += self.error.eq(header_accepted & drop)
        with m.If(header_accepted & drop):
            m.d.sync += [self.error_code.eq(code), self.error_count.eq(self.error_count + 1)]
        return m
