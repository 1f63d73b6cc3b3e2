"""The generated register file: reset values, rw/ro/w1c semantics, command strobes."""

from __future__ import annotations

from amaranth.sim import Simulator

from pcmhil.interface import TILE_ID_VALUE, WINDOW_RESET, Geometry, tile_registers
from pcmhil.rtl.csr import RegisterFile


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


async def _write(ctx, dut, addr, value):
    ctx.set(dut.bus.addr, addr)
    ctx.set(dut.bus.w_data, value)
    ctx.set(dut.bus.w_stb, 1)
    await ctx.tick()
    ctx.set(dut.bus.w_stb, 0)


async def _read(ctx, dut, addr):
    ctx.set(dut.bus.addr, addr)
    ctx.set(dut.bus.r_stb, 1)
    await ctx.tick()
    ctx.set(dut.bus.r_stb, 0)
    return ctx.get(dut.bus.r_data)


def test_tile_register_semantics():
    geometry = Geometry(32, 16)
    regs = {r.name: r for r in tile_registers(geometry)}
    dut = RegisterFile(tuple(regs.values()))
    seen = {}

    async def bench(ctx):
        seen["id"] = await _read(ctx, dut, regs["TILE_ID"].offset)
        seen["geometry"] = await _read(ctx, dut, regs["GEOMETRY"].offset)
        seen["window"] = await _read(ctx, dut, regs["WINDOW"].offset)
        # rw: write then read back, only the field's bits are kept
        await _write(ctx, dut, regs["WINDOW"].offset, 0xFFFF_F123)
        seen["window_written"] = await _read(ctx, dut, regs["WINDOW"].offset)
        # w1c: logic sets, bus write of 1 clears, write of 0 keeps
        ctx.set(dut.signal("STATUS", "done__set"), 1)
        await ctx.tick()
        ctx.set(dut.signal("STATUS", "done__set"), 0)
        ctx.set(dut.signal("STATUS", "busy"), 1)
        seen["status_set"] = await _read(ctx, dut, regs["STATUS"].offset)
        await _write(ctx, dut, regs["STATUS"].offset, 0)
        seen["status_kept"] = await _read(ctx, dut, regs["STATUS"].offset)
        await _write(ctx, dut, regs["STATUS"].offset, 0b10)
        seen["status_cleared"] = await _read(ctx, dut, regs["STATUS"].offset)
        # a set in the same cycle as a clearing write wins
        ctx.set(dut.signal("STATUS", "error__set"), 1)
        await _write(ctx, dut, regs["STATUS"].offset, 0b100)
        ctx.set(dut.signal("STATUS", "error__set"), 0)
        seen["error_race"] = ctx.get(dut.signal("STATUS", "error"))
        # strobe register: written pulses for exactly one cycle with the new value visible
        await _write(ctx, dut, regs["CMD"].offset, 0x000005_01)
        seen["strobe"] = (ctx.get(dut.cmd__written), ctx.get(dut.cmd__opcode), ctx.get(dut.cmd__arg))
        await ctx.tick()
        seen["strobe_after"] = ctx.get(dut.cmd__written)
        seen["unmapped"] = await _read(ctx, dut, 0xFFC)

    _run(dut, bench)
    assert seen["id"] == TILE_ID_VALUE
    assert seen["geometry"] == (16 << 16) | 32
    assert seen["window"] == WINDOW_RESET
    assert seen["window_written"] == 0x123
    assert seen["status_set"] == 0b11
    assert seen["status_kept"] == 0b11
    assert seen["status_cleared"] == 0b01
    assert seen["error_race"] == 1
    assert seen["strobe"] == (1, 0x01, 0x05)
    assert seen["strobe_after"] == 0
    assert seen["unmapped"] == 0
