"""A register file built from a register table of pcmhil.interface.

Each field becomes signals on the component, named `<REGISTER>__<field>` in lower case:

* ``rw``  field: an output ``<reg>__<field>`` holding the value (reset from the table).
* ``ro``  field: an input ``<reg>__<field>`` the surrounding logic drives; reads return it.
  A constant ro field (identifiers, geometry) has no port; reads return its value.
* ``w1c`` field: an input ``<reg>__<field>__set`` (a one-cycle strobe from the logic) and an
  output ``<reg>__<field>`` holding the flag; writing 1 to the bit clears it. A set and a clear in
  the same cycle leave the flag set (the new event is not lost).
* a register with ``strobe=True`` also has an output ``<reg>__written``, high for the cycle after
  a write, when the new field values are visible on the rw outputs.

Writes to read-only bits are ignored here; the AXI4-Lite slave answers writes to registers with
no writable field, and to unmapped addresses, with SLVERR before they reach this bus.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import BUS_DATA_BITS, Register
from pcmhil.rtl.signatures import CSRBus


def port_name(reg: Register, field_name: str) -> str:
    return f"{reg.name.lower()}__{field_name}"


class RegisterFile(wiring.Component):
    """Registers of one block (the chip's or a tile's) on a CSRBus (target side)."""

    def __init__(self, registers: tuple[Register, ...]):
        self.registers = registers
        members = {"bus": In(CSRBus())}
        for reg in registers:
            for f in reg.fields:
                name = port_name(reg, f.name)
                if f.constant:
                    continue
                if f.access == "rw":
                    members[name] = Out(f.width, init=f.reset)
                elif f.access == "ro":
                    members[name] = In(f.width)
                else:  # w1c
                    members[name] = Out(1)
                    members[name + "__set"] = In(1)
            if reg.strobe:
                members[f"{reg.name.lower()}__written"] = Out(1)
        super().__init__(members)

    def signal(self, register: str, field: str) -> Signal:
        """The signal of `field` of `register` (see the module docstring for its direction)."""
        return getattr(self, f"{register.lower()}__{field}")

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        read_data = Signal(BUS_DATA_BITS)
        with m.Switch(bus.addr):
            for reg in self.registers:
                with m.Case(reg.offset):
                    for f in reg.fields:
                        value = f.reset if f.constant else getattr(self, port_name(reg, f.name))
                        m.d.comb += read_data[f.lsb:f.lsb + f.width].eq(value)
        with m.If(bus.r_stb):
            m.d.sync += bus.r_data.eq(read_data)

        for reg in self.registers:
            if not reg.writable:
                continue  # writes to it are answered SLVERR by the AXI4-Lite slave
            hit = Signal(name=f"{reg.name.lower()}_write")
            m.d.comb += hit.eq(bus.w_stb & (bus.addr == reg.offset))
            for f in reg.fields:
                if f.constant:
                    continue
                value = getattr(self, port_name(reg, f.name))
                bits = bus.w_data[f.lsb:f.lsb + f.width]
                if f.access == "rw":
                    with m.If(hit):
                        m.d.sync += value.eq(bits)
                elif f.access == "w1c":
                    setter = getattr(self, port_name(reg, f.name) + "__set")
                    with m.If(setter):
                        m.d.sync += value.eq(1)
                    with m.Elif(hit & bits[0]):
                        m.d.sync += value.eq(0)
            if reg.strobe:
                m.d.sync += getattr(self, f"{reg.name.lower()}__written").eq(hit)
        return m
