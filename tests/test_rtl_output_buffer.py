"""The output buffer: room for the largest output packet, packets out in order under random
back-pressure, and a packet starts only when it is complete, so it leaves without gaps."""

from __future__ import annotations

import numpy as np
from rtl_sim import simulate
from rtl_tile_bench import packet_sink

from pcmhil.interface import Geometry, PacketType
from pcmhil.rtl.output_buffer import OutputBuffer
from pcmhil.rtl.tile_tx import packet_beats

GEOMETRY = Geometry(rows=4, cols=8)


def test_packets_leave_whole_and_in_order():
    dut = OutputBuffer(GEOMETRY)
    assert dut.depth == packet_beats(PacketType.VERIFY_DATA, GEOMETRY)
    rng = np.random.default_rng(7)
    lengths = [dut.depth, 2, 3, dut.depth, 2, 5, 2, 2, dut.depth, 4]
    packets = [rng.integers(0, 2**32, n, dtype=np.uint64) for n in lengths]
    received, rooms = [], []

    async def bench(ctx):
        rooms.append(ctx.get(dut.room))
        for packet in packets:
            while ctx.get(dut.room) < len(packet):  # the assembler's rule
                await ctx.tick()
            for k, word in enumerate(packet):
                ctx.set(dut.sink.valid, 1)
                ctx.set(dut.sink.payload, {"data": int(word), "last": int(k == len(packet) - 1)})
                await ctx.tick()
                # gaps inside a packet, like the LDPU pipeline's latency, must not show on tx
                ctx.set(dut.sink.valid, 0)
                for _ in range(int(rng.integers(0, 3))):
                    await ctx.tick()
            ctx.set(dut.sink.valid, 0)
        while len(received) < len(packets):
            await ctx.tick()
        rooms.append(ctx.get(dut.room))

    ready = [int(v) for v in rng.integers(0, 2, 37)]
    simulate(dut, bench, background=[packet_sink(dut.tx, received, ready)])
    assert [list(p) for p in received] == [list(p) for p in packets]
    assert rooms == [dut.depth, dut.depth]
