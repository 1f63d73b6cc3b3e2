"""cocotb bench: the generated C header (pcmhil_regmap.h) against the chip's register map.

The header's path comes from the environment (HEADER_ENV). Every `PCMHIL_..._ADDR` it defines is
read through the chip's AXI4-Lite port and must answer OKAY with the header's `..._RESET`
value; every rw field's `_MASK` written at the header's address reads back; the word after the
last register of each block answers SLVERR. Nothing here comes from pcmhil.interface: the
header alone says where the registers are, as it does for firmware on a board.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiResp

HEADER_ENV = "PCMHIL_REGMAP_HEADER"
TIMEOUT_US = 2000


def header_defines(path: Path) -> dict[str, int]:
    """The header's numeric `#define PCMHIL_<NAME> <value>u` lines."""
    found = re.findall(r"^#define PCMHIL_(\w+) (0x[0-9A-F]+|\d+)u$", path.read_text(), re.MULTILINE)
    return {name: int(value, 0) for name, value in found}


def header_registers(defines: dict[str, int]) -> list[tuple[str, int, int]]:
    """(name, absolute address, reset) of every register: chip registers by their own ADDR, tile
    t's by TILE<t>_<REG>_ADDR with the reset of TILE_<REG>_RESET."""
    registers = []
    for name, address in defines.items():
        if not name.endswith("_ADDR"):
            continue
        register = name.removesuffix("_ADDR")
        tile = re.match(r"TILE\d+_(\w+)$", register)
        reset = defines[f"TILE_{tile.group(1)}_RESET" if tile else f"{register}_RESET"]
        registers.append((register, address, reset))
    return registers


@cocotb.test(timeout_time=TIMEOUT_US, timeout_unit="us")
async def registers_at_header_addresses(dut):
    defines = header_defines(Path(os.environ[HEADER_ENV]))
    registers = header_registers(defines)
    Clock(dut.clk, 10, unit="ns", impl="gpi").start()
    axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
    logging.getLogger(f"cocotb.{dut._name}").setLevel(logging.WARNING)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)

    for name, address, reset in registers:
        done = await axil.read(address, 4)
        value = int.from_bytes(done.data, "little")
        assert (done.resp, value) == (AxiResp.OKAY, reset), (
            f"{name} at header address {address:#06x}: {done.resp!r} {value:#010x}, "
            f"header reset {reset:#010x}")

    # rw fields: the header's masks at the header's addresses (CONFIG, WINDOW, LDPU_SHIFT of
    # every tile; CMD is left alone, a write to it would start a command).
    for name, address, _ in registers:
        tile = re.match(r"TILE(\d+)_(CONFIG|WINDOW|LDPU_SHIFT)$", name)
        if tile is None:
            continue
        fields = [key.removesuffix("_MASK") for key in defines
                  if key.startswith(f"TILE_{tile.group(2)}_") and key.endswith("_MASK")]
        mask = 0
        for field in fields:
            mask |= defines[f"{field}_MASK"]
        done = await axil.write(address, mask.to_bytes(4, "little"))
        assert done.resp == AxiResp.OKAY, f"write of {name}: {done.resp!r}"
        back = int.from_bytes((await axil.read(address, 4)).data, "little")
        assert back == mask, f"{name}: wrote the header's field masks {mask:#x}, read {back:#x}"

    last_chip = max(address for name, address, _ in registers if not name.startswith("TILE"))
    last_tile = max(address for name, address, _ in registers if name.startswith("TILE"))
    for address in (last_chip + 4, last_tile + 4):
        done = await axil.read(address, 4)
        assert done.resp == AxiResp.SLVERR, f"{address:#06x}, past the header's registers: {done.resp!r}"
