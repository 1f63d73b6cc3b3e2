"""The co-simulation top: the chip plus a testbench-side bus master and DMA buffers.

Python driving AXI handshakes cycle by cycle is the main cost of a cocotb co-simulation
(TOOLCHAIN.md: ~98 % of an MVM-like op was Python inside the simulation). Like a board's DMA
engine, this harness moves whole packets between memories and the chip's AXI4-Stream ports at
one beat per clock, and runs AXI4-Lite transactions from a request latched by one write, so the
Python side touches a handful of signals per operation. The chip's own AXI4-Lite and
AXI4-Stream protocol behaviour (back-pressure, error responses) is verified separately with
cocotbext-axi bus models (tests/test_rtl_bus_*).

Python-facing ports (scalars <= 64 bits; the DMA memories' words and the boundary vectors wide,
each moved in one VPI call as a binary string, cosim/vpi.py):
- csr_go (pulse), csr_write, csr_addr, csr_wdata, csr_strb -> csr_done (level, cleared by go),
  csr_rdata, csr_resp (AXI response code). With csr_poll set, a read is repeated until
  (rdata & csr_mask) == csr_match (or csr_poll is cleared), like a board's register-poll engine:
  waiting for a command costs the host one request and the simulation one callback.
- dma_in[] memory of BEATS_PER_WORD beats an entry (beat b = bits 32 (b % BEATS_PER_WORD) .. of
  entry b // BEATS_PER_WORD), dma_in_last[] (1 bit per beat: tlast), dma_in_count, dma_in_go
  (pulse) -> dma_in_busy, dma_in_sent. tlast sits apart so that the server writes only the bits
  that change between transfers.
- dma_out[] ring of entries as dma_in's, written from m_axis, dma_out_wptr
  (out, in beats), dma_out_rptr (in): the ring back-pressures the chip when full; dma_out_ends[]
  ring of the beat index (mod 2 DMA_DEPTH) after each tlast beat, dma_out_ends_wptr (out).
- t{n}__* analog boundary of each tile, irq.

The simulation top is a Verilog testbench module around the harness (testbench_verilog) that
generates the clock itself (Verilator --timing): a clock driven from cocotb is a top-level input,
and every toggle of a top-level input makes Verilator re-evaluate all input-dependent logic, which
was most of the per-cycle cost of the 256x256 chip. The clock rises at t = k + 1/2 periods, so
whole periods are falling edges: the server samples and drives there.
"""

from __future__ import annotations

import re

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from pcmhil.interface import BOUNDARY_WORD_BITS, BUS_ADDR_BITS, BUS_DATA_BITS, Geometry
from pcmhil.rtl.signatures import AnalogBoundary

#: DMA buffer depth in beats (a power of two; the ring pointers wrap at twice the depth).
DMA_DEPTH = 4096
DMA_PTR_BITS = DMA_DEPTH.bit_length()  # one extra bit distinguishes full from empty
#: Beats per DMA memory word: a packet of a 256-row MVM (65 beats) crosses VPI in one or two
#: calls (each a binary string of the word) instead of one call per 64 bits.
BEATS_PER_WORD = 64
DMA_WORD_BITS = BEATS_PER_WORD * BUS_DATA_BITS
LANE_BITS = BEATS_PER_WORD.bit_length() - 1  # beat index within a word

TOPLEVEL = "pcmhil_cosim_top"
#: The simulation's top module (harness + clock) and the harness instance inside it.
TESTBENCH = "pcmhil_cosim_tb"
INSTANCE = "harness"
#: Simulated clock period. HERMES runs at 1 GHz (REFERENCE.md); the period only scales
#: simulated time, never the numbers.
CLK_PERIOD_NS = 1

