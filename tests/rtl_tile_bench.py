"""Test bench of one RTL tile: a bus master for its registers, a packet source and sink for its
streams, a tiny deterministic fake analog side, and a reference of numerics.md written out in
Python that says what the tile must answer.

The fake analog side (not a physics model): in a window of W cycles with device select `sel`,
column j gets clamp(base_j + sum_i en_i(c) * s_i * w_sel[i, j], 0, 3) CCO pulses in cycle c, where
en_i(c) = c < d_i, s_i = -1 for a negative read polarity, w_DIFFERENTIAL = w_plus - w_minus.
Cycle mode drives exactly that in every cycle of a window from that cycle's drive_en/drive_neg/
win_select (and the offset rate base_j outside windows, which the counters must ignore);
transaction mode reads drive_mag/drive_neg/win_select/win_cycles in cycle 0, computes the
window's total and drives it as cco_count only in cycle W-1 (a garbage value before), so the
counters must load it exactly at e_W. Both modes must therefore give the same counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rtl_sim import simulate

from pcmhil.host import packets as pk
from pcmhil.interface import (
    BOUNDARY_WORD_BITS,
    CCO_COUNT_LANE_BITS,
    CCO_PULSE_BITS,
    COUNTER_MAX,
    FOUR_PHASE_WINDOWS,
    LDPU_GAIN_RESET,
    OUTPUT_MAX,
    OUTPUT_MIN,
    WINDOW_RESET,
    DeviceSelect,
    Geometry,
    command_word,
    tile_registers,
)
from pcmhil.rtl.tile import Tile

PULSES_MAX = 2**CCO_PULSE_BITS - 1
LANE_MAX = 2**CCO_COUNT_LANE_BITS - 1
#: What the transaction-mode fake drives on cco_count before the window's last cycle.
GARBAGE_COUNT = 0xBAD


def bits_of_words(words: list[int], count: int, bits: int = 1) -> np.ndarray:
    """Little-endian lanes of `bits` from a list of 64-bit boundary words."""
    total = sum(w << (BOUNDARY_WORD_BITS * k) for k, w in enumerate(words))
    return np.array([(total >> (bits * i)) & ((1 << bits) - 1) for i in range(count)], dtype=np.int64)


def words_of_lanes(lanes, bits: int, n_words: int) -> list[int]:
    total = sum(int(v) << (bits * i) for i, v in enumerate(lanes))
    mask = (1 << BOUNDARY_WORD_BITS) - 1
    return [(total >> (BOUNDARY_WORD_BITS * k)) & mask for k in range(n_words)]


@dataclass
class FakeAnalog:
    geometry: Geometry
    seed: int = 0
    w_plus: np.ndarray = field(init=False)
    w_minus: np.ndarray = field(init=False)
    base: np.ndarray = field(init=False)
    windows: list = field(default_factory=list)  # (select, durations, negative, cycles) seen
    programmed: list = field(default_factory=list)  # (row, mode, words) seen

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        shape = (self.geometry.rows, self.geometry.cols)
        self.w_plus = rng.integers(0, 2, size=shape)
        self.w_minus = rng.integers(0, 2, size=shape)
        self.base = rng.integers(0, PULSES_MAX + 1, size=self.geometry.cols)

    def weights(self, select: int) -> np.ndarray:
        return {DeviceSelect.DIFFERENTIAL.value: self.w_plus - self.w_minus,
                DeviceSelect.PLUS.value: self.w_plus,
                DeviceSelect.MINUS.value: self.w_minus}[int(select)]

    def count(self, durations, negative, select: int, cycles: int) -> np.ndarray:
        """The window's total pulses per column (unclamped by the counter)."""
        cycle = np.arange(cycles)[:, None]
        drive = (cycle < np.asarray(durations)[None, :]) * np.where(negative, -1, 1)[None, :]
        return np.clip(self.base[None, :] + drive @ self.weights(select), 0, PULSES_MAX).sum(axis=0)

    # ---- the simulated analog side -------------------------------------------------------

    def server(self, tile: Tile, transaction: bool):
        """Background testbench: the analog side of `tile` in one boundary mode."""
        return self._transactions(tile) if transaction else self._cycles(tile)

    def _window_start(self, ctx, analog) -> tuple:
        """In cycle 0 of a window: what it drives; recorded as one analog operation."""
        rows = self.geometry.rows
        durations = bits_of_words([ctx.get(w) for w in analog.drive_mag], rows, 8)
        negative = bits_of_words([ctx.get(w) for w in analog.drive_neg], rows).astype(bool)
        cycles = ctx.get(analog.win_cycles)
        if ctx.get(analog.win_full):  # VERIFY_ROW: a conducting row is on for the whole window
            durations = np.where(durations > 0, cycles, 0)
        window = (ctx.get(analog.win_select).value, durations, negative, cycles)
        self.windows.append(window)
        return window

    def _transactions(self, tile: Tile):
        analog = tile.analog
        n_words = len(analog.cco_count)

        async def serve(ctx):
            while True:
                await ctx.posedge(analog.win_start)  # now in cycle 0
                select, durations, negative, cycles = self._window_start(ctx, analog)
                total = np.minimum(self.count(durations, negative, select, cycles), LANE_MAX)
                garbage = [GARBAGE_COUNT] * self.geometry.cols
                _set_words(ctx, analog.cco_count, words_of_lanes(garbage, CCO_COUNT_LANE_BITS, n_words))
                if cycles > 1:
                    await ctx.tick().repeat(cycles - 1)  # now in cycle W-1
                _set_words(ctx, analog.cco_count, words_of_lanes(total, CCO_COUNT_LANE_BITS, n_words))

        return serve

    def _cycles(self, tile: Tile):
        analog = tile.analog
        rows, n_words = self.geometry.rows, len(analog.cco_pulses)
        # outside windows the CCOs keep running at their offset rate; the counters must ignore it
        idle = words_of_lanes(self.base, CCO_PULSE_BITS, n_words)

        async def serve(ctx):
            _set_words(ctx, analog.cco_pulses, idle)
            while True:
                await ctx.posedge(analog.win_start)  # now in cycle 0
                select = self._window_start(ctx, analog)[0]
                weights = self.weights(select)
                while ctx.get(analog.win_active):
                    en = bits_of_words([ctx.get(w) for w in analog.drive_en], rows)
                    neg = bits_of_words([ctx.get(w) for w in analog.drive_neg], rows)
                    q = self.base + (en * np.where(neg, -1, 1)) @ weights
                    pulses = np.clip(q, 0, PULSES_MAX)
                    _set_words(ctx, analog.cco_pulses, words_of_lanes(pulses, CCO_PULSE_BITS, n_words))
                    await ctx.tick()
                _set_words(ctx, analog.cco_pulses, idle)

        return serve

    def program_recorder(self, tile: Tile):
        """Background testbench recording (row, mode, words, (cycle, prog_index) of each word,
        commit cycle) of every PROGRAM_ROW, cycles counted from the first word."""
        analog = tile.analog

        async def record(ctx):
            while True:
                await ctx.posedge(analog.prog_valid)
                words, cycles = [], []
                cycle = 0
                while not ctx.get(analog.prog_commit):
                    if ctx.get(analog.prog_valid):
                        words.append(ctx.get(analog.prog_data))
                        cycles.append((cycle, ctx.get(analog.prog_index)))
                    await ctx.tick()
                    cycle += 1
                self.programmed.append((ctx.get(analog.prog_row), ctx.get(analog.prog_mode).value,
                                        words, cycles, cycle))

        return record


