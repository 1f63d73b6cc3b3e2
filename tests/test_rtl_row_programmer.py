"""PROGRAM_ROW on the boundary (numerics 6): the staged words with prog_index = k in consecutive
cycles, then exactly one prog_commit cycle with prog_row and prog_mode."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from rtl_sim import simulate

from pcmhil.interface import Geometry, PacketType, ProgramMode, packet_payload_beats
from pcmhil.rtl.row_programmer import ProgramWords, RowProgrammer
from pcmhil.rtl.staging import StagingStore


@pytest.mark.parametrize("cols", [4, 12])
def test_words_then_commit(cols):
    geometry = Geometry(rows=8, cols=cols)
    beats = packet_payload_beats(PacketType.PROGRAM_DATA, geometry)
    m = Module()
    m.submodules.store = store = StagingStore(beats, lanes=1, chunk=ProgramWords.elem_shape)
    m.submodules.programmer = programmer = RowProgrammer(geometry)
    wiring.connect(m, programmer.words, store.read)
    payload = np.random.default_rng(cols).integers(0, 2**32, beats)
    trace = []

    async def bench(ctx):
        for k, word in enumerate(payload):
            ctx.set(store.sink.valid, 1)
            ctx.set(store.sink.index, k)
            ctx.set(store.sink.data, int(word))
            ctx.set(store.sink.commit, k == beats - 1)
            await ctx.tick()
        ctx.set(store.sink.valid, 0)
        ctx.set(store.consume, 1)
        await ctx.tick()
        ctx.set(store.consume, 0)
        ctx.set(programmer.control.row, 5)
        ctx.set(programmer.control.mode, ProgramMode.PULSE)
        ctx.set(programmer.control.start, 1)
        await ctx.tick()
        ctx.set(programmer.control.start, 0)
        for _ in range(beats + 6):
            trace.append((ctx.get(programmer.control.busy), ctx.get(programmer.prog_valid),
                          ctx.get(programmer.prog_index), ctx.get(programmer.prog_data),
                          ctx.get(programmer.prog_commit), ctx.get(programmer.prog_row),
                          ctx.get(programmer.prog_mode)))
            await ctx.tick()

    simulate(m, bench)
    words = [int(payload[2 * k]) | int(payload[2 * k + 1]) << 32 for k in range(beats // 2)]
    first = next(n for n, t in enumerate(trace) if t[1])
    sent = trace[first:first + len(words)]
    assert [(valid, index, data) for _, valid, index, data, *_ in sent] == \
        [(1, k, w) for k, w in enumerate(words)]
    commit = trace[first + len(words)]
    assert commit[1:2] == (0,) and commit[4:] == (1, 5, ProgramMode.PULSE)
    assert sum(t[4] for t in trace) == 1 and sum(t[1] for t in trace) == len(words)
    assert not trace[first + len(words)][0]  # busy has fallen by the commit cycle
