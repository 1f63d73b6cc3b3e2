"""Staging stores (numerics 6 and 8): a committed packet becomes staged, a consume makes it
active, a packet that is never committed (PACKET_LENGTH) leaves the staged data alone, and a
packet received while the active bank is in use lands elsewhere."""

from __future__ import annotations

import numpy as np
from rtl_sim import simulate

from pcmhil.interface import BUS_DATA_BITS, LDPU_LANES, Geometry, PacketType, packet_payload_beats
from pcmhil.rtl.ldpu import LdpuParams
from pcmhil.rtl.row_programmer import ProgramWords
from pcmhil.rtl.staging import StagingStore

GEOMETRY = Geometry(rows=4, cols=12)
MASK = (1 << BUS_DATA_BITS) - 1


async def _write(ctx, dut, beats, commit=True, consume_at_commit=False):
    for k, word in enumerate(beats):
        ctx.set(dut.sink.valid, 1)
        ctx.set(dut.sink.index, k)
        ctx.set(dut.sink.data, int(word) & MASK)
        ctx.set(dut.sink.commit, commit and k == len(beats) - 1)
        ctx.set(dut.consume, consume_at_commit and k == len(beats) - 1)
        await ctx.tick()
    ctx.set(dut.sink.valid, 0)
    ctx.set(dut.sink.commit, 0)
    ctx.set(dut.consume, 0)


async def _consume(ctx, dut):
    ctx.set(dut.consume, 1)
    await ctx.tick()
    ctx.set(dut.consume, 0)


async def _read(ctx, dut, groups):
    out = []
    for group in range(groups):
        ctx.set(dut.read.addr, group)
        await ctx.tick()
        out.append(ctx.get(dut.read.data))
    return out


def _ldpu_packet(rng):
    gain = rng.integers(-(2**15), 2**15, GEOMETRY.cols)
    bias = rng.integers(-(2**31), 2**31, GEOMETRY.cols)
    junk = rng.integers(0, 2**16, GEOMETRY.cols) << 16  # bits 31:16 of a gain beat are ignored
    beats = np.stack([(gain & 0xFFFF) | junk, bias], axis=1).reshape(-1)
    return beats, list(zip(gain, bias, strict=True))


def _ldpu_values(read) -> list[tuple[int, int]]:
    return [(lane.gain, lane.bias) for group in read for lane in group]


def test_ldpu_params_banks():
    beats = packet_payload_beats(PacketType.LDPU_PARAMS, GEOMETRY)
    dut = StagingStore(beats, lanes=LDPU_LANES, chunk=LdpuParams)
    groups = GEOMETRY.cols // LDPU_LANES
    rng = np.random.default_rng(2)
    (a, a_values), (b, b_values), (c, c_values) = (_ldpu_packet(rng) for _ in range(3))
    seen = {}

    async def bench(ctx):
        seen["reset"] = (ctx.get(dut.staged), ctx.get(dut.loaded))
        await _write(ctx, dut, a)
        seen["staged_a"] = (ctx.get(dut.staged), ctx.get(dut.loaded))
        await _write(ctx, dut, b[:5], commit=False)  # PACKET_LENGTH: never committed
        await _consume(ctx, dut)
        seen["active_a"] = (ctx.get(dut.staged), ctx.get(dut.loaded), await _read(ctx, dut, groups))
        await _write(ctx, dut, b)  # staged while a is active
        seen["still_a"] = await _read(ctx, dut, groups)
        await _write(ctx, dut, c, consume_at_commit=True)  # the consume takes b, c gets staged
        seen["active_b"] = (ctx.get(dut.staged), await _read(ctx, dut, groups))
        await _consume(ctx, dut)
        seen["active_c"] = await _read(ctx, dut, groups)

    simulate(dut, bench)
    assert seen["reset"] == (0, 0)
    assert seen["staged_a"] == (1, 0)
    assert seen["active_a"][:2] == (0, 1) and _ldpu_values(seen["active_a"][2]) == a_values
    assert _ldpu_values(seen["still_a"]) == a_values
    assert seen["active_b"][0] == 1 and _ldpu_values(seen["active_b"][1]) == b_values
    assert _ldpu_values(seen["active_c"]) == c_values


def test_program_words_are_pairs_of_beats():
    beats = packet_payload_beats(PacketType.PROGRAM_DATA, GEOMETRY)
    dut = StagingStore(beats, lanes=1, chunk=ProgramWords.elem_shape)
    payload = np.random.default_rng(4).integers(0, 2**32, beats)
    seen = {}

    async def bench(ctx):
        await _write(ctx, dut, payload)
        await _consume(ctx, dut)
        seen["words"] = [group[0] for group in await _read(ctx, dut, beats // 2)]

    simulate(dut, bench)
    assert seen["words"] == [int(payload[2 * k]) | int(payload[2 * k + 1]) << 32 for k in range(beats // 2)]
