"""cocotb bench for the chip's bus side: AXI4-Lite slave + register decoding, chip registers,
stream router and arbiter, with fake tiles (tests/fake_tile.py) behind them.

Driven by cocotbext-axi bus models. The geometry comes from the environment (GEOMETRY_ENV),
and every address, field and code from pcmhil.interface. The fake tiles have the real tile
register block, echo each packet with the header's `aux` replaced by their tile index, and
drive `irq` from CONFIG.irq_done.
"""

from __future__ import annotations

import itertools
import logging
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import (
    AxiLiteBus,
    AxiLiteMaster,
    AxiResp,
    AxiStreamBus,
    AxiStreamFrame,
    AxiStreamSink,
    AxiStreamSource,
)

from pcmhil.interface import (
    BUS_ADDR_BITS,
    BYTES_PER_BEAT,
    INPUT_PACKET_TYPES,
    TILE_STRIDE,
    ErrorCode,
    Geometry,
    PacketHeader,
    PacketType,
    Register,
    RegisterMap,
)
from pcmhil.rtl.axi_lite import mapped_registers

GEOMETRY_ENV = "PCMHIL_BUS_BENCH_GEOMETRY"  # "rows,cols,tiles"
SEED = 2024
#: Simulated-time limit of every test: a deadlocked handshake fails instead of hanging.
TIMEOUT_US = 2000


def bench_geometry() -> Geometry:
    rows, cols, tiles = (int(v) for v in os.environ[GEOMETRY_ENV].split(","))
    return Geometry(rows, cols, tiles)


def field_value(reg: Register, name: str, word: int) -> int:
    f = reg.field(name)
    return (word >> f.lsb) & ((1 << f.width) - 1)


def after_write(reg: Register, old: int, word: int) -> int:
    """The value of `reg` after a successful write of `word` (docs/numerics.md section 7):
    rw fields take the written bits, a w1c flag clears where a 1 is written, ro bits keep."""
    new = old
    for f in reg.fields:
        if f.access == "rw":
            new = (new & ~f.mask) | (word & f.mask)
        elif f.access == "w1c":
            new &= ~(word & f.mask)
    return new


def random_pauses(rng: random.Random, probability: float):
    while True:
        yield rng.random() < probability


def resume(channel) -> None:
    """Stop pausing a cocotbext-axi channel. clear_pause_generator() alone leaves the channel in
    whatever pause state the generator gave last, possibly paused for good."""
    channel.clear_pause_generator()
    channel.pause = False


def header(kind: int, tile: int, aux: int = 0) -> int:
    return PacketHeader.const({"type": kind, "tile": tile, "aux": aux}).as_value().value


