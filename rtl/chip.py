"""The chip top: T tiles behind one AXI4-Lite register slave, a stream router and an arbiter.

    s_axil_* -> AXI4LiteSlave -> CSRDecoder -> block 0: chip RegisterFile (chip_registers())
                                            -> block t + 1: tile t's csr
    s_axis_* -> StreamRouter -> tile t rx;  tile t tx -> StreamArbiter -> m_axis_*
    tile t analog -> t{t}__* (the analog boundary, docs/numerics.md section 2);  irq

Top-level ports are flat and named as cocotbext-axi's `from_prefix` expects (`s_axil_awaddr`,
`s_axis_tdata`, `m_axis_tready`, ...), so that bus models and board integrations bind by name.
Clock `clk` and synchronous active-high reset `rst` are Amaranth's default `sync` domain.
"""

from __future__ import annotations

from amaranth import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import BUS_ADDR_BITS, BUS_DATA_BITS, Geometry, RegisterMap
from pcmhil.rtl.axi_lite import AXI4LiteSignature, AXI4LiteSlave
from pcmhil.rtl.csr import RegisterFile
from pcmhil.rtl.csr_decoder import CSRDecoder
from pcmhil.rtl.signatures import AnalogBoundary
from pcmhil.rtl.stream_arbiter import StreamArbiter
from pcmhil.rtl.stream_router import StreamRouter

AXIL_PREFIX = "s_axil"
AXIS_IN_PREFIX = "s_axis"
AXIS_OUT_PREFIX = "m_axis"


def _prefixed_members(prefix: str, signature: wiring.Signature) -> dict:
    return {f"{prefix}_{name}": member for name, member in signature.members.items()}


def _connect_prefixed(m: Module, owner: wiring.Component, prefix: str, interface) -> None:
    """Wire `owner`'s flat ports `<prefix>_<name>` to the same-named members of `interface`,
    which has the same directions (a port the owner takes in drives a member it takes in)."""
    for name, member in interface.signature.members.items():
        port, inner = getattr(owner, f"{prefix}_{name}"), getattr(interface, name)
        m.d.comb += inner.eq(port) if member.flow == In else port.eq(inner)


def _axis_members(prefix: str, flow) -> dict:
    """AXI4-Stream ports carrying a packet stream; `flow` is the data's direction (Out: sent)."""
    return {
        f"{prefix}_tdata": flow(BUS_DATA_BITS),
        f"{prefix}_tlast": flow(1),
        f"{prefix}_tvalid": flow(1),
        f"{prefix}_tready": flow.flip()(1),
    }


def _axis_ports(owner: wiring.Component, prefix: str) -> tuple:
    return tuple(getattr(owner, f"{prefix}_{name}") for name in ("tdata", "tlast", "tvalid", "tready"))


def _packet_ports(stream) -> tuple:
    return stream.payload.data, stream.payload.last, stream.valid, stream.ready


def _connect_beats(m: Module, source: tuple, sink: tuple) -> None:
    """source -> sink, each given as (data, last, valid, ready)."""
    *source_forward, source_ready = source
    *sink_forward, sink_ready = sink
    m.d.comb += [to.eq(frm) for frm, to in zip(source_forward, sink_forward, strict=True)]
    m.d.comb += source_ready.eq(sink_ready)


class Chip(wiring.Component):
    """The chip top for `geometry`; `tile_factory(geometry, tile_index)` makes each tile (default
    pcmhil.rtl.tile.Tile; tests of the bus side pass a stand-in with the same signature)."""

    def __init__(self, geometry: Geometry, tile_factory=None):
        if tile_factory is None:
            # Imported here so that the bus side can be built without the tile module.
            from pcmhil.rtl.tile import Tile as tile_factory
        self.geometry = geometry
        self.register_map = RegisterMap(geometry)
        self._tile_factory = tile_factory
        members = _prefixed_members(AXIL_PREFIX, AXI4LiteSignature(BUS_ADDR_BITS).flip())
        members |= _axis_members(AXIS_IN_PREFIX, In) | _axis_members(AXIS_OUT_PREFIX, Out)
        members["irq"] = Out(1)
        for tile in range(geometry.tiles):
            members[f"t{tile}"] = Out(AnalogBoundary(geometry))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        geometry = self.geometry
        m.submodules.axil = axil = AXI4LiteSlave(self.register_map)
        m.submodules.csr_decoder = decoder = CSRDecoder(1 + geometry.tiles)
        m.submodules.chip_registers = registers = RegisterFile(self.register_map.chip)
        m.submodules.router = router = StreamRouter(geometry)
        m.submodules.arbiter = arbiter = StreamArbiter(geometry.tiles)

        _connect_prefixed(m, self, AXIL_PREFIX, axil.axil)
        wiring.connect(m, axil.csr, decoder.bus)
        wiring.connect(m, decoder.blocks[0], registers.bus)
        _connect_beats(m, _axis_ports(self, AXIS_IN_PREFIX), _packet_ports(router.rx))
        _connect_beats(m, _packet_ports(arbiter.tx), _axis_ports(self, AXIS_OUT_PREFIX))

        tiles = []
        for index in range(geometry.tiles):
            m.submodules[f"tile{index}"] = tile = self._tile_factory(geometry, index)
            wiring.connect(m, decoder.blocks[index + 1], tile.csr)
            wiring.connect(m, router.tx[index], tile.rx)
            wiring.connect(m, tile.tx, arbiter.rx[index])
            wiring.connect(m, wiring.flipped(getattr(self, f"t{index}")), tile.analog)
            tiles.append(tile)

        irqs = Cat(tile.irq for tile in tiles)
        m.d.comb += [
            registers.signal("IRQ_STATUS", "tiles").eq(irqs),
            self.irq.eq(irqs.any()),
            registers.signal("STREAM_STATUS", "error__set").eq(router.error),
            registers.signal("STREAM_STATUS", "code").eq(router.error_code),
            registers.signal("STREAM_ERRORS", "count").eq(router.error_count),
        ]
        return m
