"""Signatures shared by the RTL blocks: the internal register bus, packet streams and the
analog boundary. Widths come from pcmhil.interface; nothing here is a number of its own.
"""

from __future__ import annotations

from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import (
    BOUNDARY_WORD_BITS,
    BUS_DATA_BITS,
    WINDOW_BITS,
    BoundaryLayout,
    DeviceSelect,
    Geometry,
    ProgramMode,
)

#: One beat of a packet stream: 32 data bits and the end-of-packet flag.
Beat = data.StructLayout({"data": BUS_DATA_BITS, "last": 1})


def packet_stream() -> stream.Signature:
    """A packet stream (source view). AXI4-Stream tdata/tlast/tvalid/tready at the chip top."""
    return stream.Signature(Beat)


#: Byte offset width of the internal register bus: one tile's (or the chip's) register block.
CSR_ADDR_BITS = 12


class CSRBus(wiring.Signature):
    """Internal register bus (initiator view), one access per cycle, no wait states.

    A write happens in the cycle `w_stb` is high. A read strobed with `r_stb` in cycle n returns
    `r_data` in cycle n + 1. Address decoding errors are answered by the AXI4-Lite slave from the
    register table (pcmhil.interface.RegisterMap), so the bus itself has no error signal.
    """

    def __init__(self, addr_bits: int = CSR_ADDR_BITS):
        super().__init__({
            "addr": Out(addr_bits),
            "r_stb": Out(1),
            "r_data": In(BUS_DATA_BITS),
            "w_stb": Out(1),
            "w_data": Out(BUS_DATA_BITS),
        })


class AnalogBoundary(wiring.Signature):
    """A tile's mixed-signal boundary (digital side's view: Out = towards the analog array).

    Port meanings and timing: docs/numerics.md section 2; word slicing: BoundaryLayout.
    """

    def __init__(self, geometry: Geometry):
        lay = BoundaryLayout(geometry)

        def words(count: int, direction):
            # Always whole 64-bit words; when a vector is not a multiple of 64 bits the pad bits
            # of an Out word are driven 0 and those of an In word are ignored.
            return direction(BOUNDARY_WORD_BITS).array(count)

        super().__init__({
            "win_start": Out(1),
            "win_active": Out(1),
            "win_select": Out(DeviceSelect),
            "win_cycles": Out(WINDOW_BITS),
            "win_full": Out(1),
            "drive_en": words(lay.drive_words, Out),
            "drive_neg": words(lay.drive_words, Out),
            "drive_mag": words(lay.mag_words, Out),
            "prog_valid": Out(1),
            "prog_index": Out(8),
            "prog_data": Out(BOUNDARY_WORD_BITS),
            "prog_commit": Out(1),
            "prog_row": Out(16),
            "prog_mode": Out(ProgramMode),
            "cco_pulses": words(lay.pulse_words, In),
            "cco_count": words(lay.count_words, In),
            "boundary_mode": In(1),
        })


def tile_signature(geometry: Geometry) -> wiring.Signature:
    """What the chip top expects of every tile (rtl/chip.py's tile_factory): its register bus,
    its input and output packet streams, its analog boundary and its interrupt."""
    return wiring.Signature({
        "csr": In(CSRBus()),
        "rx": In(packet_stream()),
        "tx": Out(packet_stream()),
        "analog": Out(AnalogBoundary(geometry)),
        "irq": Out(1),
    })
