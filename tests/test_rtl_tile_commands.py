"""A whole tile's non-MVM commands through its ports: VERIFY_ROW (two windows PLUS, MINUS with
d_row = W (full window), VERIFY_DATA layout), CALIBRATE (2^k windows, rounding, CALIB_DATA),
PROGRAM_ROW (boundary words and commit), LOAD_LDPU (staging), and that each window is one analog
operation in the order of numerics.md."""

from __future__ import annotations

import numpy as np
import pytest
from rtl_tile_bench import FakeAnalog, TileBench, TileReference, run_tile

from pcmhil.host import packets as pk
from pcmhil.interface import (
    FOUR_PHASE_WINDOWS,
    INPUT_MAX,
    INPUT_MIN,
    Command,
    DeviceSelect,
    Geometry,
    ProgramMode,
    ReadMode,
)
from pcmhil.rtl.tile import Tile

GEOMETRY = Geometry(16, 12)
TILE_INDEX = 1


def _bench(seed=0):
    tile = Tile(GEOMETRY, TILE_INDEX)
    fake = FakeAnalog(GEOMETRY, seed=seed)
    return tile, fake, TileBench(tile), TileReference(fake)


@pytest.mark.parametrize("transaction", [False, True], ids=["cycle", "transaction"])
def test_verify_calibrate_and_window_sequence(transaction):
    """The fake analog side records every window (operation) it is asked for."""
    tile, fake, bench, ref = _bench(seed=4)
    x = np.random.default_rng(4).integers(INPUT_MIN, INPUT_MAX + 1, GEOMETRY.rows)
    last_row = GEOMETRY.rows - 1
    expected, status = [], []

    async def script(ctx):
        for row in (0, last_row):
            await bench.command(ctx, Command.VERIFY_ROW, row)
            status.append(await bench.wait_idle(ctx))
            expected.append(pk.pack_verify(*ref.verify(row, 128), TILE_INDEX, row)[0])
        for k in (0, 3):
            await bench.command(ctx, Command.CALIBRATE, k)
            status.append(await bench.wait_idle(ctx))
            expected.append(pk.pack_calib(ref.calibrate(k, 128), TILE_INDEX, k)[0])
        await bench.write(ctx, "CONFIG", ReadMode.FOUR_PHASE.value)
        await bench.command(ctx, Command.MVM, 1)
        await bench.send(ctx, bench.activations(x)[0])
        status.append(await bench.wait_idle(ctx))
        expected.append(ref.result_packet(x, TILE_INDEX, four_phase=True))
        await bench.wait_packets(ctx, len(expected))

    run_tile(tile, fake, bench, script, transaction)
    assert [list(p) for p in bench.packets] == [list(p) for p in expected]
    assert all(s["done"] and not s["error"] and not s["busy"] for s in status)

    plus, minus = DeviceSelect.PLUS.value, DeviceSelect.MINUS.value
    diff = DeviceSelect.DIFFERENTIAL.value
    assert [w[0] for w in fake.windows] == ([plus, minus] * 2 + [diff] * (1 + 8)
                                            + [sel.value for _, sel, _ in FOUR_PHASE_WINDOWS])
    for (_, durations, negative, cycles), row in zip(fake.windows[:4], [0, 0, last_row, last_row],
                                                     strict=True):
        expected_durations = np.zeros(GEOMETRY.rows)
        expected_durations[row] = cycles
        np.testing.assert_array_equal(durations, expected_durations)
        assert not negative.any() and cycles == 128
    assert all(not w[1].any() and not w[2].any() for w in fake.windows[4:13])  # CALIBRATE: d = 0
    for (_, durations, negative, _), (sign, _, _) in zip(fake.windows[13:], FOUR_PHASE_WINDOWS, strict=True):
        np.testing.assert_array_equal(durations, np.where(np.sign(x) == sign, np.abs(x), 0))
        assert not negative.any()


