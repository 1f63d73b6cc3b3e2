"""Simulation side of the co-simulation: a cocotb test that serves the host's requests.

Runs inside the Verilator process. It connects back to the host's Unix socket, binds every
tile's analog boundary to the model (cycle or transaction mode, docs/numerics.md section 2) and
then answers requests one at a time. Simulated time only advances inside a request: while the
host is thinking the server blocks in recv(), the simulation is frozen and costs no CPU
(TOOLCHAIN.md, "the host <-> cosim link").
"""

from __future__ import annotations

import json
import os
import socket
import time

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer

from pcmhil.cosim import vpi
from pcmhil.cosim.boundary import BoundaryPorts, lanes_to_array, words_to_lanes
from pcmhil.cosim.harness import BEATS_PER_WORD, CLK_PERIOD_NS, DMA_DEPTH, DMA_PTR_BITS, INSTANCE
from pcmhil.cosim.link import LinkClosed, recv_message, send_message
from pcmhil.interface import BUS_DATA_BITS

CONFIG_ENV = "PCMHIL_COSIM_CONFIG"
_PTR_MASK = (1 << DMA_PTR_BITS) - 1
#: 64-bit words of a DMA memory entry (the unit of cosim/vpi.py's Vector).
_ENTRY_WORDS = BEATS_PER_WORD * BUS_DATA_BITS // 64
#: An AXI4-Lite access of the register file takes a few cycles; this many means a hung bus.
CSR_CYCLE_LIMIT = 1000
#: Cycles between looks at the output ring while waiting for packets.
STREAM_POLL_CYCLES = 64
#: While the input DMA runs, the output ring is emptied at least this often: it fills by at most
#: a beat per cycle, so half its depth never back-pressures the chip.
SEND_DRAIN_CYCLES = DMA_DEPTH // 2


class NoProgress(Exception):
    """The chip did not produce what a request waited for within its cycle budget."""


async def clock_cycles(n: int) -> None:
    """Let n clock cycles pass. The clock runs in HDL; a Timer is one callback, however long.
    From a whole period (a falling edge) it ends on a falling edge again."""
    await Timer(n * CLK_PERIOD_NS, "ns")


