"""The twin: a bit-accurate model of the chip at register/transaction level, vectorised over
batches of MVMs. It implements docs/numerics.md exactly, with the same analog model the
co-simulation binds to the RTL, so for the same seed it produces the same codes.

The twin is a Transport: the Chip driver cannot tell it from the co-simulation, except that it
is some hundred times faster.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import cache
from typing import Protocol

import numpy as np

from pcmhil.errors import SimulationError
from pcmhil.host import packets as pk
from pcmhil.interface import (
    CALIBRATE_MAX_LOG2,
    COUNTER_MAX,
    FOUR_PHASE_WINDOWS,
    INPUT_PACKET_TYPES,
    LDPU_GAIN_RESET,
    OUTPUT_MAX,
    OUTPUT_MIN,
    PWM_MAX_CYCLES,
    Activation,
    Command,
    DeviceSelect,
    ErrorCode,
    Geometry,
    PacketType,
    ProgramMode,
    ReadMode,
    Register,
    RegisterMap,
    command_fields,
)
from pcmhil.model import kernels
from pcmhil.transport import BusError, Transport


class AnalogTile(Protocol):
    """What the twin (and the co-simulation) need from the analog side of one tile."""

    def windows(self, durations: np.ndarray, negative: np.ndarray, select: np.ndarray,
                n_cycles: int) -> np.ndarray:
        """Counts [B, cols] (unclamped) of B windows run in order; consumes B operation indices.

        durations [B, rows] int (any integer dtype), negative [B, rows] bool, select [B]
        DeviceSelect values. The caller owns the returned array (the twin reuses it in place).
        """

    def program_row(self, row: int, plus: np.ndarray, minus: np.ndarray, mode: ProgramMode) -> None:
        """Program one row from PROGRAM_DATA bytes (uint8 [cols] each)."""

    def advance_time(self, seconds: float) -> None:
        """Let device time pass."""


class RegisterState:
    """Register values with the access semantics of rtl/csr.py (rw, ro, w1c, constant)."""

    def __init__(self, registers: tuple[Register, ...]):
        self.by_offset = {r.offset: r for r in registers}
        self.values = {(r.name, f.name): f.reset for r in registers for f in r.fields}

    def __getitem__(self, key: tuple[str, str]) -> int:
        return self.values[key]

    def __setitem__(self, key: tuple[str, str], value: int) -> None:
        self.values[key] = value

    def read(self, offset: int) -> int:
        reg = self.by_offset[offset]
        return sum((self.values[(reg.name, f.name)] & ((1 << f.width) - 1)) << f.lsb
                   for f in reg.fields)

    def write(self, offset: int, value: int) -> Register:
        reg = self.by_offset[offset]
        for f in reg.fields:
            bits = (value >> f.lsb) & ((1 << f.width) - 1)
            if f.access == "rw":
                self.values[(reg.name, f.name)] = bits
            elif f.access == "w1c" and bits & 1:
                self.values[(reg.name, f.name)] = 0
        return reg


def ldpu(raw: np.ndarray, gain: np.ndarray, bias: np.ndarray, shift: int, relu: bool,
         overwrite: bool = False) -> np.ndarray:
    """docs/numerics.md section 5, vectorised: int64 raw [..., cols] -> int8 codes.

    With `overwrite`, `raw` (int64) is the accumulator: a batch of MVMs then needs no second
    int64 array of its size (a fresh one costs more in page faults than the arithmetic). A
    batch (2-D int64 raw) takes one compiled loop instead where the analog model's are loaded
    (`pcmhil.model.kernels`: numba is there and on): the same integer operations in one pass
    (1,000 x 256: 0.18 vs 0.86 ms, measured), which matters because the twin runs it outside
    the analog model's two threads.
    """
    rounded = bias + (1 << (shift - 1)) if shift else bias  # the rounding term joins the (cols,) bias
    low = 0 if relu else OUTPUT_MIN  # ReLU is a lower bound of 0 on the clamp
    if raw.ndim == 2 and raw.dtype == np.int64 and kernels.module() is not None:
        out = np.empty(raw.shape, dtype=np.int8)
        _compiled_ldpu()(raw, np.asarray(gain, dtype=np.int64), np.asarray(rounded, dtype=np.int64), shift,
                         low, OUTPUT_MAX, -1, out)
        return out
    acc = np.multiply(raw, gain, dtype=np.int64, out=raw if overwrite else None)
    acc += rounded
    if shift:
        acc >>= shift
    # the clamp writes the int8 codes in the same pass
    return np.clip(acc, low, OUTPUT_MAX, out=np.empty(acc.shape, np.int8), casting="unsafe")


def ldpu_of_counts(counts: np.ndarray, gain: np.ndarray, bias: np.ndarray, shift: int, relu: bool
                   ) -> tuple[np.ndarray, int] | None:
    """docs/numerics.md sections 3-5 for a batch of 1-phase window counts (int64 [N, cols], as
    the analog model returns them): each count clamped to the counter, the column-windows
    whose count exceeded COUNTER_MAX counted, and the LDPU (`bias` with the ADC offset folded
    in, as `TwinTile.mvm` gives it): (codes, saturated), in the compiled LDPU's one pass (the
    clamp and the count are the two passes over the counts it spares); None where the loop is
    not compiled (then `_counts` and `ldpu` do it)."""
    if counts.ndim != 2 or counts.dtype != np.int64 or kernels.module() is None:
        return None
    rounded = bias + (1 << (shift - 1)) if shift else bias
    out = np.empty(counts.shape, dtype=np.int8)
    gain, rounded = np.asarray(gain, dtype=np.int64), np.asarray(rounded, dtype=np.int64)
    low = 0 if relu else OUTPUT_MIN
    saturated = _compiled_ldpu()(counts, gain, rounded, shift, low, OUTPUT_MAX, COUNTER_MAX, out)
    return out, int(saturated)


def _ldpu_loop(raw, gain, rounded, shift, low, high, counter_max, out):
    """`ldpu` of a batch, an element at a time (compiled by `_compiled_ldpu`); with
    counter_max >= 0, each raw value first clamped to [0, counter_max] (`ldpu_of_counts`).
    Returns how many raw values exceeded counter_max (0 without the clamp)."""
    saturated = 0
    if counter_max < 0:
        for b in range(raw.shape[0]):
            for j in range(raw.shape[1]):
                out[b, j] = min(max((raw[b, j] * gain[j] + rounded[j]) >> shift, low), high)
        return saturated
    for b in range(raw.shape[0]):
        for j in range(raw.shape[1]):
            count = raw[b, j]
            saturated += count > counter_max
            count = min(max(count, 0), counter_max)
            out[b, j] = min(max((count * gain[j] + rounded[j]) >> shift, low), high)
    return saturated


@cache
def _compiled_ldpu():
    """`_ldpu_loop` compiled (numba's on-disk cache, as the analog model's loops)."""
    import numba

    return numba.njit(nogil=True, cache=True)(_ldpu_loop)


@dataclass
class _Running:
    opcode: Command
    remaining: int = 0
    abort: bool = False


@dataclass
class TwinTile:
    geometry: Geometry
    index: int
    analog: AnalogTile
    regs: RegisterState = field(init=False)
    act: np.ndarray = field(init=False)  # buffered activation vectors [k, rows] (at most 1 idle)
    prog_staged: tuple[np.ndarray, np.ndarray] | None = None
    ldpu_staged: tuple[np.ndarray, np.ndarray] | None = None
    running: _Running | None = None
    out: list = field(default_factory=list)  # output packets in 2-D batches [k, length], in order

    def __post_init__(self):
        self.regs = RegisterState(RegisterMap(self.geometry).tile)
        self.act = np.zeros((0, self.geometry.rows), dtype=np.int8)
        cols = self.geometry.cols
        self.gain = np.full(cols, LDPU_GAIN_RESET, dtype=np.int64)
        self.bias = np.zeros(cols, dtype=np.int64)
        self.adc_offset = np.zeros(cols, dtype=np.int64)
        self._sync_status()

    # ---- register view ---------------------------------------------------------------------

    def _sync_status(self) -> None:
        r = self.regs
        r["STATUS", "busy"] = int(self.running is not None)
        r["STATUS", "act_ready"] = int(len(self.act) > 0)
        r["STATUS", "prog_staged"] = int(self.prog_staged is not None)
        r["STATUS", "ldpu_staged"] = int(self.ldpu_staged is not None)

    @property
    def irq(self) -> int:
        r = self.regs
        return int((r["STATUS", "done"] and r["CONFIG", "irq_done"])
                   or (r["STATUS", "error"] and r["CONFIG", "irq_error"]))

    def error(self, code: ErrorCode, opcode: int) -> None:
        r = self.regs
        r["STATUS", "error"] = 1
        r["ERROR_INFO", "code"] = code.value
        r["ERROR_INFO", "opcode"] = opcode
        r["ERROR_COUNT", "count"] = (r["ERROR_COUNT", "count"] + 1) & 0xFFFFFFFF

    def _finish(self) -> None:
        self.regs["STATUS", "done"] = 1
        self.running = None

    @property
    def window(self) -> int:
        return self.regs["WINDOW", "cycles"]

    # ---- commands (numerics 6) ---------------------------------------------------------------

    def write_cmd(self, word: int) -> None:
        opcode, arg = command_fields(word)
        try:
            command = Command(opcode)
        except ValueError:
            command = None
        if self.running is not None:
            if command is Command.ABORT:
                self._abort()
            else:
                self.error(ErrorCode.BUSY, opcode)
            self._sync_status()
            return
        if command is None:
            self.error(ErrorCode.UNKNOWN_COMMAND, opcode)
        else:
            problem = self._check(command, arg)
            if problem is not None:
                self.error(problem, opcode)
            else:
                self.regs["STATUS", "opcode"] = opcode
                self._start(command, arg)
        self._sync_status()

    def _check(self, command: Command, arg: int) -> ErrorCode | None:
        rows = self.geometry.rows
        bad = {
            Command.MVM: arg == 0,
            Command.PROGRAM_ROW: (arg & 0xFFFF) >= rows or (arg >> 17) != 0,
            Command.VERIFY_ROW: (arg & 0xFFFF) >= rows or (arg >> 16) != 0,
            Command.LOAD_LDPU: arg != 0,
            Command.CALIBRATE: arg > CALIBRATE_MAX_LOG2,
            Command.ABORT: arg != 0,
        }[command]
        if bad:
            return ErrorCode.BAD_ARGUMENT
        if command in (Command.MVM, Command.VERIFY_ROW, Command.CALIBRATE) and self.window < PWM_MAX_CYCLES:
            return ErrorCode.BAD_CONFIG
        if (command is Command.PROGRAM_ROW and self.prog_staged is None) or \
                (command is Command.LOAD_LDPU and self.ldpu_staged is None):
            return ErrorCode.NO_DATA
        return None

    def _start(self, command: Command, arg: int) -> None:
        if command is Command.MVM:
            self.running = _Running(command, remaining=arg)
            self._drain_activations()
        elif command is Command.PROGRAM_ROW:
            plus, minus = self.prog_staged
            self.prog_staged = None
            self.analog.program_row(arg & 0xFFFF, plus, minus, ProgramMode((arg >> 16) & 1))
            self._finish()
        elif command is Command.VERIFY_ROW:
            self._verify(arg & 0xFFFF)
            self._finish()
        elif command is Command.LOAD_LDPU:
            self.gain, self.bias = self.ldpu_staged
            self.ldpu_staged = None
            self._finish()
        elif command is Command.CALIBRATE:
            self._calibrate(arg)
            self._finish()
        # ABORT while idle: nothing happens

    def _abort(self) -> None:
        # Vectors already accepted were processed when they arrived (the twin is eager), so
        # the MVM ends at once (numerics 6, ABORT).
        opcode = self.running.opcode.value
        self.running = None
        self.error(ErrorCode.ABORTED, opcode)

    # ---- analog windows --------------------------------------------------------------------

    def _counts(self, durations, negative, select) -> np.ndarray:
        """Run windows, clamp to the counter, account saturation (numerics 3)."""
        return self._clamped(self._raw_counts(durations, negative, select))

    def _raw_counts(self, durations, negative, select) -> np.ndarray:
        """The windows' counts as the analog side gives them (int64), not clamped yet."""
        return np.asarray(self.analog.windows(durations, negative, select, self.window), dtype=np.int64)

    def _clamped(self, counts: np.ndarray) -> np.ndarray:
        """Counts clamped to the counter, in place, their saturation accounted (numerics 3)."""
        high = counts.max(initial=0)
        self._saturated(int(np.count_nonzero(counts > COUNTER_MAX)) if high > COUNTER_MAX else 0)
        if high > COUNTER_MAX or counts.min(initial=0) < 0:  # the usual batch needs no clamping pass
            np.clip(counts, 0, COUNTER_MAX, out=counts)
        return counts

    def _saturated(self, column_windows: int) -> None:
        """Account saturated column-windows (numerics 3)."""
        if column_windows:
            r = self.regs
            r["STATUS", "saturated"] = 1
            r["SATURATION_COUNT", "count"] = (r["SATURATION_COUNT", "count"] + column_windows) & 0xFFFFFFFF

    def _verify(self, row: int) -> None:
        durations = np.zeros((2, self.geometry.rows), dtype=np.int64)
        durations[:, row] = self.window  # full windows: the row conducts for all W cycles
        select = np.array([DeviceSelect.PLUS.value, DeviceSelect.MINUS.value])
        counts = self._counts(durations, np.zeros_like(durations, dtype=bool), select)
        self.out.append(pk.pack_verify(counts[0], counts[1], self.index, row))

    def _calibrate(self, k: int) -> None:
        n = 1 << k
        zeros = np.zeros((n, self.geometry.rows), dtype=np.int64)
        select = np.full(n, DeviceSelect.DIFFERENTIAL.value)
        total = self._counts(zeros, zeros.astype(bool), select).sum(axis=0)
        self.adc_offset = (total + ((1 << (k - 1)) if k else 0)) >> k
        self.out.append(pk.pack_calib(self.adc_offset, self.index, k))

    def mvm(self, x: np.ndarray) -> np.ndarray:
        """Run a batch of int8 vectors [N, rows] through windows + LDPU -> int8 [N, cols]."""
        n, rows = x.shape
        # int16 durations: |-128| fits, and the analog model takes any integer dtype (an int64
        # copy of the batch, with its page faults, is what this path would spend its time on)
        mag = np.abs(x, dtype=np.int16)
        bias = self.bias
        r = self.regs
        relu = Activation(r["CONFIG", "activation"]) is Activation.RELU
        if ReadMode(self.regs["CONFIG", "read_mode"]) is ReadMode.ONE_PHASE:
            select = np.full(n, DeviceSelect.DIFFERENTIAL.value)
            # raw = counts - offset enters the LDPU as (counts - offset) gain + bias; taken as
            # counts gain + (bias - offset gain), exact in int64, it costs no pass over the batch
            bias = bias - self.adc_offset * self.gain
            counts = self._raw_counts(mag, x < 0, select)
            done = ldpu_of_counts(counts, self.gain, bias, r["LDPU_SHIFT", "shift"], relu)
            if done is not None:  # the clamp and the saturation count in the LDPU's one pass
                self._saturated(done[1])
                return done[0]
            raw = self._clamped(counts)
        else:
            # windows of vector v are operations 4v .. 4v+3, in FOUR_PHASE_WINDOWS order
            durations = np.stack([np.where(np.sign(x) == sign, mag, 0)
                                  for sign, _, _ in FOUR_PHASE_WINDOWS], axis=1).reshape(4 * n, rows)
            select = np.tile([sel.value for _, sel, _ in FOUR_PHASE_WINDOWS], n)
            counts = self._counts(durations, np.zeros_like(durations, dtype=bool), select)
            signs = np.array([s for _, _, s in FOUR_PHASE_WINDOWS])
            raw = (counts.reshape(n, 4, -1) * signs[None, :, None]).sum(axis=1)
        return ldpu(raw, self.gain, bias, r["LDPU_SHIFT", "shift"], relu, overwrite=True)

    def _drain_activations(self) -> None:
        run = self.running
        if run is None or run.opcode is not Command.MVM or not len(self.act):
            return
        take = min(run.remaining, len(self.act))
        x, self.act = self.act[:take], self.act[take:]
        self._emit_results(x)
        run.remaining -= take
        if run.remaining == 0:
            self._finish()

    def _emit_results(self, x: np.ndarray) -> None:
        y = self.mvm(x)
        r = self.regs
        seq = r["MVM_COUNT", "count"] + np.arange(len(x))
        self.out.append(pk.pack_results(y, self.index, seq))
        r["MVM_COUNT", "count"] = (r["MVM_COUNT", "count"] + len(x)) & 0xFFFFFFFF

    # ---- input packets (numerics 8) ----------------------------------------------------------

    def accept(self, kind: PacketType, packets: np.ndarray) -> None:
        """Packets of one kind and of the correct length for this tile, in order."""
        if kind is PacketType.ACTIVATIONS:
            vectors = pk.unpack_activations(packets)
            run = self.running
            room = (run.remaining if run is not None and run.opcode is Command.MVM else 0) + 1
            if len(self.act) + len(vectors) > room:
                raise SimulationError(
                    f"tile {self.index}: input stream stalled: {len(vectors)} activation vectors "
                    f"sent but the tile can only accept {room - len(self.act)} (no MVM command "
                    f"waiting for them); the RTL would back-pressure forever")
            self.act = np.concatenate([self.act, vectors]) if len(self.act) else vectors
            self._drain_activations()
        elif kind is PacketType.PROGRAM_DATA:
            self.prog_staged = pk.unpack_program_data(packets[-1])
        elif kind is PacketType.LDPU_PARAMS:
            self.ldpu_staged = pk.unpack_ldpu_params(packets[-1])
        self._sync_status()


