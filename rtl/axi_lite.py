"""AXI4-Lite slave for the chip's register space (docs/numerics.md section 7).

The slave answers decoding errors itself, from the register table (pcmhil.interface.RegisterMap),
so an access that must fail never reaches a register block:
- a read of an unmapped address answers SLVERR with data 0;
- a write answers SLVERR and has no effect when the address is unmapped, when the register has no
  writable field, or when `wstrb` is not all ones (registers are written as whole words: a partial
  CMD write must never start a command).
Unaligned addresses are unmapped (RegisterMap.decode).

One transaction is in flight at a time. AW, W and AR are each accepted into a one-entry holding
register, in any order and in the same or different cycles; a write starts when both its AW and W
are held. BVALID/RVALID stay high with a stable response until the master accepts it, and the
next transaction starts only after that, so a transaction is never dropped or duplicated
however the master stalls B or R. When a read and a write are both ready, they take turns.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import BUS_ADDR_BITS, BUS_DATA_BITS, BYTES_PER_BEAT, Register, RegisterMap
from pcmhil.rtl.signatures import CSRBus

#: AxPROT width (AMBA AXI and ACE Protocol Specification, IHI0022, "Access permissions").
PROT_BITS = 3


class AXIResp(enum.Enum, shape=2):
    """BRESP/RRESP encodings used here (IHI0022, "Read and write response structure")."""

    OKAY = 0b00
    SLVERR = 0b10


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite, master view, with the channel signals named as in the AXI specification."""

    def __init__(self, addr_bits: int):
        super().__init__({
            "awaddr": Out(addr_bits), "awprot": Out(PROT_BITS), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(BUS_DATA_BITS), "wstrb": Out(BYTES_PER_BEAT), "wvalid": Out(1),
            "wready": In(1),
            "bresp": In(AXIResp), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_bits), "arprot": Out(PROT_BITS), "arvalid": Out(1), "arready": In(1),
            "rdata": In(BUS_DATA_BITS), "rresp": In(AXIResp), "rvalid": In(1), "rready": Out(1),
        })


def mapped_registers(register_map: RegisterMap) -> list[tuple[int, Register]]:
    """(absolute address, register) of every register on the chip."""
    chip = [(register_map.address(reg.name), reg) for reg in register_map.chip]
    tiles = [(register_map.address(reg.name, tile), reg)
             for tile in range(register_map.geometry.tiles) for reg in register_map.tile]
    return chip + tiles


class AXI4LiteSlave(wiring.Component):
    """AXI4-Lite target (`axil`) driving the chip-wide register bus (`csr`)."""

    def __init__(self, register_map: RegisterMap):
        self.register_map = register_map
        super().__init__({
            "axil": In(AXI4LiteSignature(BUS_ADDR_BITS)),
            "csr": Out(CSRBus(BUS_ADDR_BITS)),
        })

    def _address_allowed(self, m: Module, address: Signal, write: bool) -> Signal:
        """High when `address` is a register that may be read (or written, if `write`)."""
        allowed = Signal(name=f"{'write' if write else 'read'}_allowed")
        targets = [target for target, reg in mapped_registers(self.register_map)
                   if reg.writable or not write]
        with m.Switch(address):
            with m.Case(*targets):
                m.d.comb += allowed.eq(1)
        return allowed

    def elaborate(self, platform):
        m = Module()
        axil, csr = self.axil, self.csr

        # One-entry holding registers: ready while empty, so each channel is accepted on its
        # own and AW/W may come in either order.
        aw_addr = Signal(BUS_ADDR_BITS)
        aw_full = Signal()
        w_data = Signal(BUS_DATA_BITS)
        w_strb = Signal(BYTES_PER_BEAT)
        w_full = Signal()
        ar_addr = Signal(BUS_ADDR_BITS)
        ar_full = Signal()
        m.d.comb += [axil.awready.eq(~aw_full), axil.wready.eq(~w_full), axil.arready.eq(~ar_full)]
        with m.If(axil.awvalid & axil.awready):
            m.d.sync += [aw_addr.eq(axil.awaddr), aw_full.eq(1)]
        with m.If(axil.wvalid & axil.wready):
            m.d.sync += [w_data.eq(axil.wdata), w_strb.eq(axil.wstrb), w_full.eq(1)]
        with m.If(axil.arvalid & axil.arready):
            m.d.sync += [ar_addr.eq(axil.araddr), ar_full.eq(1)]

        write_allowed = self._address_allowed(m, aw_addr, write=True) & w_strb.all()
        read_allowed = self._address_allowed(m, ar_addr, write=False)

        # Reads and writes share the register bus; when both are ready they alternate so that
        # a master streaming one kind never starves the other.
        write_turn = Signal()
        start_write = Signal()
        start_read = Signal()
        m.d.comb += [
            start_write.eq(aw_full & w_full & (write_turn | ~ar_full)),
            start_read.eq(ar_full & ~start_write),
            csr.addr.eq(Mux(start_write, aw_addr, ar_addr)),
            csr.w_data.eq(w_data),
        ]

        read_ok = Signal()  # the read in flight is mapped (else it answers SLVERR, data 0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(start_write):
                    m.d.comb += csr.w_stb.eq(write_allowed)
                    m.d.sync += [
                        aw_full.eq(0), w_full.eq(0), write_turn.eq(0),
                        axil.bresp.eq(Mux(write_allowed, AXIResp.OKAY, AXIResp.SLVERR)),
                    ]
                    m.next = "WRITE_RESPONSE"
                with m.Elif(start_read):
                    m.d.comb += csr.r_stb.eq(read_allowed)
                    m.d.sync += [ar_full.eq(0), write_turn.eq(1), read_ok.eq(read_allowed)]
                    m.next = "READ_DATA"
            with m.State("READ_DATA"):  # CSRBus: data one cycle after r_stb
                m.d.sync += [
                    axil.rdata.eq(Mux(read_ok, csr.r_data, 0)),
                    axil.rresp.eq(Mux(read_ok, AXIResp.OKAY, AXIResp.SLVERR)),
                ]
                m.next = "READ_RESPONSE"
            with m.State("WRITE_RESPONSE"):
                m.d.comb += axil.bvalid.eq(1)
                with m.If(axil.bready):
                    m.next = "IDLE"
            with m.State("READ_RESPONSE"):
                m.d.comb += axil.rvalid.eq(1)
                with m.If(axil.rready):
                    m.next = "IDLE"
        return m
