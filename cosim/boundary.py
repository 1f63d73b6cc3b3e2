"""Binding of one tile's analog boundary ports to the analog model (docs/numerics.md section 2).

Word slicing follows pcmhil.interface.BoundaryLayout; the testbench joins the words of each vector
into one signal (cosim/harness.py: testbench_verilog), read or written in one VPI call (vpi.Vector).
Two fidelity modes:
- transaction: on win_start, read the latched drive (durations, polarities, device select,
  window length), call the model once, drive cco_count before the window ends;
- cycle: every clock of a window (sampled mid-cycle, on the falling edge), read drive_en /
  drive_neg and drive the CCO pulses of that cycle, which the counters add on the next edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cocotb.triggers import FallingEdge, RisingEdge

from pcmhil.cosim import vpi
from pcmhil.cosim.harness import TIED_OFF
from pcmhil.interface import (
    BOUNDARY_WORD_BITS,
    CCO_COUNT_LANE_BITS,
    CCO_PULSE_BITS,
    BoundaryLayout,
    Geometry,
    ProgramMode,
)

_WORD_BYTES = BOUNDARY_WORD_BITS // 8


def words_to_bits(words: Sequence[int] | np.ndarray, count: int) -> np.ndarray:
    """64-bit words -> bool[count], bit i of the vector = bit i%64 of word i//64."""
    raw = np.array(words, dtype=np.uint64).view(np.uint8)
    return np.unpackbits(raw, bitorder="little")[:count].astype(bool)


def _lane_dtype(lane_bits: int):
    """The little-endian unsigned dtype of one lane, or None if lanes are not whole bytes."""
    return np.dtype(f"<u{lane_bits // 8}") if lane_bits in (8, 16, 32, 64) else None


def words_to_lanes(words: Sequence[int] | np.ndarray, lane_bits: int, count: int) -> np.ndarray:
    """64-bit words -> int64[count] of `lane_bits`-wide unsigned lanes, lane 0 in the low bits."""
    raw = np.array(words, dtype="<u8")
    dtype = _lane_dtype(lane_bits)
    if dtype is not None:  # whole-byte lanes: a view of the words' little-endian bytes
        return raw.view(dtype)[:count].astype(np.int64)
    per_word = BOUNDARY_WORD_BITS // lane_bits
    shifts = np.arange(per_word, dtype=np.uint64) * np.uint64(lane_bits)
    lanes = (raw[:, None] >> shifts) & np.uint64((1 << lane_bits) - 1)
    return lanes.reshape(-1)[:count].astype(np.int64)


def lanes_to_array(lanes: np.ndarray, lane_bits: int, n_words: int) -> np.ndarray:
    """int[count] lanes (each < 2**lane_bits) -> n_words little-endian 64-bit words (pad lanes
    zero)."""
    per_word = BOUNDARY_WORD_BITS // lane_bits
    dtype = _lane_dtype(lane_bits)
    if dtype is not None:
        padded = np.zeros(n_words * per_word, dtype=dtype)
        padded[:len(lanes)] = lanes
        return padded.view("<u8")
    if 8 % lane_bits == 0:  # several lanes per byte: build the bytes, then view them as words
        per_byte = 8 // lane_bits
        padded = np.zeros(n_words * per_word, dtype=np.uint8)
        padded[:len(lanes)] = lanes
        # lane k of each byte ORed in at bit k lane_bits: a few strided passes (a sum along an
        # axis of length 4 is slower: 256 2-bit lanes ~12 vs ~7.5 us)
        packed = padded[::per_byte].copy()
        for k in range(1, per_byte):
            packed |= padded[k::per_byte] << np.uint8(k * lane_bits)
        return packed.view("<u8")
    padded = np.zeros(n_words * per_word, dtype=np.uint64)
    padded[:len(lanes)] = lanes
    shifts = np.arange(per_word, dtype=np.uint64) * np.uint64(lane_bits)
    return np.bitwise_or.reduce(padded.reshape(n_words, per_word) << shifts, axis=1).astype("<u8")


