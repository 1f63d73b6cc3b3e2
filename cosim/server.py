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
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, RisingEdge

from pcmhil.cosim.boundary import BoundaryPorts
from pcmhil.cosim.harness import BEAT_BITS, DMA_DEPTH, DMA_PTR_BITS
from pcmhil.cosim.link import LinkClosed, recv_message, send_message

CONFIG_ENV = "PCMHIL_COSIM_CONFIG"
#: Simulated clock period. HERMES runs at 1 GHz (REFERENCE.md); the period only scales
#: simulated time, never the numbers.
CLK_PERIOD_NS = 1
LAST_BIT = 1 << (BEAT_BITS - 1)
#: An AXI4-Lite access of the register file takes a few cycles; this many means a hung bus.
CSR_CYCLE_LIMIT = 1000
#: Cycles between the reads of a poll request.
POLL_INTERVAL = 16


class NoProgress(Exception):
    """The chip did not produce what a request waited for within its cycle budget."""


class Server:
    def __init__(self, dut, config: dict):
        from pcmhil.interface import Geometry
        from pcmhil.model.analog_tile import AnalogSpec

        self.dut = dut
        self.config = config
        self.geometry = Geometry(**config["geometry"])
        self.analog = self.build_analog(AnalogSpec(**config["analog"]))
        self.mode = config["mode"]
        self.out_words: list[int] = []  # beats drained from the ring, not yet a whole packet
        self.out_packets: list[np.ndarray] = []
        self.rptr = 0
        self.stats = {"requests": 0, "handle_s": 0.0, "clock_only_s": 0.0, "clock_only_cycles": 0}

    def build_analog(self, spec) -> list:
        g = self.geometry
        return spec.build(g.rows, g.cols, g.tiles)

    async def start(self) -> None:
        Clock(self.dut.clk, CLK_PERIOD_NS, unit="ns", impl="gpi").start()
        await self.reset()
        for t in range(self.geometry.tiles):
            ports = BoundaryPorts(self.dut, t, self.geometry)
            # the bindings look the tile's model up on every window, so reset() can replace it
            analog = lambda t=t: self.analog[t]  # noqa: E731
            cocotb.start_soon(ports.serve_windows(analog, self.mode))
            cocotb.start_soon(ports.serve_programming(analog))

    async def reset(self, spec=None) -> None:
        """Synchronous reset of the whole top; with `spec`, new analog tiles."""
        dut = self.dut
        for name in ("csr_go", "csr_write", "csr_addr", "csr_wdata", "dma_in_go", "dma_in_count",
                     "dma_out_rptr"):
            getattr(dut, name).value = 0
        dut.csr_strb.value = 0b1111
        dut.rst.value = 1
        for t in range(self.geometry.tiles):
            BoundaryPorts(dut, t, self.geometry).reset(transaction=self.mode == "transaction")
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        if spec is not None:
            from pcmhil.model.analog_tile import AnalogSpec

            self.analog = self.build_analog(AnalogSpec(**spec))
        self.out_words, self.out_packets, self.rptr = [], [], 0
        await RisingEdge(dut.clk)

    # ---- bus -------------------------------------------------------------------------------

    async def csr(self, write: bool, address: int, value: int = 0, strobe: int = 0b1111):
        dut = self.dut
        dut.csr_write.value = int(write)
        dut.csr_addr.value = address
        dut.csr_wdata.value = value
        dut.csr_strb.value = strobe
        dut.csr_go.value = 1
        await RisingEdge(dut.clk)
        dut.csr_go.value = 0
        # Sample mid-cycle: right after the edge that took csr_go, csr_done still shows the
        # previous access's value.
        waited = 0
        while True:
            await FallingEdge(dut.clk)
            if int(dut.csr_done.value):
                return int(dut.csr_rdata.value), int(dut.csr_resp.value)
            waited += 1
            if waited > CSR_CYCLE_LIMIT:
                raise NoProgress(f"AXI4-Lite {'write' if write else 'read'} of {address:#06x}: "
                                 f"no response in {CSR_CYCLE_LIMIT} cycles")

    # ---- streams -----------------------------------------------------------------------------

    async def send(self, words: np.ndarray, lasts: np.ndarray, max_cycles: int) -> None:
        dut = self.dut
        for start in range(0, len(words), DMA_DEPTH):
            chunk = words[start:start + DMA_DEPTH].astype(np.int64)
            chunk = chunk | np.where(lasts[start:start + DMA_DEPTH], LAST_BIT, 0)
            for i, beat in enumerate(chunk.tolist()):
                dut.dma_in[i].value = beat
            dut.dma_in_count.value = len(chunk)
            dut.dma_in_go.value = 1
            await RisingEdge(dut.clk)
            dut.dma_in_go.value = 0
            await FallingEdge(dut.clk)  # busy is set by the go edge; sample it mid-cycle
            waited = 0
            while int(dut.dma_in_busy.value):
                self.drain()
                await First(FallingEdge(dut.dma_in_busy), ClockCycles(dut.clk, 256))
                waited += 256
                if waited > max_cycles:
                    raise NoProgress(f"input stream: {int(dut.dma_in_sent.value)} of {len(chunk)} "
                                     f"beats accepted after {max_cycles} cycles")
        self.drain()

    def drain(self) -> None:
        """Move captured output beats from the ring into whole packets (no simulated time)."""
        dut = self.dut
        wptr = int(dut.dma_out_wptr.value)
        mask = (1 << DMA_PTR_BITS) - 1
        while self.rptr != wptr:
            beat = int(dut.dma_out[self.rptr % DMA_DEPTH].value)
            self.out_words.append(beat & (LAST_BIT - 1))
            if beat & LAST_BIT:
                self.out_packets.append(np.array(self.out_words, dtype=np.uint32))
                self.out_words = []
            self.rptr = (self.rptr + 1) & mask
        dut.dma_out_rptr.value = self.rptr

    async def receive(self, count: int, max_cycles: int) -> list[np.ndarray]:
        waited = 0
        self.drain()
        while len(self.out_packets) < count:
            await ClockCycles(self.dut.clk, 64)
            waited += 64
            self.drain()
            if waited > max_cycles:
                raise NoProgress(f"waited {max_cycles} cycles for {count} output packets, "
                                 f"got {len(self.out_packets)}")
        got, self.out_packets = self.out_packets[:count], self.out_packets[count:]
        return got

    async def poll(self, address: int, mask: int, value: int, max_cycles: int) -> int:
        """Read a register every POLL_INTERVAL cycles until (register & mask) == value."""
        waited = 0
        while True:
            register, resp = await self.csr(False, address)
            if resp or register & mask == value:
                return register
            await ClockCycles(self.dut.clk, POLL_INTERVAL)
            waited += POLL_INTERVAL
            if waited > max_cycles:
                raise NoProgress(f"register {address:#06x} = {register:#010x} did not reach "
                                 f"{value:#x} under mask {mask:#x} in {max_cycles} cycles")

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
        if verb == "advance_time":
            for analog in self.analog:
                analog.advance_time(args[0])
            return None
        if verb == "clock":  # the ceiling: the same RTL clocked with no model and no bus traffic
            start = time.perf_counter()
            await ClockCycles(self.dut.clk, args[0])
            self.stats["clock_only_s"] += time.perf_counter() - start
            self.stats["clock_only_cycles"] += args[0]
            return None
        if verb == "stats":
            model_s = sum(getattr(a, "busy_s", 0.0) for a in self.analog)
            return dict(self.stats, model_s=model_s,
                        cycles=int(cocotb.utils.get_sim_time("ns") // CLK_PERIOD_NS))
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
