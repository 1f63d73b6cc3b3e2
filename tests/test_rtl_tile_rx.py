"""The tile's packet parser against numerics.md section 8: every input packet type delivered to
its sink with the commit on the last beat, PACKET_LENGTH for early and late tlast (no commit,
the rest discarded up to tlast), and back-pressure of ACTIVATIONS only while the buffer is full."""

from __future__ import annotations

import pytest
from rtl_sim import simulate
from rtl_tile_bench import send_packet

from pcmhil.host.packets import header_word
from pcmhil.interface import INPUT_PACKET_TYPES, Geometry, PacketType, packet_payload_beats
from pcmhil.rtl.tile_rx import SINK_NAMES, TileRx

GEOMETRY = Geometry(rows=8, cols=4)


def _packet(kind: PacketType, length: int | None = None, tag: int = 0) -> list[int]:
    length = packet_payload_beats(kind, GEOMETRY) if length is None else length
    return [header_word(kind, 0)] + [(tag << 16) | k for k in range(length)]


def _run(script, act_full_cycles=()):
    """Run `script(ctx, send)`; returns the beats delivered to each sink (index, data, commit),
    the number of error strobes and of cycles rx was stalled."""
    dut = TileRx(GEOMETRY)
    record = {"beats": {name: [] for name in SINK_NAMES.values()}, "errors": 0, "stalls": 0}

    async def watch(ctx):
        sinks = [getattr(dut, name) for name in SINK_NAMES.values()]
        sampled = [v for s in sinks for v in (s.valid, s.index, s.data, s.commit)]
        cycle = 0
        async for _, _, error, valid, ready, *values in ctx.tick().sample(dut.error, dut.rx.valid,
                                                                            dut.rx.ready, *sampled):
            cycle += 1
            ctx.set(dut.act_full, cycle in act_full_cycles)
            record["errors"] += error
            record["stalls"] += valid and not ready
            for name, (v, index, data, commit) in zip(SINK_NAMES.values(),
                                                     zip(*[iter(values)] * 4, strict=True), strict=True):
                if v:
                    record["beats"][name].append((index, data, commit))

    async def bench(ctx):
        await script(ctx, lambda words: send_packet(ctx, dut.rx, words))
        await ctx.tick().repeat(2)

    simulate(dut, bench, background=[watch])
    return record


@pytest.mark.parametrize("kind", INPUT_PACKET_TYPES)
def test_each_type_reaches_its_sink(kind):
    async def script(ctx, send):
        await send(_packet(kind, tag=1))

    record = _run(script)
    length = packet_payload_beats(kind, GEOMETRY)
    expected = [(k, (1 << 16) | k, int(k == length - 1)) for k in range(length)]
    assert record["beats"] == {name: expected if name == SINK_NAMES[kind] else []
                               for name in SINK_NAMES.values()}
    assert record["errors"] == 0 and record["stalls"] == 0


def test_early_and_late_tlast_raise_packet_length_and_discard():
    kind = PacketType.PROGRAM_DATA
    length = packet_payload_beats(kind, GEOMETRY)

    async def script(ctx, send):
        await send(_packet(kind)[:1])  # header alone
        await send(_packet(kind, tag=2)[:2])  # tlast on the first payload beat
        await send(_packet(kind, length + 3, tag=3))  # tlast three beats late
        await send(_packet(kind, tag=4))  # a good packet after the bad ones

    record = _run(script)
    beats = record["beats"][SINK_NAMES[kind]]
    assert record["errors"] == 3
    assert not any(commit for _, _, commit in beats[:-length])
    # the early packet's first beat and the late packet's payload beats (not past the last
    # payload beat) may be written, but none is committed
    assert [data >> 16 for _, data, _ in beats[:-length]] == [2] + [3] * length
    assert beats[-length:] == [(k, (4 << 16) | k, int(k == length - 1)) for k in range(length)]


def test_activations_wait_while_the_buffer_is_full():
    act_full = set(range(0, 40))

    async def script(ctx, send):
        await send(_packet(PacketType.LDPU_PARAMS))  # not held back by a full input buffer
        await send(_packet(PacketType.ACTIVATIONS))  # waits until cycle 40

    record = _run(script, act_full_cycles=act_full)
    assert len(record["beats"]["ldpu"]) == packet_payload_beats(PacketType.LDPU_PARAMS, GEOMETRY)
    assert len(record["beats"]["act"]) == packet_payload_beats(PacketType.ACTIVATIONS, GEOMETRY)
    assert record["stalls"] >= 40 - 1 - len(_packet(PacketType.LDPU_PARAMS)) - 2
    assert record["errors"] == 0