class Server:
    def __init__(self, dut, config: dict):
        from pcmhil.interface import Geometry
        from pcmhil.model.analog_tile import AnalogSpec

        self.dut = dut  # the testbench: clk and every harness port
        harness = getattr(dut, INSTANCE)  # its DMA memories, word by word
        words = DMA_DEPTH // BEATS_PER_WORD
        self.dma_in = [vpi.Vector(harness.dma_in[i]) for i in range(words)]
        self.dma_in_last = vpi.words([harness.dma_in_last[i] for i in range(DMA_DEPTH)])
        self.in_lasts: set[int] = set()  # beats whose dma_in_last bit is 1
        self.dma_out = [vpi.Vector(harness.dma_out[i]) for i in range(words)]
        self.dma_out_ends = vpi.words([harness.dma_out_ends[i] for i in range(DMA_DEPTH)])
        self.sig = {name: vpi.Word(getattr(dut, name)) for name in (
            "csr_go", "csr_write", "csr_addr", "csr_wdata", "csr_strb", "csr_poll", "csr_mask",
            "csr_match", "csr_rdata", "csr_resp", "dma_in_go", "dma_in_count", "dma_in_busy",
            "dma_in_sent", "dma_out_wptr", "dma_out_rptr", "dma_out_ends_wptr", "rst")}
        self.config = config
        self.geometry = Geometry(**config["geometry"])
        self.analog = self.build_analog(AnalogSpec(**config["analog"]))
        self.mode = config["mode"]
        self.out_words: list[int] = []  # beats drained from the ring, not yet a whole packet
        self.out_packets: list[np.ndarray] = []
        self.rptr = self.ends_rptr = 0
        self.ports = [BoundaryPorts(dut, t, self.geometry, self.mode) for t in range(self.geometry.tiles)]
        self.stats = {"requests": 0, "handle_s": 0.0, "clock_only_s": 0.0, "clock_only_cycles": 0}

    def build_analog(self, spec) -> list:
        g = self.geometry
        return spec.build(g.rows, g.cols, g.tiles)

    async def start(self) -> None:
        await self.reset()
        for t, ports in enumerate(self.ports):
            # the bindings look the tile's model up on every window, so reset() can replace it
            analog = lambda t=t: self.analog[t]  # noqa: E731
            cocotb.start_soon(ports.serve_windows(analog))
            cocotb.start_soon(ports.serve_programming(analog))

    async def reset(self, spec=None) -> None:
        """Synchronous reset of the whole top; with `spec`, new analog tiles."""
        for name in ("csr_go", "csr_write", "csr_addr", "csr_wdata", "csr_poll", "csr_mask",
                     "csr_match", "dma_in_go", "dma_in_count", "dma_out_rptr"):
            self.sig[name].write(0)
        self.sig["csr_strb"].write(0b1111)
        self.sig["rst"].write(1)
        for ports in self.ports:
            ports.reset()
        await clock_cycles(4)
        self.sig["rst"].write(0)
        if spec is not None:
            from pcmhil.model.analog_tile import AnalogSpec

            self.analog = self.build_analog(AnalogSpec(**spec))
        self.out_words, self.out_packets, self.rptr, self.ends_rptr = [], [], 0, 0
        await clock_cycles(1)

    # ---- bus -------------------------------------------------------------------------------

    async def csr(self, write: bool, address: int, value: int = 0, strobe: int = 0b1111,
                  poll: tuple[int, int] | None = None, max_cycles: int = CSR_CYCLE_LIMIT):
        """One AXI4-Lite access through the harness's bus master; with `poll` = (mask, match), a
        read repeated by the harness until (value & mask) == match. Starts and ends on a falling
        edge (a whole period)."""
        dut, sig = self.dut, self.sig
        sig["csr_write"].write(int(write))
        sig["csr_addr"].write(address)
        sig["csr_wdata"].write(value)
        sig["csr_strb"].write(strobe)
        sig["csr_poll"].write(int(poll is not None))
        if poll is not None:
            sig["csr_mask"].write(poll[0])
            sig["csr_match"].write(poll[1])
        sig["csr_go"].write(1)
        await clock_cycles(1)  # the rising edge in between takes go and clears csr_done
        sig["csr_go"].write(0)
        timeout = Timer(max_cycles * CLK_PERIOD_NS, "ns")
        if await First(RisingEdge(dut.csr_done), timeout) is timeout:
            if poll is None:
                raise NoProgress(f"AXI4-Lite {'write' if write else 'read'} of {address:#06x}: "
                                 f"no response in {max_cycles} cycles")
            sig["csr_poll"].write(0)  # let the read in flight finish, so the bus is idle again
            stop = Timer(CSR_CYCLE_LIMIT * CLK_PERIOD_NS, "ns")
            await First(RisingEdge(dut.csr_done), stop)
            await FallingEdge(dut.clk)
            raise NoProgress(f"register {address:#06x} = {sig['csr_rdata'].read():#010x} did "
                             f"not reach {poll[1]:#x} under mask {poll[0]:#x} in {max_cycles} cycles")
        await FallingEdge(dut.clk)  # done rose on a rising edge: back to mid-cycle
        return self.sig["csr_rdata"].read(), self.sig["csr_resp"].read()

    # ---- streams -----------------------------------------------------------------------------

    async def send(self, words: np.ndarray, lasts: np.ndarray, max_cycles: int) -> None:
        for start in range(0, len(words), DMA_DEPTH):
            chunk = words[start:start + DMA_DEPTH]
            entries = -(-len(chunk) // BEATS_PER_WORD)
            packed = lanes_to_array(chunk, BUS_DATA_BITS, entries * _ENTRY_WORDS).reshape(entries, -1)
            for entry, entry_words in zip(self.dma_in[:entries], packed, strict=True):
                entry.write(entry_words)
            ends = set(np.flatnonzero(lasts[start:start + DMA_DEPTH]).tolist())
            for beat in self.in_lasts - ends:
                self.dma_in_last[beat].write(0)
            for beat in ends - self.in_lasts:
                self.dma_in_last[beat].write(1)
            self.in_lasts = ends
            self.sig["dma_in_count"].write(len(chunk))
            self.sig["dma_in_go"].write(1)
            await clock_cycles(1)  # busy is set by the go edge
            self.sig["dma_in_go"].write(0)
            waited = 0
            while self.sig["dma_in_busy"].read():
                # one callback when the DMA is done, or after SEND_DRAIN_CYCLES to empty the output
                # ring (the chip may answer while it is still being fed)
                wait = min(SEND_DRAIN_CYCLES, max_cycles + 1 - waited)
                started = cocotb.utils.get_sim_time("ns")
                timer = Timer(wait * CLK_PERIOD_NS, "ns")
                if await First(FallingEdge(self.dut.dma_in_busy), timer) is not timer:
                    await FallingEdge(self.dut.clk)  # busy fell on a rising edge: back to mid-cycle
                waited += round((cocotb.utils.get_sim_time("ns") - started) / CLK_PERIOD_NS)
                self.drain()
                if waited > max_cycles and self.sig["dma_in_busy"].read():
                    raise NoProgress(f"input stream: {self.sig['dma_in_sent'].read()} of {len(chunk)} "
                                     f"beats accepted after {max_cycles} cycles")
        self.drain()

    def drain(self) -> None:
        """Move captured output beats from the ring into whole packets (no simulated time)."""
        wptr = self.sig["dma_out_wptr"].read()
        if self.rptr == wptr:
            return
        ends_wptr = self.sig["dma_out_ends_wptr"].read()
        # the ring's words holding beats rptr .. wptr - 1 (a half-written last word is read again
        # next time), and the beat index after each tlast beat among them
        first, n_beats = self.rptr, (wptr - self.rptr) & _PTR_MASK
        skip, word_count = first % BEATS_PER_WORD, DMA_DEPTH // BEATS_PER_WORD
        entries = [self.dma_out[(first // BEATS_PER_WORD + k) % word_count].read()
                   for k in range(-(-(skip + n_beats) // BEATS_PER_WORD))]
        beats = words_to_lanes(np.concatenate(entries), BUS_DATA_BITS, skip + n_beats)[skip:]
        offset = 0
        while self.ends_rptr != ends_wptr:
            end = self.dma_out_ends[self.ends_rptr % DMA_DEPTH].read()
            self.ends_rptr = (self.ends_rptr + 1) & _PTR_MASK
            length = (end - first) & _PTR_MASK  # beats up to and including the tlast beat
            self.out_words.extend(beats[offset:length].tolist())
            self.out_packets.append(np.array(self.out_words, dtype=np.uint32))
            self.out_words, offset = [], length
        self.out_words.extend(beats[offset:].tolist())
        self.rptr = wptr
        self.sig["dma_out_rptr"].write(self.rptr)

    async def receive(self, count: int, max_cycles: int) -> list[np.ndarray]:
        waited = 0
        self.drain()
        while len(self.out_packets) < count:
            await clock_cycles(STREAM_POLL_CYCLES)
            waited += STREAM_POLL_CYCLES
            self.drain()
            if waited > max_cycles:
                raise NoProgress(f"waited {max_cycles} cycles for {count} output packets, "
                                 f"got {len(self.out_packets)}")
        got, self.out_packets = self.out_packets[:count], self.out_packets[count:]
        return got

    async def poll(self, address: int, mask: int, value: int, max_cycles: int) -> int:
        """Wait until (register & mask) == value: the harness reads it every few cycles."""
        register, _ = await self.csr(False, address, poll=(mask, value), max_cycles=max_cycles)
        return register

    async def state(self) -> str:
        """Every tile's controller state read through the bus, for error reports."""
        from pcmhil.interface import RegisterMap

        regs = RegisterMap(self.geometry)
        parts = []
        try:
            for t in range(self.geometry.tiles):
                status, _ = await self.csr(False, regs.address("STATUS", t))
                info, _ = await self.csr(False, regs.address("ERROR_INFO", t))
                parts.append(f"tile {t}: STATUS={status:#010x} ERROR_INFO={info:#06x}")
        except NoProgress as exc:
            parts.append(f"the register bus does not answer either ({exc})")
        return "; ".join(parts)

    # ---- request loop ----------------------------------------------------------------------

    async def handle(self, request: tuple):
        verb, *args = request
        if verb == "read":
            return await self.csr(False, args[0])
        if verb == "write":
            return await self.csr(True, *args)
        if verb == "poll":
            return await self.poll(*args)
        if verb == "send":
            return await self.send(*args)
        if verb == "receive":
            return await self.receive(*args)
        if verb == "pending":
            self.drain()
            return len(self.out_packets)
        if verb == "warm_up":  # the model's compiled kernels now (else after many windows)
            from pcmhil.model import kernels

            return kernels.warm_up()
        if verb == "advance_time":
            for analog in self.analog:
                analog.advance_time(args[0])
            return None
        if verb == "clock":  # the ceiling: the same RTL clocked with no model and no bus traffic
            start = time.perf_counter()
            await clock_cycles(args[0])
            self.stats["clock_only_s"] += time.perf_counter() - start
            self.stats["clock_only_cycles"] += args[0]
            return None
        if verb == "stats":
            model_s = sum(getattr(a, "busy_s", 0.0) for a in self.analog)
            return dict(self.stats, model_s=model_s,
                        cycles=int(cocotb.utils.get_sim_time("ns") // CLK_PERIOD_NS))
        if verb == "profile":  # cProfile every Python call in the simulation (performance work)
            import cProfile

            if args[0] is None:
                self.profiler = cProfile.Profile()
                self.profiler.enable()
            else:
                self.profiler.disable()
                self.profiler.dump_stats(args[0])
            return None
        if verb == "reset":
            return await self.reset(args[0])
        if verb == "cycles":
            return int(cocotb.utils.get_sim_time("ns") // CLK_PERIOD_NS)
        raise ValueError(f"unknown request {verb!r}")

    async def serve(self, sock: socket.socket) -> None:
        while True:
            try:
                request = recv_message(sock)
            except LinkClosed:
                return  # the host went away: end the simulation
            if request[0] == "close":
                send_message(sock, ("ok", None))
                return
            start = time.perf_counter()
            try:
                reply = ("ok", await self.handle(request))
            except NoProgress as exc:
                reply = ("no-progress", f"{exc}; {await self.state()}")
            except Exception as exc:  # reported to the host, which raises it
                reply = ("error", f"{type(exc).__name__}: {exc}")
            self.stats["requests"] += 1
            self.stats["handle_s"] += time.perf_counter() - start
            try:
                send_message(sock, reply)
            except LinkClosed:
                return


@cocotb.test()
async def serve(dut):
    config = json.loads(os.environ[CONFIG_ENV])
    server = Server(dut, config)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(config["socket"])
    try:
        await server.start()
        send_message(sock, ("ready", None))
        await server.serve(sock)
    finally:
        sock.close()
