"""Stream router and output arbiter in Amaranth's simulator (docs/numerics.md section 8).

Sources insert random idle cycles (valid low, also inside packets) and sinks random back-pressure;
every sink checks the AXI4-Stream rule that a beat on offer stays unchanged until it is taken.
"""

from __future__ import annotations

import random

from amaranth import ClockDomain, Module
from rtl_sim import simulate

from pcmhil.interface import INPUT_PACKET_TYPES, ErrorCode, Geometry, PacketHeader, PacketType
from pcmhil.rtl.stream_arbiter import StreamArbiter
from pcmhil.rtl.stream_router import StreamRouter

Packet = list[tuple[int, int]]  # beats: (data, last)
#: A beat not taken within this many cycles means the design under test deadlocked.
STALL_LIMIT = 200


def packet(kind: int, tile: int, payload: list[int], aux: int = 0) -> Packet:
    header = PacketHeader.const({"type": kind, "tile": tile, "aux": aux}).as_value().value
    words = [header, *payload]
    return [(word, int(i == len(words) - 1)) for i, word in enumerate(words)]


def random_payload(rng: random.Random, tag: int) -> list[int]:
    """0..5 beats, each word tagged so that a misplaced beat is recognisable."""
    return [(tag << 16) | (i << 8) | rng.randrange(256) for i in range(rng.randrange(6))]


async def send(ctx, stream, packets: list[Packet], rng: random.Random, p_valid: float) -> None:
    """Offer every beat of `packets` in order, idling (valid low) at random before a beat."""
    for beats in packets:
        for data, last in beats:
            ctx.set(stream.valid, 0)
            while rng.random() >= p_valid:
                await ctx.tick()
            ctx.set(stream.payload, {"data": data, "last": last})
            ctx.set(stream.valid, 1)
            await taken(ctx, stream, data)
    ctx.set(stream.valid, 0)


async def taken(ctx, stream, data: int) -> None:
    """Wait for the clock edge at which the offered beat is taken (bounded: a hang fails)."""
    for _ in range(STALL_LIMIT):
        _, _, ready = await ctx.tick().sample(stream.ready)
        if ready:
            return
    raise AssertionError(f"beat {data:#x} not taken within {STALL_LIMIT} cycles")


def sink(stream, received: list, rng: random.Random, p_ready: float):
    """A background testbench taking beats with random back-pressure into `received`."""

    async def run(ctx):
        offered = None  # the beat offered but not taken in the previous cycle
        while True:
            ctx.set(stream.ready, rng.random() < p_ready)
            _, _, valid, ready, payload = await ctx.tick().sample(stream.valid, stream.ready,
                                                                   stream.payload)
            beat = (payload.data, payload.last)
            if offered is not None:
                assert valid and beat == offered, f"beat {offered} withdrawn or changed to {beat}"
            if valid and ready:
                received.append(beat)
            offered = beat if valid and not ready else None

    return run


def beats_of(packets: list[Packet]) -> list[tuple[int, int]]:
    return [beat for beats in packets for beat in beats]


def split_packets(beats: list[tuple[int, int]]) -> list[Packet]:
    packets, current = [], []
    for beat in beats:
        current.append(beat)
        if beat[1]:
            packets.append(current)
            current = []
    assert not current, "output ends inside a packet"
    return packets


# ---------------------------------------------------------------------------------------------
# Router
# ---------------------------------------------------------------------------------------------

GEOMETRY = Geometry(8, 8, 3)
TYPE_VALUES = [kind.value for kind in INPUT_PACKET_TYPES]


def run_router(packets: list[Packet], seed: int, p_valid=0.7, p_ready=0.5, drain_cycles=400):
    """Send `packets` through a router of GEOMETRY; returns (beats per tile, errors seen, count)."""
    dut = StreamRouter(GEOMETRY)
    rng = random.Random(seed)
    received = [[] for _ in range(GEOMETRY.tiles)]
    errors = []
    result = {}

    async def error_monitor(ctx):
        async for _, _, error, code in ctx.tick().sample(dut.error, dut.error_code):
            if error:
                errors.append(ErrorCode(code))

    async def source(ctx):
        await send(ctx, dut.rx, packets, rng, p_valid)
        await ctx.tick().repeat(drain_cycles)
        result["count"] = ctx.get(dut.error_count)

    sinks = [sink(tx, received[t], random.Random(seed * 10 + t), p_ready)
             for t, tx in enumerate(dut.tx)]
    simulate(dut, source, background=[error_monitor, *sinks])
    return received, errors, result["count"]