class BoundaryPorts:
    """The t{n}__* ports of tile n on the cosim top."""

    def __init__(self, dut, tile: int, geometry: Geometry, mode: str):
        if mode not in TIED_OFF:
            raise ValueError(f"mode must be 'cycle' or 'transaction', not {mode!r}")
        self.dut = dut
        self.geometry = geometry
        self.mode = mode
        self.layout = BoundaryLayout(geometry)
        self.prefix = f"t{tile}__"
        lay = self.layout
        # the testbench of a mode ties off the input the other mode drives, and boundary_mode
        inputs = {"transaction": ("cco_count", lay.count_words), "cycle": ("cco_pulses", lay.pulse_words)}
        # each vector is one signal of the testbench (cosim/harness.py: testbench_verilog)
        self._vectors = {}
        for name, count in (("drive_en", lay.drive_words), ("drive_neg", lay.drive_words),
                            ("drive_mag", lay.mag_words), inputs[mode]):
            self._vectors[name] = vector = vpi.Vector(self.port(name))
            if vector.n_words != count:
                raise ValueError(f"{self.prefix}{name}: {vector.bits} bits, not {count} boundary words")
        self._scalars = {name: vpi.Word(self.port(name)) for name in (
            "win_select", "win_cycles", "win_full", "win_active", "win_start",
            "prog_valid", "prog_index", "prog_data", "prog_commit", "prog_row", "prog_mode")}

    def port(self, name: str):
        return getattr(self.dut, self.prefix + name)

    def scalar(self, name: str) -> int:
        return self._scalars[name].read()

    def words(self, name: str) -> np.ndarray:
        return self._vectors[name].read()

    def write_words(self, name: str, words: np.ndarray) -> None:
        self._vectors[name].write(words)

    def reset(self) -> None:
        name = "cco_count" if self.mode == "transaction" else "cco_pulses"
        self.write_words(name, np.zeros(self._vectors[name].n_words, dtype="<u8"))

    # ---- windows ---------------------------------------------------------------------------

    async def serve_windows(self, analog) -> None:
        """`analog()` returns the tile's current analog model."""
        if self.mode == "transaction":
            await self._serve_transactions(analog)
        else:
            await self._serve_cycles(analog)

    async def _serve_transactions(self, analog) -> None:
        rows, cols = self.geometry.rows, self.geometry.cols
        lay = self.layout
        while True:
            await RisingEdge(self.port("win_start"))
            durations = words_to_lanes(self.words("drive_mag"), 8, rows)
            negative = words_to_bits(self.words("drive_neg"), rows)
            select = self.scalar("win_select")
            n_cycles = self.scalar("win_cycles")
            if self.scalar("win_full"):  # VERIFY_ROW: conducting rows stay on all window
                durations = np.where(durations > 0, n_cycles, 0)
            counts = analog().windows(durations[None], negative[None], np.array([select]), n_cycles)[0]
            lane_max = (1 << CCO_COUNT_LANE_BITS) - 1
            self.write_words("cco_count", lanes_to_array(np.clip(counts, 0, lane_max)[:cols],
                                                         CCO_COUNT_LANE_BITS, lay.count_words))

    async def _serve_cycles(self, analog) -> None:
        rows = self.geometry.rows
        lay = self.layout
        clk = self.dut.clk
        idle = lanes_to_array(np.zeros(0, dtype=np.int64), CCO_PULSE_BITS, lay.pulse_words)
        while True:
            await RisingEdge(self.port("win_start"))
            window = None
            while True:
                await FallingEdge(clk)
                if not self.scalar("win_active"):
                    self.write_words("cco_pulses", idle)
                    break
                if self.scalar("win_start") or window is None:
                    # cycle 0 of a window (back-to-back windows have no idle cycle between them)
                    window = analog().begin_window(self.scalar("win_select"))
                    # the polarities are latched for the whole window (numerics.md section 2)
                    sign = np.where(words_to_bits(self.words("drive_neg"), rows), -1, 1).astype(np.int8)
                enabled = words_to_bits(self.words("drive_en"), rows)
                pulses = window.step(np.multiply(enabled, sign, dtype=np.int8))
                self.write_words("cco_pulses", lanes_to_array(pulses, CCO_PULSE_BITS, lay.pulse_words))

    # ---- programming -----------------------------------------------------------------------

    async def serve_programming(self, analog) -> None:
        cols = self.geometry.cols
        clk = self.dut.clk
        while True:
            await RisingEdge(self.port("prog_valid"))
            words: dict[int, int] = {}
            while True:
                await FallingEdge(clk)
                if self.scalar("prog_valid"):
                    words[self.scalar("prog_index")] = self.scalar("prog_data")
                if self.scalar("prog_commit"):
                    break
            data = np.array([words.get(k, 0) for k in range(self.layout.prog_words)], dtype=np.uint64)
            payload = data.view(np.uint8)[:2 * cols]
            analog().program_row(self.scalar("prog_row"), payload[0::2].copy(),
                                 payload[1::2].copy(), ProgramMode(self.scalar("prog_mode")))
