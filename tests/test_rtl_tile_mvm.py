"""A whole tile doing MVMs through its register and stream ports with a fake analog side:
results in both read modes against the reference of numerics.md (LDPU parameters, shift, ReLU,
1-phase ADC offsets from CALIBRATE), identical RESULT packets in both boundary modes, the
sequence numbers, MVM_COUNT and saturation counting."""

from __future__ import annotations

import numpy as np
import pytest
from rtl_tile_bench import FakeAnalog, TileBench, TileReference, run_tile

from pcmhil.host import packets as pk
from pcmhil.interface import (
    INPUT_MAX,
    INPUT_MIN,
    Activation,
    Command,
    Geometry,
    PacketType,
    ReadMode,
)
from pcmhil.rtl.tile import Tile

TILE_INDEX = 2
SATURATING_WINDOW = 1400  # 3 pulses x 1400 cycles > COUNTER_MAX


def config_word(read_mode: ReadMode, activation: Activation, irq_done=0, irq_error=0) -> int:
    return read_mode.value | activation.value << 1 | irq_done << 2 | irq_error << 3


def _mvm_plan(geometry: Geometry, rng):
    """(read mode, activation, shift, vectors) batches of an MVM workload."""
    def vectors(n):
        x = rng.integers(INPUT_MIN, INPUT_MAX + 1, size=(n, geometry.rows))
        x[0, :3] = [INPUT_MIN, INPUT_MAX, 0]
        return x

    return [
        (ReadMode.ONE_PHASE, Activation.IDENTITY, 1, vectors(3)),
        (ReadMode.FOUR_PHASE, Activation.RELU, 2, vectors(2)),
        (ReadMode.ONE_PHASE, Activation.RELU, 0, vectors(1)),
    ]


def _run_workload(geometry: Geometry, transaction: bool, tx_ready_pattern=None, seed: int = 0):
    rng = np.random.default_rng(seed)
    tile = Tile(geometry, TILE_INDEX)
    fake = FakeAnalog(geometry, seed=seed)
    bench = TileBench(tile, tx_ready_pattern)
    ref = TileReference(fake)
    gain = rng.integers(-3, 4, geometry.cols)
    gain[:2] = [-(2**15), 2**15 - 1]  # extremes
    bias = rng.integers(-100, 100, geometry.cols)
    plan = _mvm_plan(geometry, rng)
    expected, registers = [], {}

    async def script(ctx):
        await bench.send(ctx, pk.pack_ldpu_params(gain, bias, geometry, TILE_INDEX)[0])
        await bench.command(ctx, Command.LOAD_LDPU)
        await bench.wait_idle(ctx)
        ref.gain, ref.bias = gain, bias
        await bench.command(ctx, Command.CALIBRATE, 1)
        await bench.wait_idle(ctx)
        expected.append(pk.pack_calib(ref.calibrate(1, 128), TILE_INDEX, 1)[0])
        for read_mode, activation, shift, x in plan:
            await bench.write(ctx, "CONFIG", config_word(read_mode, activation))
            await bench.write(ctx, "LDPU_SHIFT", shift)
            await bench.command(ctx, Command.MVM, len(x))
            for v in x:
                await bench.send(ctx, bench.activations(v)[0])
                expected.append(ref.result_packet(v, TILE_INDEX, four_phase=read_mode is ReadMode.FOUR_PHASE,
                                                  shift=shift, relu=activation is Activation.RELU))
            registers.setdefault("status", []).append(await bench.wait_idle(ctx))
        for name in ("MVM_COUNT", "SATURATION_COUNT", "ERROR_COUNT"):
            registers[name] = await bench.read(ctx, name)
        await bench.wait_packets(ctx, len(expected))

    run_tile(tile, fake, bench, script, transaction)
    return bench.packets, expected, registers, ref