class TB:
    """Clock, reset and bus models of one test, and a model of every register's value."""

    def __init__(self, dut):
        self.dut = dut
        self.geometry = bench_geometry()
        self.map = RegisterMap(self.geometry)
        Clock(dut.clk, 10, unit="ns", impl="gpi").start()
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
        # One 32-bit word per byte lane: frames are lists of stream beats.
        self.source = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis"), dut.clk, dut.rst,
                                      byte_lanes=1)
        self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis"), dut.clk, dut.rst,
                                  byte_lanes=1)
        # cocotbext-axi logs every transaction at INFO: slow and noisy.
        logging.getLogger(f"cocotb.{dut._name}").setLevel(logging.WARNING)
        self.registers = dict(mapped_registers(self.map))
        self.model = {address: reg.reset for address, reg in self.registers.items()}
        dut._log.info("bench geometry %s, %d registers", self.geometry, len(self.registers))

    async def reset(self) -> None:
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 4)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 2)

    async def read(self, address: int, length: int = BYTES_PER_BEAT) -> tuple[int, AxiResp]:
        done = await self.axil.read(address, length)
        return int.from_bytes(done.data, "little"), done.resp

    async def write(self, address: int, word: int, length: int = BYTES_PER_BEAT) -> AxiResp:
        """A write of the low `length` bytes of `word` (wstrb has `length` low bits set)."""
        done = await self.axil.write(address, word.to_bytes(BYTES_PER_BEAT, "little")[:length])
        return done.resp

    async def write_and_model(self, address: int, word: int) -> AxiResp:
        """A full-word write; updates the model with what the chip must do with it."""
        resp = await self.write(address, word)
        reg = self.registers.get(address)
        if reg is not None and reg.writable:
            self.model[address] = after_write(reg, self.model[address], word)
            self._update_irq_status()
        return resp

    def _update_irq_status(self) -> None:
        """IRQ_STATUS bit t = tile t's irq, which the fake tile drives from CONFIG.irq_done."""
        config = self.map.register("CONFIG", tile=True)
        irqs = sum(field_value(config, "irq_done", self.model[self.map.address("CONFIG", t)]) << t
                   for t in range(self.geometry.tiles))
        self.model[self.map.address("IRQ_STATUS")] = irqs

    async def check_all_registers(self, when: str) -> None:
        for address, reg in self.registers.items():
            value, resp = await self.read(address)
            assert resp == AxiResp.OKAY, f"{when}: read of {reg.name} at {address:#06x}: {resp!r}"
            assert value == self.model[address], (
                f"{when}: {reg.name} at {address:#06x} reads {value:#010x}, "
                f"expected {self.model[address]:#010x}")

    def unmapped_addresses(self) -> list[int]:
        """Aligned addresses next to registers, in a missing tile and at the top of the space."""
        last_tile = self.map.tile_base(self.geometry.tiles - 1)
        candidates = [
            max(r.offset for r in self.map.chip) + BYTES_PER_BEAT,
            last_tile + max(r.offset for r in self.map.tile) + BYTES_PER_BEAT,
            self.map.tile_base(self.geometry.tiles) + self.map.register("CMD", tile=True).offset,
            2**BUS_ADDR_BITS - BYTES_PER_BEAT,
        ]
        assert all(self.map.decode(a) is None for a in candidates)
        return candidates


# ---------------------------------------------------------------------------------------------
# Register map
# ---------------------------------------------------------------------------------------------


@cocotb.test(timeout_time=TIMEOUT_US, timeout_unit="us")
async def register_map_decode(dut):
    """Every aligned address of the chip and tile blocks, and of the first block past the last
    tile, reads its register's reset value with OKAY, or SLVERR with data 0 where RegisterMap
    has no register; unaligned reads are SLVERR with data 0. The addresses come in random
    order, so that an unmapped read follows reads of registers with nonzero values."""
    tb = TB(dut)
    await tb.reset()
    end = (tb.geometry.tiles + 2) * TILE_STRIDE
    aligned = [*range(0, end, BYTES_PER_BEAT), 2**BUS_ADDR_BITS - BYTES_PER_BEAT]
    unaligned = [a + offset for a in tb.registers for offset in range(1, BYTES_PER_BEAT)]
    probes = [(a, BYTES_PER_BEAT) for a in aligned] + [(a, 1) for a in unaligned]
    random.Random(SEED).shuffle(probes)
    for address, length in probes:
        value, resp = await tb.read(address, length)
        hit = tb.map.decode(address)  # the interface's own decoder is the reference
        expected = (hit[1].reset, AxiResp.OKAY) if hit else (0, AxiResp.SLVERR)
        assert (value, resp) == expected, f"read {address:#06x}: {(value, resp)} != {expected}"


