"""The chip-wide register bus and its decoder onto the register blocks (docs/numerics.md section 7).

The AXI4-Lite slave drives one register bus carrying the full BUS_ADDR_BITS byte address; the
decoder splits it into blocks of TILE_STRIDE bytes: block 0 is the chip's RegisterFile, block
t + 1 is tile t's `csr` bus (a CSRBus with a CSR_ADDR_BITS offset).
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import BUS_ADDR_BITS, TILE_STRIDE
from pcmhil.rtl.signatures import CSR_ADDR_BITS, CSRBus


class CSRDecoder(wiring.Component):
    """Fans the chip-wide register bus out to `blocks` register blocks of TILE_STRIDE bytes.

    A block sees the strobes only of accesses inside it. The read data of a block is answered
    one cycle after its `r_stb` (CSRBus timing), so the decoder remembers which block a read
    strobed and returns that block's `r_data` in the next cycle. Which addresses inside a block
    exist is the AXI4-Lite slave's business (it never strobes an unmapped address).
    """

    def __init__(self, blocks: int):
        # The block number is the address above the block offset: that is only a bit slice if
        # the stride is the size of a block's address space.
        assert TILE_STRIDE == 2**CSR_ADDR_BITS, "TILE_STRIDE must span a block's CSR address space"
        super().__init__({
            "bus": In(CSRBus(BUS_ADDR_BITS)),
            "blocks": Out(CSRBus()).array(blocks),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        block = bus.addr[CSR_ADDR_BITS:]
        read_block = Signal.like(block)
        with m.If(bus.r_stb):
            m.d.sync += read_block.eq(block)
        for index, target in enumerate(self.blocks):
            selected = block == index
            m.d.comb += [
                target.addr.eq(bus.addr[:CSR_ADDR_BITS]),
                target.w_data.eq(bus.w_data),
                target.w_stb.eq(bus.w_stb & selected),
                target.r_stb.eq(bus.r_stb & selected),
            ]
        with m.Switch(read_block):
            for index, target in enumerate(self.blocks):
                with m.Case(index):
                    m.d.comb += bus.r_data.eq(target.r_data)
        return m