@pytest.mark.parametrize("geometry", [Geometry(8, 8), Geometry(20, 12)], ids=str)
def test_mvm_matches_reference_in_both_boundary_modes(geometry):
    # cycle mode with tx back-pressure, transaction mode without
    cycle = _run_workload(geometry, transaction=False, tx_ready_pattern=[1, 0, 0, 1, 1, 0, 1])
    transaction = _run_workload(geometry, transaction=True)
    for packets, expected, registers, ref in (cycle, transaction):
        assert [list(p) for p in packets] == [list(p) for p in expected]
        assert registers["MVM_COUNT"] == ref.mvm_count == 6
        assert registers["SATURATION_COUNT"] == ref.saturations == 0
        assert registers["ERROR_COUNT"] == 0
        assert all(s["done"] and not s["error"] and s["opcode"] == Command.MVM.value
                   for s in registers["status"])
    assert [list(p) for p in cycle[0]] == [list(p) for p in transaction[0]]
    results = [p for p in cycle[0] if pk.header_fields(int(p[0]))["type"] == PacketType.RESULT.value]
    assert [int(pk.header_fields(int(p[0]))["aux"]) for p in results] == list(range(6))
    codes = np.concatenate([pk.unpack_results(p)[0] for p in results])
    assert len(np.unique(codes)) > 15  # the workload exercises the LDPU, not only saturation


@pytest.mark.parametrize("transaction", [False, True], ids=["cycle", "transaction"])
def test_saturated_column_windows_are_counted(transaction):
    geometry = Geometry(8, 8)
    tile = Tile(geometry, 0)
    fake = FakeAnalog(geometry, seed=3)
    bench = TileBench(tile)
    ref = TileReference(fake)
    x = np.zeros(geometry.rows, dtype=np.int64)
    x[:4] = [INPUT_MIN, INPUT_MAX, 50, -50]
    seen = {}

    async def script(ctx):
        await bench.write(ctx, "WINDOW", SATURATING_WINDOW)
        await bench.command(ctx, Command.MVM, 1)
        await bench.send(ctx, bench.activations(x)[0])
        seen["status"] = await bench.wait_idle(ctx)
        seen["count"] = await bench.read(ctx, "SATURATION_COUNT")
        await bench.write(ctx, "STATUS", 0b1000)  # w1c
        seen["cleared"] = await bench.status(ctx)
        await bench.wait_packets(ctx, 1)

    run_tile(tile, fake, bench, script, transaction)
    expected = ref.result_packet(x, 0, cycles=SATURATING_WINDOW)
    assert ref.saturations > 0
    assert seen["count"] == ref.saturations
    assert seen["status"]["saturated"] == 1 and seen["cleared"]["saturated"] == 0
    assert list(bench.packets[0]) == list(expected)


def test_a_full_output_buffer_stalls_the_tile():
    """With tx stalled, RESULT packets fill the output buffer (room for one VERIFY_DATA); the
    tile waits for room before each packet, and everything leaves intact and in order."""
    geometry = Geometry(8, 8)
    tile = Tile(geometry, 0)
    fake = FakeAnalog(geometry, seed=4)
    stall = [0] * 1500 + [1] * 40
    bench = TileBench(tile, tx_ready_pattern=stall)
    ref = TileReference(fake)
    x = np.random.default_rng(4).integers(INPUT_MIN, INPUT_MAX + 1, size=(5, geometry.rows))
    expected, seen = [], {}

    async def script(ctx):
        await bench.command(ctx, Command.MVM, len(x))
        for v in x:
            await bench.send(ctx, bench.activations(v)[0])
            expected.append(ref.result_packet(v, 0))
        await bench.wait_idle(ctx)
        await bench.command(ctx, Command.VERIFY_ROW, 1)
        await ctx.tick().repeat(600)  # its two windows are long done
        seen["waiting"] = (await bench.status(ctx), len(fake.windows), len(bench.packets))
        expected.append(pk.pack_verify(*ref.verify(1, 128), 0, 1)[0])
        await bench.wait_idle(ctx, limit=20_000)
        await bench.wait_packets(ctx, len(expected), limit=20_000)

    run_tile(tile, fake, bench, script, transaction=True)
    status, windows, packets = seen["waiting"]
    assert status["busy"] and windows == len(x) + 2 and packets < len(x)
    assert [list(p) for p in bench.packets] == [list(p) for p in expected]