@cocotb.test(timeout_time=TIMEOUT_US, timeout_unit="us")
async def register_writes(dut):
    """Full-word writes answer OKAY and take effect exactly on registers with a writable field;
    writes to read-only registers, to unmapped or unaligned addresses and with a partial wstrb
    answer SLVERR and change nothing (docs/numerics.md section 7)."""
    tb = TB(dut)
    await tb.reset()
    for word in (0xFFFF_FFFF, 0xA5A5_5A5A):
        for address, reg in tb.registers.items():
            resp = await tb.write_and_model(address, word)
            expected = AxiResp.OKAY if reg.writable else AxiResp.SLVERR
            assert resp == expected, f"write of {reg.name} at {address:#06x}: {resp!r}"
        await tb.check_all_registers(f"after writing {word:#x} everywhere")

    for address, reg in tb.registers.items():
        if reg.writable:
            for length in range(1, BYTES_PER_BEAT):
                resp = await tb.write(address, 0x5A5A_A5A5, length=length)
                assert resp == AxiResp.SLVERR, f"partial write ({length} B) of {reg.name}: {resp!r}"
            resp = await tb.write(address + 1, 0x5A5A_A5A5, length=1)
            assert resp == AxiResp.SLVERR, f"unaligned write of {reg.name}: {resp!r}"
    for address in tb.unmapped_addresses():
        resp = await tb.write(address, 0x5A5A_A5A5)
        assert resp == AxiResp.SLVERR, f"write of unmapped {address:#06x}: {resp!r}"
    await tb.check_all_registers("after rejected writes")


@cocotb.test(timeout_time=TIMEOUT_US, timeout_unit="us")
async def irq_summary(dut):
    """IRQ_STATUS bit t and the chip's irq follow tile t's irq line."""
    tb = TB(dut)
    await tb.reset()
    config = tb.map.register("CONFIG", tile=True)
    irq_done = config.field("irq_done").mask
    irq_status = tb.map.address("IRQ_STATUS")
    for tile in range(tb.geometry.tiles):
        await tb.write_and_model(tb.map.address("CONFIG", tile), irq_done)
        value, _ = await tb.read(irq_status)
        assert value == (1 << (tile + 1)) - 1 and dut.irq.value == 1
    for tile in range(tb.geometry.tiles):
        await tb.write_and_model(tb.map.address("CONFIG", tile), 0)
    value, _ = await tb.read(irq_status)
    assert value == 0 and dut.irq.value == 0


# ---------------------------------------------------------------------------------------------
# AXI4-Lite handshakes
# ---------------------------------------------------------------------------------------------


class AxiLiteMonitor:
    """Checks the slave's side of the AXI4-Lite handshakes at every clock edge.

    A response (B or R) offered and not taken must stay offered, unchanged, until it is taken;
    no response may come before its request (per channel, responses <= requests); and the cycle
    of every AW and W handshake is recorded, to show which order they arrived in.
    """

    def __init__(self, dut):
        self.dut = dut
        self.aw_cycles: list[int] = []
        self.w_cycles: list[int] = []
        self.b = 0
        self.r = 0
        self.ar = 0
        cocotb.start_soon(self._run())

    def _take(self, prefix: str, payload: tuple[str, ...]) -> tuple[bool, bool, tuple]:
        d = self.dut
        valid = bool(getattr(d, f"s_axil_{prefix}valid").value)
        ready = bool(getattr(d, f"s_axil_{prefix}ready").value)
        data = tuple(int(getattr(d, f"s_axil_{name}").value) for name in payload)
        return valid, ready, data

    async def _run(self) -> None:
        offered = {"b": None, "r": None}
        payloads = {"b": ("bresp",), "r": ("rdata", "rresp")}
        for cycle in itertools.count():
            await RisingEdge(self.dut.clk)
            for channel in ("aw", "w", "ar"):
                valid, ready, _ = self._take(channel, ())
                if valid and ready:
                    if channel == "aw":
                        self.aw_cycles.append(cycle)
                    elif channel == "w":
                        self.w_cycles.append(cycle)
                    else:
                        self.ar += 1
            for channel in ("b", "r"):
                valid, ready, data = self._take(channel, payloads[channel])
                if offered[channel] is not None:
                    assert valid and data == offered[channel], (
                        f"{channel.upper()} response {offered[channel]} withdrawn or changed "
                        f"to {data if valid else 'nothing'} before it was taken")
                offered[channel] = data if valid and not ready else None
                if valid and ready:
                    setattr(self, channel, getattr(self, channel) + 1)
            writes = min(len(self.aw_cycles), len(self.w_cycles))
            assert self.b <= writes, "B response before its AW and W"
            assert self.r <= self.ar, "R response before its AR"

    def write_orders(self) -> set[str]:
        """'AW first', 'W first' and/or 'together', over the writes seen so far."""
        names = {-1: "AW first", 0: "together", 1: "W first"}
        pairs = zip(self.aw_cycles, self.w_cycles, strict=False)  # the last W may be unpaired
        return {names[(aw > w) - (aw < w)] for aw, w in pairs}