def _set_words(ctx, ports, words) -> None:
    for port, word in zip(ports, words, strict=True):
        ctx.set(port, word)


# ---- reference of numerics.md --------------------------------------------------------------


def ldpu_reference(raw, gain, bias, shift: int, relu: bool) -> np.ndarray:
    """numerics 5, vectorised."""
    acc = np.asarray(raw, dtype=np.int64) * gain + bias
    y = acc if shift == 0 else (acc + (1 << (shift - 1))) >> shift
    if relu:
        y = np.maximum(y, 0)
    return np.clip(y, OUTPUT_MIN, OUTPUT_MAX)


@dataclass
class TileReference:
    """What a tile with `analog` must answer (numerics 1-6), and its counters."""

    analog: FakeAnalog
    gain: np.ndarray = field(init=False)
    bias: np.ndarray = field(init=False)
    adc_offset: np.ndarray = field(init=False)
    saturations: int = 0
    mvm_count: int = 0

    def __post_init__(self):
        cols = self.analog.geometry.cols
        self.gain = np.full(cols, LDPU_GAIN_RESET, dtype=np.int64)
        self.bias = np.zeros(cols, dtype=np.int64)
        self.adc_offset = np.zeros(cols, dtype=np.int64)

    def window(self, durations, negative, select: DeviceSelect, cycles: int) -> np.ndarray:
        """numerics 3: clamp to the counter, count saturated columns."""
        counts = self.analog.count(durations, negative, select.value, cycles)
        self.saturations += int(np.count_nonzero(counts > COUNTER_MAX))
        return np.minimum(counts, COUNTER_MAX)

    def raw(self, x, four_phase: bool, cycles: int) -> np.ndarray:
        """numerics 1 and 4."""
        x = np.asarray(x, dtype=np.int64)
        if not four_phase:
            return self.window(np.abs(x), x < 0, DeviceSelect.DIFFERENTIAL, cycles) - self.adc_offset
        no = np.zeros(len(x), dtype=bool)
        return sum(sign * self.window(np.where(np.sign(x) == input_sign, np.abs(x), 0), no, select, cycles)
                   for input_sign, select, sign in FOUR_PHASE_WINDOWS)

    def mvm(self, x, four_phase: bool = False, cycles: int = WINDOW_RESET, shift: int = 0,
            relu: bool = False) -> np.ndarray:
        self.mvm_count += 1
        return ldpu_reference(self.raw(x, four_phase, cycles), self.gain, self.bias, shift, relu)

    def result_packet(self, x, tile: int, **config) -> np.ndarray:
        """The RESULT packet of the next MVM of `x` (aux = the MVM count before it)."""
        seq = self.mvm_count
        return pk.pack_results(self.mvm(x, **config)[None], tile, [seq])[0]

    def verify(self, row: int, cycles: int) -> tuple[np.ndarray, np.ndarray]:
        durations = np.zeros(self.analog.geometry.rows, dtype=np.int64)
        durations[row] = cycles  # full window
        no = np.zeros_like(durations, dtype=bool)
        return (self.window(durations, no, DeviceSelect.PLUS, cycles),
                self.window(durations, no, DeviceSelect.MINUS, cycles))

    def calibrate(self, k: int, cycles: int) -> np.ndarray:
        zeros = np.zeros(self.analog.geometry.rows, dtype=np.int64)
        total = sum(self.window(zeros, zeros.astype(bool), DeviceSelect.DIFFERENTIAL, cycles)
                    for _ in range(1 << k))
        self.adc_offset = (total + ((1 << (k - 1)) if k else 0)) >> k
        return self.adc_offset


