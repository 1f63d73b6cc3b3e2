"""Staging of parameters that arrive as packets and take effect on a command: PROGRAM_DATA
(consumed by PROGRAM_ROW) and LDPU_PARAMS (made active by LOAD_LDPU), docs/numerics.md 6 and 8.

Both packets carry one memory chunk per pair of payload beats: PROGRAM_DATA one boundary word
(columns 4k .. 4k+3) per two beats, LDPU_PARAMS one column's (gain, bias) per two beats. The
store keeps three banks that are always a permutation of (active, staged, receiving):
- a packet is written into the receiving bank; its commit makes that bank the staged one, so a
  packet that fails its length check never touches the staged data (numerics 8);
- a consume (the command) makes the staged bank the active one, which the user reads; a packet
  arriving while it does so lands in the third bank.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Shape, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from pcmhil.interface import BUS_DATA_BITS
from pcmhil.rtl.sizes import address_width
from pcmhil.rtl.tile_rx import PayloadSink

BANKS = 3


class StagingStore(wiring.Component):
    """sink: the packet's payload; read: `lanes` chunks of group `addr` of the active bank, one
    cycle latency; staged: a committed packet waits; consume: make it active; loaded: the
    active bank has been loaded since reset (before that its contents mean nothing).

    `chunk` is the shape of one chunk: its low bits come from the first beat of a pair (as many
    as it needs), its top 32 bits are the second beat.
    """

    def __init__(self, beats: int, lanes: int, chunk):
        assert lanes & (lanes - 1) == 0 and beats % (2 * lanes) == 0, (beats, lanes)
        self.beats, self.lanes, self.chunk = beats, lanes, chunk
        self.groups = beats // (2 * lanes)
        self.layout = data.ArrayLayout(self.chunk, lanes)
        super().__init__({
            "sink": In(PayloadSink(beats)),
            "read": Out(ReadPort.Signature(addr_width=address_width(self.groups), shape=self.layout)),
            "staged": Out(1),
            "consume": In(1),
            "loaded": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        group_bits = address_width(self.groups)
        m.submodules.memory = memory = Memory(shape=self.layout, depth=BANKS << group_bits, init=[])
        active, staged = Signal(2, init=0), Signal(2, init=1)
        receiving = BANKS - active - staged  # the third bank (the banks are a permutation)
        self._write(m, memory.write_port(granularity=1), receiving[:2], group_bits)

        read = memory.read_port()
        m.d.comb += [
            read.addr.eq(Cat(self.read.addr, active)),
            read.en.eq(self.read.en),
            self.read.data.eq(read.data),
        ]

        # A consume and a commit in the same cycle: the consume takes the old staged bank, the
        # commit stages the packet just received.
        active_next = Mux(self.consume, staged, active)
        staged_after_consume = Mux(self.consume, active, staged)
        m.d.sync += [
            active.eq(active_next),
            staged.eq(Mux(self.sink.commit, BANKS - active_next - staged_after_consume,
                          staged_after_consume)),
        ]
        with m.If(self.consume):
            m.d.sync += [self.staged.eq(0), self.loaded.eq(1)]
        with m.If(self.sink.commit):
            m.d.sync += self.staged.eq(1)
        return m

    def _write(self, m: Module, write, bank, group_bits: int) -> None:
        """Pair of beats (2p, 2p+1) -> chunk p % lanes of group p // lanes of `bank`."""
        sink = self.sink
        first_bits = Shape.cast(self.chunk).width - BUS_DATA_BITS
        first = Signal(first_bits)
        pair = sink.index[1:]
        lane_bits = ceil_log2(self.lanes)
        group = Signal(group_bits)
        m.d.comb += group.eq(pair[lane_bits:])
        with m.If(sink.valid & ~sink.index[0]):
            m.d.sync += first.eq(sink.data[:first_bits])
        m.d.comb += [
            write.addr.eq(Cat(group, bank)),
            write.en.eq(Mux(sink.valid & sink.index[0], 1 << pair[:lane_bits], 0)),
        ]
        for lane in range(self.lanes):
            m.d.comb += write.data[lane].eq(Cat(first, sink.data))