async def writes_and_reads(tb: TB, rng: random.Random, rounds: int) -> int:
    """Concurrent writes to writable registers with concurrent reads of registers whose value
    these writes cannot change (and of unmapped addresses); every answer and every register's
    final value is checked. Returns the number of AXI operations issued."""
    writable = [a for a, r in tb.registers.items() if r.writable]
    # IRQ_STATUS follows the tiles' CONFIG.irq_done, which these writes change.
    steady = [a for a, r in tb.registers.items() if not r.writable and r.name != "IRQ_STATUS"]
    steady += tb.unmapped_addresses()
    operations = 0
    for _ in range(rounds):
        targets = rng.sample(writable, k=min(4, len(writable)))
        words = [rng.getrandbits(32) for _ in targets]
        probes = rng.sample(steady, k=4)
        writes = [cocotb.start_soon(tb.write_and_model(address, word))
                  for address, word in zip(targets, words, strict=True)]
        reads = [cocotb.start_soon(tb.read(a)) for a in probes]
        for task in writes:
            assert await task == AxiResp.OKAY
        for address, task in zip(probes, reads, strict=True):
            expected = ((tb.model[address], AxiResp.OKAY) if address in tb.registers
                        else (0, AxiResp.SLVERR))
            assert await task == expected, f"concurrent read of {address:#06x}"
        operations += len(targets) + len(probes)
    await tb.check_all_registers("after concurrent writes and reads")
    return operations + len(tb.registers)


@cocotb.test(timeout_time=TIMEOUT_US, timeout_unit="us")
async def axil_handshakes_under_backpressure(dut):
    """AW before W, W before AW and both together; then random stalls on every channel (the
    master withholding BREADY/RREADY) with reads and writes in flight together. No transaction
    is lost or duplicated and every held response stays stable until taken."""
    tb = TB(dut)
    await tb.reset()
    monitor = AxiLiteMonitor(dut)
    write_if, read_if = tb.axil.write_if, tb.axil.read_if
    rng = random.Random(SEED)
    operations = 0
    for channel in (write_if.aw_channel, write_if.w_channel, None):
        if channel is not None:  # hold this channel back 3 cycles out of 4
            channel.set_pause_generator(itertools.cycle([True, True, True, False]))
        operations += await writes_and_reads(tb, rng, rounds=3)
        if channel is not None:
            resume(channel)
    assert monitor.write_orders() == {"AW first", "W first", "together"}, monitor.write_orders()

    for channel in (write_if.aw_channel, write_if.w_channel, write_if.b_channel,
                    read_if.ar_channel, read_if.r_channel):
        channel.set_pause_generator(random_pauses(random.Random(rng.random()), 0.5))
    operations += await writes_and_reads(tb, rng, rounds=12)
    await ClockCycles(dut.clk, 2)
    assert monitor.b + monitor.r == operations, (monitor.b, monitor.r, operations)
    assert len(monitor.aw_cycles) == len(monitor.w_cycles) == monitor.b


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


class StreamMonitor:
    """Checks that m_axis keeps a beat it offers unchanged until the sink takes it."""

    def __init__(self, dut):
        self.dut = dut
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        d = self.dut
        offered = None
        while True:
            await RisingEdge(d.clk)
            valid, ready = bool(d.m_axis_tvalid.value), bool(d.m_axis_tready.value)
            beat = (int(d.m_axis_tdata.value), int(d.m_axis_tlast.value))
            if offered is not None:
                assert valid and beat == offered, f"m_axis beat {offered} withdrawn or changed"
            offered = beat if valid and not ready else None


