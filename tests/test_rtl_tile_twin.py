"""The RTL tile and the twin (host/twin.py), which implement the same numerics.md, agree on every
register but LAST_MVM_CYCLES after each step of a command sequence with errors, and on every
output packet, with the same fake analog side."""

from __future__ import annotations

import numpy as np
from rtl_tile_bench import FakeAnalog, TileBench, run_tile

from pcmhil.host import packets as pk
from pcmhil.host.twin import TwinTransport
from pcmhil.interface import Command, Geometry, RegisterMap, command_word, tile_registers
from pcmhil.rtl.tile import Tile

GEOMETRY = Geometry(12, 8, 1)
COMPARED = [r.name for r in tile_registers(GEOMETRY) if r.name != "LAST_MVM_CYCLES"]
#: A step has settled when nothing the bench can see changed for this many polls.
QUIET_POLLS, POLL_CYCLES = 10, 32


class _TwinAnalog:
    """The fake analog side behind the twin's AnalogTile protocol."""

    def __init__(self, fake: FakeAnalog):
        self.fake = fake

    def windows(self, durations, negative, select, n_cycles):
        return np.stack([self.fake.count(d, n, int(s), n_cycles)
                         for d, n, s in zip(durations, negative, select, strict=True)])

    def program_row(self, row, plus, minus, mode):
        pass

    def advance_time(self, seconds):
        pass


def _cmd(opcode, arg=0):
    return ("write", "CMD", command_word(opcode, arg))


def _steps(rng):
    rows, cols = GEOMETRY.rows, GEOMETRY.cols

    def act():
        return ("send", pk.pack_activations(rng.integers(-128, 128, rows), GEOMETRY)[0])

    program = pk.pack_program_data(rng.integers(0, 256, cols), rng.integers(0, 256, cols), GEOMETRY)[0]
    return [
        ("write", "CONFIG", 0b1100),
        ("send", pk.pack_ldpu_params(rng.integers(-3, 4, cols), rng.integers(-60, 60, cols), GEOMETRY)[0]),
        _cmd(Command.LOAD_LDPU), _cmd(Command.CALIBRATE, 2), ("write", "LDPU_SHIFT", 1),
        _cmd(Command.MVM, 2), act(), act(),
        ("write", "CONFIG", 0b1111), _cmd(Command.MVM, 1), _cmd(Command.VERIFY_ROW, 3), act(),
        _cmd(Command.VERIFY_ROW, 5), _cmd(0x33), _cmd(Command.ABORT),
        ("send", program), ("send", program[:3]), _cmd(Command.PROGRAM_ROW, 4),
        _cmd(Command.PROGRAM_ROW, 4), _cmd(Command.MVM, 3), _cmd(Command.ABORT),
        ("write", "WINDOW", 127), _cmd(Command.MVM, 3), ("write", "WINDOW", 1400),
        _cmd(Command.CALIBRATE, 0), ("write", "CONFIG", 0), _cmd(Command.MVM, 1), act(),
        ("write", "STATUS", 0b1110), _cmd(Command.CALIBRATE, 9), _cmd(Command.LOAD_LDPU),
    ]


def _twin(fake, steps):
    twin = TwinTransport(GEOMETRY, [_TwinAnalog(fake)])
    regs = RegisterMap(GEOMETRY)
    seen = []
    for kind, *what in steps:
        if kind == "write":
            twin.write(regs.address(what[0], 0), what[1])
        else:
            twin.send([what[0]])
        seen.append({name: twin.read(regs.address(name, 0)) for name in COMPARED})
    return seen, twin.receive(twin.pending())


def test_rtl_tile_agrees_with_the_twin():
    steps = _steps(np.random.default_rng(3))
    twin_registers, twin_packets = _twin(FakeAnalog(GEOMETRY, seed=11), steps)
    tile = Tile(GEOMETRY, 0)
    fake = FakeAnalog(GEOMETRY, seed=11)
    bench = TileBench(tile)
    rtl_registers = []

    async def settle(ctx):
        """Until no window runs and nothing changed for QUIET_POLLS polls (an MVM may still
        wait for vectors: the twin has finished whatever it could)."""
        last, quiet = None, 0
        while quiet < QUIET_POLLS:
            await ctx.tick().repeat(POLL_CYCLES)
            now = (await bench.read(ctx, "STATUS"), await bench.read(ctx, "MVM_COUNT"),
                   len(bench.packets), len(fake.windows))
            quiet = quiet + 1 if now == last and not ctx.get(tile.analog.win_active) else 0
            last = now

    async def script(ctx):
        for kind, *what in steps:
            if kind == "write":
                await bench.write(ctx, *what)
            else:
                await bench.send(ctx, what[0])
            await settle(ctx)
            rtl_registers.append({name: await bench.read(ctx, name) for name in COMPARED})

    run_tile(tile, fake, bench, script, transaction=True)
    for n, (twin, rtl) in enumerate(zip(twin_registers, rtl_registers, strict=True)):
        assert rtl == twin, (n, steps[n][:2])
    assert [list(p) for p in bench.packets] == [list(p) for p in twin_packets]
    assert len(twin_packets) == 7