_PORT = re.compile(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?([A-Za-z_][A-Za-z0-9_$]*);", re.M)


#: The analog inputs of a tile that each fidelity mode leaves constant (numerics.md section 2: in
#: transaction mode the analog side gives counts and no pulses, in cycle mode the reverse), and
#: its boundary_mode.
TIED_OFF = {"transaction": ("cco_pulses", 1), "cycle": ("cco_count", 0)}
#: Harness signals Python touches besides the testbench's: the DMA memories.
HARNESS_PUBLIC = tuple(f"{TOPLEVEL}:{name}" for name in ("dma_in", "dma_in_last", "dma_out", "dma_out_ends"))


#: A port that is one word of a boundary vector (pcmhil.interface.BoundaryLayout): vector, index.
_VECTOR_WORD = re.compile(r"^(t\d+__[a-z_]+)__(\d+)$")


def testbench_verilog(harness_verilog: str, mode: str | None = None) -> str:
    """The simulation top: every harness port as a testbench signal (inputs are regs that the
    server writes), and the clock generated in HDL. The words of each boundary vector are joined
    into one signal (word i at bits 64 i and up), which Python reads or writes in one VPI call
    instead of one per word. For a fidelity `mode`, the analog inputs the other mode would drive
    are tied to constants, so Verilator removes the logic behind them (signals Python may write
    are re-evaluated on every evaluation step)."""
    start = harness_verilog.index(f"module {TOPLEVEL}(")
    ports = _PORT.findall(harness_verilog[start:harness_verilog.index("endmodule", start)])
    tied, boundary_mode = TIED_OFF[mode] if mode else (None, None)
    constant = {}
    if mode:
        tie = re.compile(rf"^t\d+__{tied}__\d+$")
        for _, msb, name in ports:
            if tie.match(name):
                constant[name] = f"{int(msb) + 1 if msb else 1}'d0"
            elif re.match(r"^t\d+__boundary_mode$", name):
                constant[name] = f"1'd{boundary_mode}"
    widths = {name: int(msb) + 1 if msb else 1 for _, msb, name in ports}
    vectors: dict[str, dict[int, str]] = {}  # vector -> word index -> port
    for _, _, name in ports:
        match = _VECTOR_WORD.match(name)
        if match and name not in constant:
            vectors.setdefault(match[1], {})[int(match[2])] = name
    connect = {name: name for _, _, name in ports}
    connect.update(constant)
    declared = set()
    lines = [f"module {TESTBENCH};", "  reg clk = 1'b0;",
             f"  always #{CLK_PERIOD_NS / 2} clk = ~clk;"]
    for vector, words in vectors.items():
        if sorted(words) != list(range(len(words))) or any(
                widths[words[i]] != BOUNDARY_WORD_BITS for i in range(len(words) - 1)):
            raise ValueError(f"boundary vector {vector}: words {sorted(words)} are not 0 .. n-1 of "
                             f"{BOUNDARY_WORD_BITS} bits but the last")
        bits = BOUNDARY_WORD_BITS * (len(words) - 1) + widths[words[len(words) - 1]]
        direction = next(d for d, _, name in ports if name == words[0])
        lines.append(f"  {'reg' if direction == 'input' else 'wire'} [{bits - 1}:0] {vector}"
                     f"{' = 0' if direction == 'input' else ''};")
        for i, name in words.items():
            low = BOUNDARY_WORD_BITS * i
            connect[name] = f"{vector}[{low + widths[name] - 1}:{low}]"
            declared.add(name)
    for direction, msb, name in ports:
        if name != "clk" and name not in constant and name not in declared:
            width = f"[{msb}:0] " if msb else ""
            lines.append(f"  reg {width}{name} = 0;" if direction == "input" else f"  wire {width}{name};")
    connections = ",\n".join(f"    .{name}({connect[name]})" for _, _, name in ports)
    lines += [f"  {TOPLEVEL} {INSTANCE} (\n{connections}\n  );", "endmodule", ""]
    return "\n".join(lines)


class CosimHarness(wiring.Component):
    def __init__(self, geometry: Geometry, chip_factory=None):
        self.geometry = geometry
        if chip_factory is None:
            from pcmhil.rtl.chip import Chip as chip_factory
        self._chip_factory = chip_factory
        members = {
            "csr_go": In(1), "csr_write": In(1), "csr_addr": In(BUS_ADDR_BITS),
            "csr_wdata": In(BUS_DATA_BITS), "csr_strb": In(4),
            "csr_poll": In(1), "csr_mask": In(BUS_DATA_BITS), "csr_match": In(BUS_DATA_BITS),
            "csr_done": Out(1), "csr_rdata": Out(BUS_DATA_BITS), "csr_resp": Out(2),
            "dma_in_count": In(DMA_PTR_BITS), "dma_in_go": In(1),
            "dma_in_busy": Out(1), "dma_in_sent": Out(DMA_PTR_BITS),
            "dma_out_wptr": Out(DMA_PTR_BITS), "dma_out_rptr": In(DMA_PTR_BITS),
            "dma_out_ends_wptr": Out(DMA_PTR_BITS),
            "irq": Out(1),
        }
        for t in range(geometry.tiles):
            members[f"t{t}"] = Out(AnalogBoundary(geometry))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.chip = chip = self._chip_factory(self.geometry)
        for t in range(self.geometry.tiles):
            wiring.connect(m, wiring.flipped(getattr(self, f"t{t}")), getattr(chip, f"t{t}"))
        m.d.comb += self.irq.eq(chip.irq)
        self._axil_master(m, chip)
        self._dma_in(m, chip)
        self._dma_out(m, chip)
        return m

    def _axil_master(self, m: Module, chip) -> None:
        """One AXI4-Lite read or write per csr_go; address and data phases held until accepted.
        A polling read is issued again until its value matches (or csr_poll is cleared)."""
        aw_pending, w_pending, ar_pending = Signal(), Signal(), Signal()
        b_wait, r_wait = Signal(), Signal()
        m.d.comb += [
            chip.s_axil_awaddr.eq(self.csr_addr), chip.s_axil_awvalid.eq(aw_pending),
            chip.s_axil_wdata.eq(self.csr_wdata), chip.s_axil_wstrb.eq(self.csr_strb),
            chip.s_axil_wvalid.eq(w_pending), chip.s_axil_bready.eq(b_wait),
            chip.s_axil_araddr.eq(self.csr_addr), chip.s_axil_arvalid.eq(ar_pending),
            chip.s_axil_rready.eq(r_wait),
        ]
        with m.If(self.csr_go):
            m.d.sync += [self.csr_done.eq(0), b_wait.eq(self.csr_write), r_wait.eq(~self.csr_write),
                         aw_pending.eq(self.csr_write), w_pending.eq(self.csr_write),
                         ar_pending.eq(~self.csr_write)]
        with m.If(aw_pending & chip.s_axil_awready):
            m.d.sync += aw_pending.eq(0)
        with m.If(w_pending & chip.s_axil_wready):
            m.d.sync += w_pending.eq(0)
        with m.If(ar_pending & chip.s_axil_arready):
            m.d.sync += ar_pending.eq(0)
        with m.If(b_wait & chip.s_axil_bvalid):
            m.d.sync += [b_wait.eq(0), self.csr_done.eq(1), self.csr_resp.eq(chip.s_axil_bresp)]
        with m.If(r_wait & chip.s_axil_rvalid):
            m.d.sync += [self.csr_resp.eq(chip.s_axil_rresp), self.csr_rdata.eq(chip.s_axil_rdata)]
            mismatch = (chip.s_axil_rdata & self.csr_mask) != self.csr_match
            with m.If(self.csr_poll & mismatch & (chip.s_axil_rresp.as_value() == 0)):
                m.d.sync += ar_pending.eq(1)  # read again
            with m.Else():
                m.d.sync += [r_wait.eq(0), self.csr_done.eq(1)]

    def _dma_in(self, m: Module, chip) -> None:
        """Stream beats 0 .. count-1 of dma_in into s_axis, one per clock when the chip is ready."""
        m.submodules.dma_in = mem = Memory(shape=DMA_WORD_BITS, depth=DMA_DEPTH // BEATS_PER_WORD, init=[])
        m.submodules.dma_in_last = last_mem = Memory(shape=1, depth=DMA_DEPTH, init=[])
        # The write ports are never used by the logic; they keep the memories RAMs (not constant
        # ROMs that the tools could fold away) so that Python can deposit words into them.
        for memory in (mem, last_mem):
            m.d.comb += memory.write_port().en.eq(0)
        read, read_last = mem.read_port(), last_mem.read_port()
        count = Signal.like(self.dma_in_count)
        index = Signal.like(self.dma_in_count)  # beat presented (or about to be)
        lane = Signal(range(BEATS_PER_WORD))  # which beat of the word read is presented
        valid = Signal()
        running = Signal()  # from the go edge until the chip accepted the last beat
        accept = valid & chip.s_axis_tready
        next_index = Signal.like(index)
        m.d.comb += [
            next_index.eq(index + accept),
            read.addr.eq(next_index >> LANE_BITS),
            read_last.addr.eq(next_index),
            chip.s_axis_tdata.eq(read.data.word_select(lane, BUS_DATA_BITS)),
            chip.s_axis_tlast.eq(read_last.data),
            chip.s_axis_tvalid.eq(valid),
            self.dma_in_busy.eq(running),
            self.dma_in_sent.eq(index),
        ]
        with m.If(self.dma_in_go):
            m.d.sync += [count.eq(self.dma_in_count), index.eq(0), valid.eq(0), lane.eq(0),
                         running.eq(self.dma_in_count != 0)]
            m.d.comb += [read.addr.eq(0), read_last.addr.eq(0)]
        with m.Else():
            m.d.sync += [index.eq(next_index), lane.eq(next_index[:LANE_BITS]), valid.eq(next_index < count)]
            with m.If(next_index == count):
                m.d.sync += running.eq(0)

    def _dma_out(self, m: Module, chip) -> None:
        """Capture m_axis beats into the dma_out ring (and the beat index after each tlast into
        dma_out_ends); back-pressure when the ring is full."""
        m.submodules.dma_out = mem = Memory(shape=DMA_WORD_BITS, depth=DMA_DEPTH // BEATS_PER_WORD, init=[])
        m.submodules.dma_out_ends = ends_mem = Memory(shape=DMA_PTR_BITS, depth=DMA_DEPTH, init=[])
        write = mem.write_port(granularity=BUS_DATA_BITS)
        write_end = ends_mem.write_port()
        wptr, ends_wptr = self.dma_out_wptr, self.dma_out_ends_wptr
        full, beat = Signal(), Signal()
        m.d.comb += [
            full.eq((wptr - self.dma_out_rptr)[:DMA_PTR_BITS] == DMA_DEPTH),
            chip.m_axis_tready.eq(~full),
            beat.eq(chip.m_axis_tvalid & ~full),
            write.addr.eq(wptr[LANE_BITS:DMA_PTR_BITS - 1]),
            write.data.eq(chip.m_axis_tdata.replicate(BEATS_PER_WORD)),
            write.en.eq(Mux(beat, Const(1, BEATS_PER_WORD) << wptr[:LANE_BITS], 0)),
            write_end.addr.eq(ends_wptr[:DMA_PTR_BITS - 1]),
            write_end.data.eq(wptr + 1),
            write_end.en.eq(beat & chip.m_axis_tlast),
        ]
        with m.If(beat):
            m.d.sync += wptr.eq(wptr + 1)
        with m.If(write_end.en):
            m.d.sync += ends_wptr.eq(ends_wptr + 1)