class TwinTransport(Transport):
    """The whole chip (router, tiles, chip registers) as an in-process Transport."""

    def __init__(self, geometry: Geometry, analog):
        """`analog`: an AnalogSpec (pcmhil.model.analog_tile) or a list of analog tiles."""
        self.geometry = geometry
        self.map = RegisterMap(geometry)
        self.reset(analog)

    def reset(self, analog=None) -> None:
        if analog is None:
            analog = self._analog_spec
        self._analog_spec = analog
        g = self.geometry
        tiles = analog.build(g.rows, g.cols, g.tiles) if hasattr(analog, "build") else list(analog)
        if len(tiles) != g.tiles:
            raise ValueError(f"need {g.tiles} analog tiles, got {len(tiles)}")
        self.chip = RegisterState(self.map.chip)
        self.tiles = [TwinTile(g, t, a) for t, a in enumerate(tiles)]
        self._out: deque[np.ndarray] = deque()  # output packets in 2-D batches, as the tiles made them
        self._queued = 0  # packets in self._out

    # ---- registers ---------------------------------------------------------------------------

    def _locate(self, address: int) -> tuple[RegisterState, TwinTile | None, Register] | None:
        hit = self.map.decode(address)
        if hit is None:
            return None
        tile, reg = hit
        if tile is None:
            return self.chip, None, reg
        return self.tiles[tile].regs, self.tiles[tile], reg

    def read(self, address: int) -> int:
        located = self._locate(address)
        if located is None:
            raise BusError("read", address)
        state, _, reg = located
        if state is self.chip:
            self.chip["IRQ_STATUS", "tiles"] = sum(t.irq << i for i, t in enumerate(self.tiles))
        return state.read(reg.offset)

    def write(self, address: int, value: int, strobe: int = 0b1111) -> None:
        located = self._locate(address)
        if located is None or not located[2].writable or strobe != 0b1111:
            raise BusError("write", address)
        state, tile, reg = located
        state.write(reg.offset, value)
        if tile is not None:
            if reg.strobe:
                tile.write_cmd(value)
            tile._sync_status()
            self._collect()

    # ---- streams -----------------------------------------------------------------------------

    def send(self, packets) -> None:
        batch = np.atleast_2d(packets) if isinstance(packets, np.ndarray) else None
        if batch is not None and self._send_batch(batch):
            return
        for packet in (batch if batch is not None else packets):
            self._send_one(np.asarray(packet, dtype=np.uint32))

    def _send_batch(self, batch: np.ndarray) -> bool:
        """Fast path: equal-length ACTIVATIONS packets to one tile, all valid."""
        fields = pk.header_fields(batch[:, 0])
        if len(batch) < 2 or np.any(fields["type"] != PacketType.ACTIVATIONS.value):
            return False
        tile = int(fields["tile"][0])
        if tile >= self.geometry.tiles or np.any(fields["tile"] != tile):
            return False
        if batch.shape[1] != pk.expected_length(PacketType.ACTIVATIONS.value, self.geometry):
            return False
        self.tiles[tile].accept(PacketType.ACTIVATIONS, batch)
        self._collect()
        return True

    def _send_one(self, packet: np.ndarray) -> None:
        fields = pk.header_fields(int(packet[0]))
        kind, tile = int(fields["type"]), int(fields["tile"])
        if kind not in {t.value for t in INPUT_PACKET_TYPES}:
            self._router_error(ErrorCode.PACKET_TYPE)
        elif tile >= self.geometry.tiles:
            self._router_error(ErrorCode.PACKET_TILE)
        elif len(packet) != pk.expected_length(kind, self.geometry):
            target = self.tiles[tile]
            target.error(ErrorCode.PACKET_LENGTH, 0)
            target._sync_status()
        else:
            self.tiles[tile].accept(PacketType(kind), packet[None, :])
        self._collect()

    def _router_error(self, code: ErrorCode) -> None:
        self.chip["STREAM_STATUS", "error"] = 1
        self.chip["STREAM_STATUS", "code"] = code.value
        self.chip["STREAM_ERRORS", "count"] = (self.chip["STREAM_ERRORS", "count"] + 1) & 0xFFFFFFFF

    def _collect(self) -> None:
        for tile in self.tiles:
            self._out.extend(tile.out)
            self._queued += sum(len(batch) for batch in tile.out)
            tile.out.clear()

    def receive(self, count: int, timeout_s: float = 10.0) -> list[np.ndarray]:
        return [packet for batch in self._take(count) for packet in batch]

    def receive_batches(self, count: int, timeout_s: float = 10.0) -> list[np.ndarray]:
        return self._take(count)

    def _take(self, count: int) -> list[np.ndarray]:
        """The next `count` packets as the queued batches themselves (the results of a batch of
        MVMs stay one array), the last one split when `count` ends inside it."""
        if count > self._queued:
            raise SimulationError(
                f"asked for {count} output packets but the twin has produced {self._queued}; "
                f"the chip would never send the rest")
        batches = []
        while count > 0:
            batch = self._out.popleft()
            if len(batch) > count:  # the rest stays queued, first in line
                self._out.appendleft(batch[count:])
                batch = batch[:count]
            batches.append(batch)
            count -= len(batch)
            self._queued -= len(batch)
        return batches

    def pending(self) -> int:
        return self._queued

    def poll(self, address: int, mask: int, value: int, timeout_s: float = 30.0) -> int:
        # The twin finishes every command at once: a register not there yet never will be.
        register = self.read(address)
        if register & mask != value:
            raise SimulationError(f"register {address:#06x} = {register:#010x} will never reach "
                                  f"{value:#x} under mask {mask:#x} (the twin has nothing left to "
                                  f"do: e.g. an MVM waiting for activation vectors)")
        return register

    def advance_time(self, seconds: float) -> None:
        for tile in self.tiles:
            tile.analog.advance_time(seconds)

