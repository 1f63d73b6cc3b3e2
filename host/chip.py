"""The host driver's chip layer: one `Chip` over any Transport (twin, cosim, board).

Synchronous, ordinary Python. Every command waits for completion and raises ChipError with the
chip's error code when the chip reports one, after clearing the flag so the next command starts
clean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pcmhil.errors import ConfigError, PcmhilError, SimulationError
from pcmhil.host import packets as pk
from pcmhil.interface import (
    CALIBRATE_MAX_LOG2,
    COMMAND_ARG_MAX,
    LDPU_SHIFT_BITS,
    WINDOW_BITS,
    Activation,
    Command,
    ErrorCode,
    Geometry,
    PacketType,
    ProgramMode,
    ReadMode,
    RegisterMap,
    command_word,
)
from pcmhil.transport import Transport


class ChipError(PcmhilError):
    """The chip answered a command or packet with an error code."""

    def __init__(self, code: ErrorCode | int, opcode: int, tile: int):
        try:
            code = ErrorCode(code)
            name = code.name
        except ValueError:
            name = f"unknown error code {code}"
        try:
            what = Command(opcode).name
        except ValueError:
            what = "packet" if opcode == 0 else f"opcode {opcode:#04x}"
        super().__init__(f"tile {tile}: {what} failed with {name}")
        self.code, self.opcode, self.tile = code, opcode, tile


@dataclass(frozen=True)
class TileStatus:
    busy: bool
    done: bool
    error: bool
    saturated: bool
    act_ready: bool
    prog_staged: bool
    ldpu_staged: bool
    opcode: int
    error_code: int
    error_opcode: int


class Chip:
    """Driver for a chip of `geometry` behind `transport`."""

    #: STATUS polls before a command is declared hung (each poll is one bus round trip).
    POLL_TIMEOUT_S = 30.0

    def __init__(self, transport: Transport, geometry: Geometry):
        self.transport = transport
        self.geometry = geometry
        self.map = RegisterMap(geometry)

    # ---- registers ---------------------------------------------------------------------------

    def _tile(self, tile: int) -> int:
        if not isinstance(tile, (int, np.integer)) or not 0 <= tile < self.geometry.tiles:
            raise ConfigError(f"tile must be in [0, {self.geometry.tiles - 1}], not {tile!r}")
        return int(tile)

    def read(self, name: str, tile: int | None = None) -> int:
        return self.transport.read(self.map.address(name, tile))

    def write(self, name: str, value: int, tile: int | None = None) -> None:
        self.transport.write(self.map.address(name, tile), value)

    def read_field(self, register: str, field: str, tile: int | None = None) -> int:
        f = self.map.register(register, tile is not None).field(field)
        return (self.read(register, tile) & f.mask) >> f.lsb

    def status(self, tile: int = 0, value: int | None = None) -> TileStatus:
        """The tile's STATUS and ERROR_INFO fields (`value`: STATUS as just read, if it was)."""
        tile = self._tile(tile)
        reg = self.map.register("STATUS", True)
        value = self.read("STATUS", tile) if value is None else value
        info = self.read("ERROR_INFO", tile)
        get = lambda f: (value & reg.field(f).mask) >> reg.field(f).lsb  # noqa: E731
        ireg = self.map.register("ERROR_INFO", True)
        return TileStatus(
            busy=bool(get("busy")), done=bool(get("done")), error=bool(get("error")),
            saturated=bool(get("saturated")), act_ready=bool(get("act_ready")),
            prog_staged=bool(get("prog_staged")), ldpu_staged=bool(get("ldpu_staged")),
            opcode=get("opcode"),
            error_code=(info & ireg.field("code").mask) >> ireg.field("code").lsb,
            error_opcode=(info & ireg.field("opcode").mask) >> ireg.field("opcode").lsb,
        )

    def counters(self, tile: int = 0) -> dict[str, int]:
        tile = self._tile(tile)
        return {name.lower(): self.read(name, tile) for name in
                ("MVM_COUNT", "LAST_MVM_CYCLES", "ERROR_COUNT", "SATURATION_COUNT")}

    def configure(self, tile: int = 0, *, read_mode: ReadMode = ReadMode.ONE_PHASE,
                  activation: Activation = Activation.IDENTITY, window: int | None = None,
                  shift: int = 0, irq_done: bool = False, irq_error: bool = False) -> None:
        """Write CONFIG, WINDOW (if given) and LDPU_SHIFT. A window shorter than PWM_MAX_CYCLES is
        written (the chip then refuses MVMs with BAD_CONFIG); values the registers cannot hold
        are refused here rather than cut to their field width."""
        tile = self._tile(tile)
        if window is not None and not _integer_in(window, 2**WINDOW_BITS):
            raise ConfigError(f"window must be an integer in [0, {2**WINDOW_BITS - 1}] cycles, "
                              f"not {window!r}")
        if not _integer_in(shift, 2**LDPU_SHIFT_BITS):
            raise ConfigError(f"shift must be an integer in [0, {2**LDPU_SHIFT_BITS - 1}], not {shift!r}")
        reg = self.map.register("CONFIG", True)
        value = 0
        for name, v in (("read_mode", ReadMode(read_mode).value),
                        ("activation", Activation(activation).value),
                        ("irq_done", int(irq_done)), ("irq_error", int(irq_error))):
            value |= v << reg.field(name).lsb
        self.write("CONFIG", value, tile)
        if window is not None:
            self.write("WINDOW", window, tile)
        self.write("LDPU_SHIFT", shift, tile)

    # ---- commands ----------------------------------------------------------------------------

    def command(self, tile: int, command: Command, arg: int = 0, *, wait: bool = True) -> None:
        """Write CMD; with `wait`, poll until the tile is idle and raise ChipError on error."""
        tile = self._tile(tile)
        if not _integer_in(arg, COMMAND_ARG_MAX + 1):
            raise ConfigError(f"the {Command(command).name} command's argument must be an integer in "
                              f"[0, {COMMAND_ARG_MAX}], not {arg!r}")
        self.write("CMD", command_word(Command(command), int(arg)), tile)
        if wait:
            self.wait_idle(tile)

    def wait_idle(self, tile: int) -> TileStatus:
        busy = self.map.register("STATUS", True).field("busy").mask
        value = self.transport.poll(self.map.address("STATUS", tile), busy, 0, self.POLL_TIMEOUT_S)
        status = self.status(tile, value)
        self.raise_for_error(tile, status)
        return status

    def raise_for_error(self, tile: int, status: TileStatus | None = None) -> None:
        status = status or self.status(tile)
        if status.error:
            self.clear_flags(tile)
            raise ChipError(status.error_code, status.error_opcode, tile)

    def clear_flags(self, tile: int) -> None:
        reg = self.map.register("STATUS", True)
        mask = sum(f.mask for f in reg.fields if f.access == "w1c")
        self.write("STATUS", mask, tile)

    def _receive(self, count: int, kind: PacketType, tile: int) -> list[np.ndarray]:
        """The next `count` packets, each of `kind` from `tile`, as Transport.receive_batches."""
        got = self.transport.receive_batches(count)
        if got:  # every header at once (a batch of MVMs returns one packet per vector)
            h = pk.header_fields(np.concatenate([batch[:, 0] for batch in got]))
            wrong = (h["type"] != kind.value) | (h["tile"] != tile)
            if wrong.any():
                k = int(np.argmax(wrong))
                raise SimulationError(f"expected a {kind.name} packet from tile {tile}, got type "
                                      f"{int(h['type'][k]):#04x} from tile {int(h['tile'][k])}")
        return got

    # ---- operations --------------------------------------------------------------------------

    def program_row(self, tile: int, row: int, plus: np.ndarray, minus: np.ndarray,
                    mode: ProgramMode = ProgramMode.TARGET) -> None:
        tile = self._tile(tile)
        if not 0 <= row < self.geometry.rows:
            raise ConfigError(f"row must be in [0, {self.geometry.rows - 1}], not {row!r}")
        packet = pk.pack_program_data(plus, minus, self.geometry, tile,
                                      signed=ProgramMode(mode) is ProgramMode.PULSE)
        self.transport.send(packet)
        self.command(tile, Command.PROGRAM_ROW, row | (ProgramMode(mode).value << 16))

    def program(self, tile: int, plus_codes: np.ndarray, minus_codes: np.ndarray) -> None:
        """One-shot programming of the whole array to target codes [rows, cols] (0..255)."""
        shape = (self.geometry.rows, self.geometry.cols)
        plus_codes, minus_codes = np.asarray(plus_codes), np.asarray(minus_codes)
        for name, codes in (("G+ target codes", plus_codes), ("G- target codes", minus_codes)):
            if codes.shape != shape:
                raise ConfigError(f"{name} must have shape {shape}, not {codes.shape}")
        for row in range(self.geometry.rows):
            self.program_row(tile, row, plus_codes[row], minus_codes[row])

    def verify_row(self, tile: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(G+ counts, G- counts) of one row, read through the ADC."""
        tile = self._tile(tile)
        self.command(tile, Command.VERIFY_ROW, row)
        return pk.unpack_verify(self._receive(1, PacketType.VERIFY_DATA, tile)[0])

    def load_ldpu(self, tile: int, gain: np.ndarray, bias: np.ndarray) -> None:
        tile = self._tile(tile)
        self.transport.send(pk.pack_ldpu_params(gain, bias, self.geometry, tile))
        self.command(tile, Command.LOAD_LDPU)

    def calibrate(self, tile: int = 0, log2_windows: int = 4) -> np.ndarray:
        """Measure per-column ADC offsets (zero input); returns them."""
        tile = self._tile(tile)
        if not 0 <= log2_windows <= CALIBRATE_MAX_LOG2:
            raise ConfigError(f"log2_windows must be in [0, {CALIBRATE_MAX_LOG2}], "
                              f"not {log2_windows!r}")
        self.command(tile, Command.CALIBRATE, log2_windows)
        return pk.unpack_calib(self._receive(1, PacketType.CALIB_DATA, tile)[0])

    def mvm(self, tile: int, x: np.ndarray) -> np.ndarray:
        """int8 inputs [N, rows] (or [rows]) -> int8 outputs [N, cols] (or [cols]); N = 0 gives
        an empty result without a command to the chip (whose MVM count must be >= 1), and N
        beyond what one command counts (COMMAND_ARG_MAX) runs as several MVM commands."""
        tile = self._tile(tile)
        x = np.asarray(x)
        rows, cols = self.geometry.rows, self.geometry.cols
        if x.ndim not in (1, 2) or x.shape[-1] != rows:
            raise ConfigError(f"x must have shape ({rows},) or (N, {rows}), not {x.shape}")
        if x.size == 0:
            return np.zeros((0, cols), dtype=np.int8)
        single = x.ndim == 1
        if len(x) > COMMAND_ARG_MAX and not single:  # one MVM command counts at most this many vectors
            return np.concatenate([self.mvm(tile, x[k:k + COMMAND_ARG_MAX])
                                   for k in range(0, len(x), COMMAND_ARG_MAX)])
        packets = pk.pack_activations(np.atleast_2d(x), self.geometry, tile)
        self.command(tile, Command.MVM, len(packets), wait=False)
        self.transport.send(packets)
        results = self._receive(len(packets), PacketType.RESULT, tile)
        self.wait_idle(tile)
        y = pk.unpack_results(results[0] if len(results) == 1 else np.concatenate(results))
        return y[0] if single else y

    def abort(self, tile: int = 0) -> None:
        self.command(tile, Command.ABORT, wait=False)

    def advance_time(self, seconds: float) -> None:
        """Model environment: let device time pass (PCM drift) between operations."""
        if not np.isfinite(seconds) or seconds < 0:
            raise ConfigError(f"seconds must be a finite number >= 0, not {seconds!r}")
        self.transport.advance_time(float(seconds))


def _integer_in(value, end: int) -> bool:
    """Whether value is an integer (not a bool) in [0, end)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and 0 <= value < end