def test_calibrate_rounds_half_up():
    """(sum + 2^(k-1)) >> k on sums that end in exactly .5 and in .25 / .75."""
    tile, fake, bench, ref = _bench(seed=5)
    fake.base[:] = np.arange(GEOMETRY.cols) % 4  # counts base_j * W per window
    seen = {}

    async def script(ctx):
        await bench.write(ctx, "WINDOW", 129)  # odd W: odd sums for odd base_j
        await bench.command(ctx, Command.CALIBRATE, 1)
        await bench.wait_idle(ctx)
        await bench.command(ctx, Command.CALIBRATE, 2)
        seen["status"] = await bench.wait_idle(ctx)
        await bench.wait_packets(ctx, 2)

    run_tile(tile, fake, bench, script, transaction=False)
    first, second = ref.calibrate(1, 129), ref.calibrate(2, 129)
    assert list(pk.unpack_calib(bench.packets[0])) == list(first)
    assert list(pk.unpack_calib(bench.packets[1])) == list(second)
    assert list(first) == [(2 * b * 129 + 1) >> 1 for b in fake.base]


def test_program_row_sends_the_staged_words():
    tile, fake, bench, _ = _bench()
    rng = np.random.default_rng(6)
    plus, minus = rng.integers(0, 256, GEOMETRY.cols), rng.integers(0, 256, GEOMETRY.cols)
    packet = pk.pack_program_data(plus, minus, GEOMETRY, TILE_INDEX)[0]
    seen = {}

    async def script(ctx):
        await bench.send(ctx, packet)
        seen["staged"] = await bench.status(ctx)
        await bench.command(ctx, Command.PROGRAM_ROW, 7 | ProgramMode.PULSE.value << 16)
        seen["done"] = await bench.wait_idle(ctx)
        await ctx.tick().repeat(4)

    run_tile(tile, fake, bench, script, transaction=True)
    assert seen["staged"]["prog_staged"] == 1
    assert seen["done"]["prog_staged"] == 0 and seen["done"]["done"] == 1
    assert seen["done"]["opcode"] == Command.PROGRAM_ROW.value
    (row, mode, words, cycles, commit_cycle), = fake.programmed
    assert (row, mode) == (7, ProgramMode.PULSE.value)
    payload = packet[1:].astype(np.uint64)
    assert words == [int(payload[2 * k] | payload[2 * k + 1] << np.uint64(32))
                     for k in range(len(payload) // 2)]
    # word k carries columns 4k .. 4k+3, column 4k+m as (G+ byte 2m, G- byte 2m+1)
    assert [(w >> (16 * m)) & 0xFF for w in words for m in range(4)] == list(plus)
    assert [(w >> (16 * m + 8)) & 0xFF for w in words for m in range(4)] == list(minus)
    assert cycles == [(k, k) for k in range(len(words))] and commit_cycle == len(words)
    assert not bench.packets


def test_ldpu_params_take_effect_at_load_ldpu():
    tile, fake, bench, ref = _bench(seed=8)
    rng = np.random.default_rng(8)
    gain, bias = rng.integers(-4, 5, GEOMETRY.cols), rng.integers(-50, 50, GEOMETRY.cols)
    x = rng.integers(-40, 40, GEOMETRY.rows)
    seen = {}

    async def script(ctx):
        await bench.send(ctx, pk.pack_ldpu_params(gain, bias, GEOMETRY, TILE_INDEX)[0])
        seen["staged"] = await bench.status(ctx)
        await bench.command(ctx, Command.MVM, 1)  # still the reset parameters
        await bench.send(ctx, bench.activations(x)[0])
        await bench.wait_idle(ctx)
        await bench.command(ctx, Command.LOAD_LDPU)
        seen["loaded"] = await bench.wait_idle(ctx)
        await bench.command(ctx, Command.MVM, 1)
        await bench.send(ctx, bench.activations(x)[0])
        await bench.wait_idle(ctx)
        await bench.wait_packets(ctx, 2)

    run_tile(tile, fake, bench, script, transaction=True)
    before = ref.mvm(x)
    ref.gain, ref.bias = gain, bias
    after = ref.mvm(x)
    assert seen["staged"]["ldpu_staged"] == 1 and seen["loaded"]["ldpu_staged"] == 0
    assert seen["loaded"]["done"] == 1
    assert list(pk.unpack_results(bench.packets[0])[0]) == list(before)
    assert list(pk.unpack_results(bench.packets[1])[0]) == list(after)
    assert not np.array_equal(before, after)