def test_router_delivers_each_packet_whole_to_its_tile_under_backpressure():
    rng = random.Random(1)
    packets = [packet(rng.choice(TYPE_VALUES), tile, random_payload(rng, n), aux=n)
               for n, tile in enumerate(rng.choices(range(GEOMETRY.tiles), k=60))]
    received, errors, count = run_router(packets, seed=2)
    for tile in range(GEOMETRY.tiles):
        mine = [p for p in packets if PacketHeader.from_bits(p[0][0]).tile == tile]
        assert received[tile] == beats_of(mine), f"tile {tile} got the wrong beats"
    assert errors == [] and count == 0


def test_router_drops_bad_packets_up_to_tlast_and_reports_them():
    bad_tile = GEOMETRY.tiles  # the first tile that does not exist
    good = [packet(PacketType.ACTIVATIONS.value, t, [0x1000 + t, 0x2000 + t]) for t in range(3)]
    packets = [
        good[0],
        packet(PacketType.RESULT.value, 0, [0xBAD0, 0xBAD1, 0xBAD2]),  # output-only type
        good[1],
        packet(PacketType.PROGRAM_DATA.value, bad_tile, [0xBAD3, 0xBAD4]),
        packet(0x00, 0xFF, []),  # unknown type and tile: the type is checked first
        packet(PacketType.LDPU_PARAMS.value, 0xFF, [0xBAD5]),
        good[2],
    ]
    received, errors, count = run_router(packets, seed=3)
    assert received == [beats_of([g]) for g in good]
    assert errors == [ErrorCode.PACKET_TYPE, ErrorCode.PACKET_TILE, ErrorCode.PACKET_TYPE,
                      ErrorCode.PACKET_TILE]
    assert count == 4


def test_router_stalls_the_input_while_the_target_tile_is_not_ready():
    dut = StreamRouter(GEOMETRY)
    seen = {}

    async def bench(ctx):
        for tx in dut.tx:
            ctx.set(tx.ready, 1)
        ctx.set(dut.tx[1].ready, 0)
        ctx.set(dut.rx.payload, {"data": packet(PacketType.ACTIVATIONS.value, 1, [])[0][0], "last": 0})
        ctx.set(dut.rx.valid, 1)
        seen["header"] = (ctx.get(dut.rx.ready), ctx.get(dut.tx[1].valid), ctx.get(dut.tx[0].valid))
        ctx.set(dut.tx[1].ready, 1)
        await ctx.tick()
        # Mid-packet, the route holds even though the payload word looks like a header for tile 0.
        ctx.set(dut.rx.payload, {"data": 0, "last": 1})
        ctx.set(dut.tx[1].ready, 0)
        seen["payload"] = (ctx.get(dut.rx.ready), ctx.get(dut.tx[1].valid), ctx.get(dut.tx[0].valid))

    simulate(dut, bench)
    assert seen["header"] == (0, 1, 0)
    assert seen["payload"] == (0, 1, 0)


# ---------------------------------------------------------------------------------------------
# Arbiter
# ---------------------------------------------------------------------------------------------


def run_arbiter(queues: list[list[Packet]], seed: int, p_valid: float, p_ready: float,
                drain_cycles=400) -> list[Packet]:
    dut = StreamArbiter(len(queues))
    received = []

    def source(index):
        async def run(ctx):
            await send(ctx, dut.rx[index], queues[index], random.Random(seed * 10 + index), p_valid)
        return run

    async def drain(ctx):
        await ctx.tick().repeat(drain_cycles + 20 * sum(map(len, queues)))

    # A one-source arbiter is a plain connection: the testbench's clock needs its own domain.
    top = Module()
    top.submodules.arbiter = dut
    top.domains.sync = ClockDomain()
    simulate(top, drain, *(source(i) for i in range(len(queues))),
             background=[sink(dut.tx, received, random.Random(seed), p_ready)])
    return split_packets(received)


def test_arbiter_never_interleaves_packets_under_backpressure():
    rng = random.Random(4)
    queues = [[packet(PacketType.RESULT.value, source, random_payload(rng, source), aux=n)
               for n in range(15)] for source in range(3)]
    out = run_arbiter(queues, seed=5, p_valid=0.6, p_ready=0.5)
    assert len(out) == sum(map(len, queues))
    for source, queue in enumerate(queues):
        assert [p for p in out if PacketHeader.from_bits(p[0][0]).tile == source] == queue


def test_arbiter_serves_busy_sources_round_robin():
    queues = [[packet(PacketType.RESULT.value, source, [n, n], aux=n) for n in range(4)]
              for source in range(3)]
    out = run_arbiter(queues, seed=6, p_valid=1.0, p_ready=1.0)
    order = [PacketHeader.from_bits(p[0][0]).tile for p in out]
    assert order == [0, 1, 2] * 4


def test_arbiter_with_one_source_passes_packets_through():
    queue = [packet(PacketType.RESULT.value, 0, [n] * n, aux=n) for n in range(5)]
    assert run_arbiter([queue], seed=7, p_valid=0.5, p_ready=0.5) == queue
