"""The default 256 x 256 tile: elaboration, one MVM in each read mode against the reference, and
the cycle budget of an MVM (LAST_MVM_CYCLES) against its formula at several geometries."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.back import rtlil
from rtl_tile_bench import FakeAnalog, TileBench, TileReference, run_tile

from pcmhil.interface import (
    BYTES_PER_BEAT,
    FOUR_PHASE_WINDOWS,
    INPUT_MAX,
    INPUT_MIN,
    LDPU_LANES,
    WINDOW_RESET,
    Command,
    Geometry,
    ReadMode,
)
from pcmhil.rtl.tile import Tile
from pcmhil.rtl.tile_tx import READOUT_FAN_IN

#: Cycles a window costs beyond W: the controller's start, the PWM driver's two cycles of setup,
#: the controller's step to the next window.
WINDOW_OVERHEAD = 4
#: Cycles an MVM costs beyond loading the latch (a word per cycle), its windows and its groups
#: of columns (a result beat per cycle): the latch's release, the assembler's start, room check
#: and header, the readout's head register (the memories' read latency), the LDPU pipeline and
#: the assembler's output register; LAST_MVM_CYCLES counts the first and the last cycle.
MVM_OVERHEAD = 11


def readout_stages(groups: int) -> int:
    """Register stages of the readout mux beyond the first."""
    stages = 1
    while groups > READOUT_FAN_IN:
        groups = -(-groups // READOUT_FAN_IN)
        stages += 1
    return stages - 1


def mvm_cycles(geometry: Geometry, windows: int, window: int = WINDOW_RESET) -> int:
    """LAST_MVM_CYCLES of one MVM: latch load (a word per cycle), windows, a result beat per
    group of LDPU_LANES columns."""
    groups = geometry.cols // LDPU_LANES
    return (geometry.rows // BYTES_PER_BEAT + windows * (window + WINDOW_OVERHEAD)
            + groups + readout_stages(groups) + MVM_OVERHEAD)


def _mvm_in_both_read_modes(geometry: Geometry, seed: int = 0):
    tile = Tile(geometry, 0)
    fake = FakeAnalog(geometry, seed=seed)
    bench = TileBench(tile)
    ref = TileReference(fake)
    x = np.random.default_rng(seed).integers(INPUT_MIN, INPUT_MAX + 1, size=(2, geometry.rows))
    cycles, expected = [], []

    async def script(ctx):
        for read_mode, v in zip(ReadMode, x, strict=True):
            await bench.write(ctx, "CONFIG", read_mode.value)
            await bench.command(ctx, Command.MVM, 1)
            await bench.send(ctx, bench.activations(v)[0])
            await bench.wait_idle(ctx)
            cycles.append(await bench.read(ctx, "LAST_MVM_CYCLES"))
            expected.append(ref.result_packet(v, 0, four_phase=read_mode is ReadMode.FOUR_PHASE))
        await bench.wait_packets(ctx, 2)

    run_tile(tile, fake, bench, script, transaction=True)
    assert [list(p) for p in bench.packets] == [list(p) for p in expected]
    return cycles


@pytest.mark.parametrize("geometry", [Geometry(8, 8), Geometry(4, 36), Geometry(32, 4)], ids=str)
def test_mvm_cycle_budget(geometry):
    assert _mvm_in_both_read_modes(geometry) == [mvm_cycles(geometry, 1),
                                                  mvm_cycles(geometry, len(FOUR_PHASE_WINDOWS))]


@pytest.mark.slow
def test_default_geometry():
    geometry = Geometry()
    assert len(rtlil.convert(Tile(geometry, 0))) > 0
    assert _mvm_in_both_read_modes(geometry) == [mvm_cycles(geometry, 1),
                                                  mvm_cycles(geometry, len(FOUR_PHASE_WINDOWS))]