def echoed(words: list[int], tile: int) -> list[int]:
    """What a fake tile sends back for a packet: the header's aux replaced by its index."""
    fields = PacketHeader.from_bits(words[0])
    return [header(fields.type, fields.tile, tile), *words[1:]]


async def receive(tb: TB, count: int) -> list[list[int]]:
    return [list((await tb.sink.recv()).tdata) for _ in range(count)]


@cocotb.test(timeout_time=TIMEOUT_US, timeout_unit="us")
async def stream_routing_under_backpressure(dut):
    """Random packets to every tile with random gaps on s_axis and random back-pressure on
    m_axis: each tile echoes exactly its packets, whole and in order, and the arbiter never
    interleaves two packets."""
    tb = TB(dut)
    await tb.reset()
    StreamMonitor(dut)
    rng = random.Random(SEED)
    tb.source.set_pause_generator(random_pauses(random.Random(1), 0.3))
    tb.sink.set_pause_generator(random_pauses(random.Random(2), 0.6))
    kinds = [kind.value for kind in INPUT_PACKET_TYPES]
    sent = {tile: [] for tile in range(tb.geometry.tiles)}
    for n in range(60):
        tile = rng.randrange(tb.geometry.tiles)
        words = [header(rng.choice(kinds), tile, n),
                 *(rng.getrandbits(32) for _ in range(rng.randrange(8)))]
        sent[tile].append(echoed(words, tile))
        await tb.source.send(AxiStreamFrame(words))
    got = await receive(tb, sum(map(len, sent.values())))
    for tile, packets in sent.items():
        assert [p for p in got if PacketHeader.from_bits(p[0]).aux == tile] == packets, tile


@cocotb.test(timeout_time=TIMEOUT_US, timeout_unit="us")
async def stream_errors(dut):
    """PACKET_TYPE (checked first) and PACKET_TILE: the packet is consumed up to tlast and
    dropped, STREAM_STATUS.error/code and STREAM_ERRORS record it, error is write-1-to-clear,
    and the packets around it still reach their tiles."""
    tb = TB(dut)
    await tb.reset()
    status_reg = tb.map.register("STREAM_STATUS")
    status, errors = tb.map.address("STREAM_STATUS"), tb.map.address("STREAM_ERRORS")
    last_tile = tb.geometry.tiles - 1
    bad_packets = [
        ([header(PacketType.RESULT.value, 0), 0xBAD0, 0xBAD1], ErrorCode.PACKET_TYPE),
        ([header(PacketType.ACTIVATIONS.value, tb.geometry.tiles), 0xBAD2], ErrorCode.PACKET_TILE),
        ([header(0x00, 0xFF)], ErrorCode.PACKET_TYPE),
    ]
    for count, (bad, code) in enumerate(bad_packets, start=1):
        good = [header(PacketType.LDPU_PARAMS.value, last_tile, count), count, count]
        await tb.source.send(AxiStreamFrame(bad))
        await tb.source.send(AxiStreamFrame(good))
        assert await receive(tb, 1) == [echoed(good, last_tile)]
        word, _ = await tb.read(status)
        assert (field_value(status_reg, "error", word), field_value(status_reg, "code", word)) == (
            1, code.value), f"STREAM_STATUS {word:#x} after {code.name}"
        assert await tb.read(errors) == (count, AxiResp.OKAY)

    assert await tb.write(status, 0) == AxiResp.OKAY  # writing 0 keeps the flag
    word, _ = await tb.read(status)
    assert field_value(status_reg, "error", word) == 1
    assert await tb.write(status, status_reg.field("error").mask) == AxiResp.OKAY
    word, _ = await tb.read(status)
    assert (field_value(status_reg, "error", word), field_value(status_reg, "code", word)) == (
        0, ErrorCode.PACKET_TYPE.value), "clearing the flag must keep the last code"
    assert await tb.write(errors, 0) == AxiResp.SLVERR
    assert await tb.read(errors) == (len(bad_packets), AxiResp.OKAY)
    assert tb.sink.empty(), "a dropped packet came out"