# ---- bus master, packet source and sink ----------------------------------------------------


async def send_packet(ctx, rx, words) -> None:
    """One packet on a packet stream, tlast on its final beat, waiting for tready."""
    ctx.set(rx.valid, 1)
    for k, word in enumerate(words):
        ctx.set(rx.payload, {"data": int(word), "last": int(k == len(words) - 1)})
        await ctx.tick().until(rx.ready)
    ctx.set(rx.valid, 0)


def packet_sink(tx, packets: list, ready_pattern=None):
    """Background testbench: receive packets from `tx` into `packets` with tx.ready following
    `ready_pattern` (cycled; default always ready), checking that a started packet has no gaps."""

    async def collect(ctx):
        beats, cycle = [], 0
        ready = ready_pattern or [1]
        ctx.set(tx.ready, ready[0])
        async for _, _, valid, ready_now, payload in ctx.tick().sample(tx.valid, tx.ready, tx.payload):
            cycle += 1
            ctx.set(tx.ready, ready[cycle % len(ready)])
            assert valid or not beats, "tx.valid fell inside a packet"
            if valid and ready_now:
                beats.append(payload.data)
                if payload.last:
                    packets.append(np.array(beats, dtype=np.uint32))
                    beats = []

    return collect


class TileBench:
    """Drives a Tile's csr and rx ports and collects its tx packets (from async testbenches)."""

    def __init__(self, tile: Tile, tx_ready_pattern=None):
        self.tile = tile
        self.geometry = tile.geometry
        self.offsets = {r.name: r.offset for r in tile_registers(tile.geometry)}
        self.packets: list[np.ndarray] = []
        #: tx.ready per cycle (cycled); None: always ready
        self.tx_ready_pattern = tx_ready_pattern

    async def write(self, ctx, name: str, value: int) -> None:
        bus = self.tile.csr
        ctx.set(bus.addr, self.offsets[name])
        ctx.set(bus.w_data, value)
        ctx.set(bus.w_stb, 1)
        await ctx.tick()
        ctx.set(bus.w_stb, 0)

    async def read(self, ctx, name: str) -> int:
        bus = self.tile.csr
        ctx.set(bus.addr, self.offsets[name])
        ctx.set(bus.r_stb, 1)
        await ctx.tick()
        ctx.set(bus.r_stb, 0)
        return ctx.get(bus.r_data)

    async def command(self, ctx, opcode: int, arg: int = 0) -> None:
        await self.write(ctx, "CMD", command_word(opcode, arg))

    async def status(self, ctx) -> dict[str, int]:
        value = await self.read(ctx, "STATUS")
        reg = next(r for r in tile_registers(self.geometry) if r.name == "STATUS")
        return {f.name: (value >> f.lsb) & ((1 << f.width) - 1) for f in reg.fields}

    async def wait_idle(self, ctx, poll_cycles: int = 16, limit: int = 200_000) -> dict[str, int]:
        for _ in range(limit // poll_cycles):
            status = await self.status(ctx)
            if not status["busy"]:
                return status
            await ctx.tick().repeat(poll_cycles)
        raise AssertionError("the tile stayed busy")

    async def wait_packets(self, ctx, count: int, limit: int = 20_000) -> None:
        for _ in range(limit):
            if len(self.packets) >= count:
                return
            await ctx.tick()
        raise AssertionError(f"expected {count} packets, received {len(self.packets)}")

    async def error_info(self, ctx) -> tuple[int, int]:
        value = await self.read(ctx, "ERROR_INFO")
        return value & 0xFF, (value >> 8) & 0xFF

    async def send(self, ctx, words) -> None:
        await send_packet(ctx, self.tile.rx, words)

    def collector(self):
        return packet_sink(self.tile.tx, self.packets, self.tx_ready_pattern)

    def activations(self, x) -> np.ndarray:
        return pk.pack_activations(np.atleast_2d(x), self.geometry, self.tile.tile_index)


def run_tile(tile: Tile, fake: FakeAnalog, bench: TileBench, script, transaction: bool) -> None:
    """Simulate `script(ctx)` on the tile with the fake analog side in the given boundary mode."""
    async def main(ctx):
        ctx.set(tile.analog.boundary_mode, int(transaction))
        await script(ctx)

    background = [bench.collector(), fake.program_recorder(tile), fake.server(tile, transaction)]
    simulate(tile, main, background=background)
