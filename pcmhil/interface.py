"""The chip's interface, defined once: geometry limits, register map, command codes, error codes,
stream packet layouts and the analog boundary.

The RTL (pcmhil.rtl) builds its registers, decoders and packet parsers from these definitions,
the host driver and the twin pack/unpack with them, and the exports (JSON, C header, Markdown)
are generated from them. No address, code or field width is typed anywhere else.

The numerics of every digital step are specified in docs/numerics.md; the constants that doc
refers to are the ones below.
"""

# No `from __future__ import annotations`: data.Struct reads its field annotations at class
# creation and would see strings.

from dataclasses import dataclass, field
from typing import Literal

from amaranth.lib import data, enum

from pcmhil.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Geometry and widths
# ---------------------------------------------------------------------------------------------

#: AXI4-Lite and AXI4-Stream data width (bits) and bytes per stream beat.
BUS_DATA_BITS = 32
BYTES_PER_BEAT = BUS_DATA_BITS // 8
#: AXI4-Lite address width (bits). Chip registers at 0x0000, tile t at (t + 1) * TILE_STRIDE.
BUS_ADDR_BITS = 16
TILE_STRIDE = 0x1000

#: Inputs and outputs are signed 8-bit (HERMES: 8-bit inputs, 8-bit outputs per MVM;
#: Khaddam-Aljameh et al., VLSI 2021).
INPUT_BITS = 8
OUTPUT_BITS = 8
INPUT_MIN, INPUT_MAX = -(2 ** (INPUT_BITS - 1)), 2 ** (INPUT_BITS - 1) - 1
OUTPUT_MIN, OUTPUT_MAX = -(2 ** (OUTPUT_BITS - 1)), 2 ** (OUTPUT_BITS - 1) - 1
#: Largest PWM duration in clock cycles: |INPUT_MIN| (one cycle per LSB of magnitude).
PWM_MAX_CYCLES = 2 ** (INPUT_BITS - 1)
#: VERIFY_ROW latches this magnitude on the selected row (a full-scale negative input) and runs
#: "full" windows (win_full): every row with a non-zero magnitude conducts for the whole window,
#: so a verify read integrates over all W cycles (resolution grows with the window).
VERIFY_INPUT = -PWM_MAX_CYCLES

#: ADC counter width per column (saturating). Window register width.
COUNTER_BITS = 12
COUNTER_MAX = 2**COUNTER_BITS - 1
WINDOW_BITS = 12
WINDOW_RESET = PWM_MAX_CYCLES  # the shortest window that holds every PWM duration

#: LDPU fixed-point formats (docs/numerics.md, "LDPU").
LDPU_GAIN_BITS = 16  # signed integer multiplier
LDPU_BIAS_BITS = 32  # signed, same scale as count * gain
LDPU_SHIFT_BITS = 5  # arithmetic right shift 0..31 with round-half-up
LDPU_ACC_BITS = 34  # raw(<=14 b) * gain(16 b) + bias(32 b) never overflows 34 bits
LDPU_LANES = BYTES_PER_BEAT  # columns processed per clock = output bytes per stream beat
LDPU_GAIN_RESET = 1
RAW_BITS = COUNTER_BITS + 2  # signed 4-phase combination c1 - c2 - c3 + c4

#: CALIBRATE averages 2**k windows, k = 0..CALIBRATE_MAX_LOG2.
CALIBRATE_MAX_LOG2 = 8

#: Analog boundary: wide vectors cross as words of at most this many bits (TOOLCHAIN.md: VPI
#: values wider than 64 bits have a history of truncation bugs in Verilator/cocotb).
BOUNDARY_WORD_BITS = 64
#: CCO pulses per column per clock in cycle mode (CCO max frequency above 3 GHz at a 1 GHz
#: clock, HERMES; the model never emits more than 3 per cycle).
CCO_PULSE_BITS = 2
#: Transaction-mode counts per column on the boundary (COUNTER_BITS used, rest zero).
CCO_COUNT_LANE_BITS = 16

ROWS_MIN, ROWS_MAX = 4, 512
COLS_MIN, COLS_MAX = 4, 512
TILES_MIN, TILES_MAX = 1, 8
GEOMETRY_MULTIPLE = BYTES_PER_BEAT


@dataclass(frozen=True)
class Geometry:
    """Rows and columns of one tile's crossbar and the number of tiles on the chip."""

    rows: int = 256
    cols: int = 256
    tiles: int = 1

    def __post_init__(self):
        for name, lo, hi in (("rows", ROWS_MIN, ROWS_MAX), ("cols", COLS_MIN, COLS_MAX)):
            value = getattr(self, name)
            if (not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi
                    or value % GEOMETRY_MULTIPLE):
                raise ConfigError(f"{name} must be an integer multiple of {GEOMETRY_MULTIPLE} "
                                  f"in [{lo}, {hi}], not {value!r}")
        if (not isinstance(self.tiles, int) or isinstance(self.tiles, bool)
                or not TILES_MIN <= self.tiles <= TILES_MAX):
            raise ConfigError(f"tiles must be an integer in [{TILES_MIN}, {TILES_MAX}], "
                              f"not {self.tiles!r}")

    @property
    def row_words(self) -> int:
        """Stream beats that carry one activation vector."""
        return self.rows // BYTES_PER_BEAT

    @property
    def result_words(self) -> int:
        return self.cols // BYTES_PER_BEAT


# ---------------------------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------------------------


class Command(enum.Enum, shape=8):
    """Tile commands, written to the CMD register's opcode field (docs/numerics.md, "Commands")."""

    MVM = 0x01  # arg: number of activation packets to process (1 .. 2**24 - 1)
    PROGRAM_ROW = 0x02  # arg: row (bits 15:0), ProgramMode (bit 16); needs staged PROGRAM_DATA
    VERIFY_ROW = 0x03  # arg: row; emits a VERIFY_DATA packet with the row's G+ and G- counts
    LOAD_LDPU = 0x04  # arg: 0; copies the staged LDPU_PARAMS packet into the LDPU
    CALIBRATE = 0x05  # arg: k; averages 2**k zero-input windows into the per-column ADC offsets
    ABORT = 0x06  # arg: 0; ends the running command with error ABORTED


class ErrorCode(enum.Enum, shape=8):
    """Why a command or packet failed. Every code is provoked through the bus by a test."""

    NONE = 0x00
    BUSY = 0x01  # a command other than ABORT was written while another was running
    UNKNOWN_COMMAND = 0x02  # opcode not in Command
    BAD_ARGUMENT = 0x03  # row out of range, MVM count 0, CALIBRATE k > CALIBRATE_MAX_LOG2
    NO_DATA = 0x04  # PROGRAM_ROW / LOAD_LDPU with nothing staged
    PACKET_LENGTH = 0x05  # a packet's tlast came early or late for its type
    PACKET_TYPE = 0x06  # unknown packet type, or an output-only type sent to the chip
    PACKET_TILE = 0x07  # packet addressed to a tile that does not exist
    ABORTED = 0x08  # the running command was ended by ABORT
    BAD_CONFIG = 0x09  # MVM/VERIFY/CALIBRATE started with WINDOW < PWM_MAX_CYCLES


class PacketType(enum.Enum, shape=8):
    """The first beat of every stream packet carries one of these (PacketHeader.type)."""

    ACTIVATIONS = 0x01  # in: rows int8 inputs, 4 per beat, row 0 in bits 7:0 of beat 1
    PROGRAM_DATA = 0x02  # in: per column (G+ byte, G- byte), column j in bytes 2j, 2j+1
    LDPU_PARAMS = 0x03  # in: per column 2 beats: gain (int16 in bits 15:0), bias (int32)
    RESULT = 0x81  # out: cols int8 outputs, 4 per beat; aux = MVM sequence number
    VERIFY_DATA = 0x82  # out: per column 1 beat: G+ count (15:0), G- count (31:16); aux = row
    CALIB_DATA = 0x83  # out: per column 16-bit ADC offset, 2 per beat; aux = k


#: Packets the host sends (everything else on the input stream is PACKET_TYPE).
INPUT_PACKET_TYPES = (PacketType.ACTIVATIONS, PacketType.PROGRAM_DATA, PacketType.LDPU_PARAMS)


class PacketHeader(data.Struct):
    """First beat of every packet, both directions. `type` is a raw byte so that unknown types
    can be carried and rejected; compare it with PacketType values."""

    type: 8
    tile: 8
    aux: 16


def packet_payload_beats(kind: PacketType, geometry: Geometry) -> int:
    """Payload beats (after the header) of a packet of `kind` for one tile of `geometry`."""
    rows, cols = geometry.rows, geometry.cols
    return {
        PacketType.ACTIVATIONS: rows // BYTES_PER_BEAT,
        PacketType.PROGRAM_DATA: 2 * cols // BYTES_PER_BEAT,
        PacketType.LDPU_PARAMS: 2 * cols,
        PacketType.RESULT: cols // BYTES_PER_BEAT,
        PacketType.VERIFY_DATA: cols,
        PacketType.CALIB_DATA: cols // 2,
    }[kind]


class ReadMode(enum.Enum, shape=1):
    """HERMES read modes (Khaddam-Aljameh et al., JSSC 2022)."""

    ONE_PHASE = 0  # one window, differential devices, per-row read polarity = input sign
    FOUR_PHASE = 1  # four windows: (input sign) x (device polarity), unipolar currents


class Activation(enum.Enum, shape=1):
    IDENTITY = 0
    RELU = 1


class ProgramMode(enum.Enum, shape=1):
    TARGET = 0  # bytes are unsigned target codes: g = code / 255 * g_max of that polarity
    PULSE = 1  # bytes are signed pulse codes: > 0 SET pulses, < 0 RESET pulses (model/device.py)


class DeviceSelect(enum.Enum, shape=2):
    """Which devices conduct in a window (the boundary's win_select)."""

    DIFFERENTIAL = 0  # G+ - G- (1-phase)
    PLUS = 1  # G+ only
    MINUS = 2  # G- only


#: The four windows of a 4-phase MVM, in order: (input sign, devices, sign in the combination).
#: raw = c(+,G+) - c(+,G-) - c(-,G+) + c(-,G-); ADC offsets cancel, so none is subtracted.
FOUR_PHASE_WINDOWS = (
    (+1, DeviceSelect.PLUS, +1),
    (+1, DeviceSelect.MINUS, -1),
    (-1, DeviceSelect.PLUS, -1),
    (-1, DeviceSelect.MINUS, +1),
)


class CommandWord(data.Struct):
    """Layout of the CMD register."""

    opcode: 8
    arg: 24


#: (lsb, width) of each CommandWord field, read from the layout once (`command_word`,
#: `command_fields`: a host issues one command per batch, and amaranth's const takes ~20 us).
_COMMAND_FIELDS = {name: (f.offset, f.width) for name, f in data.Layout.cast(CommandWord)}
#: The largest argument a command carries (e.g. the vectors of one MVM command).
COMMAND_ARG_MAX = (1 << _COMMAND_FIELDS["arg"][1]) - 1


def command_word(opcode: int | Command, arg: int = 0) -> int:
    """The CMD register word of `opcode` (a Command or any 8-bit code) and `arg` (both must fit
    their fields: no wrapping)."""
    word = 0
    for name, value in (("opcode", int(getattr(opcode, "value", opcode))), ("arg", arg)):
        lsb, width = _COMMAND_FIELDS[name]
        if not 0 <= value < 1 << width:
            raise ValueError(f"command {name} must be in [0, {(1 << width) - 1}], not {value!r}")
        word |= value << lsb
    return word


def command_fields(word: int) -> tuple[int, int]:
    """(opcode, arg) of a CMD register word."""
    (op_lsb, op_w), (arg_lsb, arg_w) = _COMMAND_FIELDS["opcode"], _COMMAND_FIELDS["arg"]
    return (word >> op_lsb) & ((1 << op_w) - 1), (word >> arg_lsb) & ((1 << arg_w) - 1)


# ---------------------------------------------------------------------------------------------
# Register map
# ---------------------------------------------------------------------------------------------

Access = Literal["ro", "rw", "w1c"]


@dataclass(frozen=True)
class Field:
    name: str
    lsb: int
    width: int
    access: Access
    reset: int = 0
    doc: str = ""
    #: a read-only field whose value is fixed at elaboration (identifiers, geometry)
    constant: bool = False

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    fields: tuple[Field, ...]
    doc: str
    #: a write has a side effect beyond storing (CMD starts a command)
    strobe: bool = False

    @property
    def reset(self) -> int:
        return sum((f.reset << f.lsb) for f in self.fields)

    @property
    def writable(self) -> bool:
        """A write to a register with no writable field is answered with SLVERR."""
        return any(f.access != "ro" for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


def _ro(name, lsb, width, doc=""):
    return Field(name, lsb, width, "ro", 0, doc)


def _const(name, lsb, width, value, doc=""):
    return Field(name, lsb, width, "ro", value, doc, constant=True)


def _rw(name, lsb, width, doc="", reset=0):
    return Field(name, lsb, width, "rw", reset, doc)


def _w1c(name, lsb, doc=""):
    return Field(name, lsb, 1, "w1c", 0, doc)


CHIP_ID_VALUE = 0x50434D48  # "PCMH"
TILE_ID_VALUE = 0x50434D54  # "PCMT"
INTERFACE_VERSION = 0x00010000  # major.minor in 16.16


def chip_registers(geometry: Geometry) -> tuple[Register, ...]:
    """Chip-level registers at base 0 (stream router status and tile interrupt summary)."""
    return (
        Register("CHIP_ID", 0x00, (_const("id", 0, 32, CHIP_ID_VALUE, "'PCMH'"),), "Chip identifier"),
        Register("VERSION", 0x04, (_const("version", 0, 32, INTERFACE_VERSION,
                                          "interface version 16.16"),), "Interface version"),
        Register("CHIP_CONFIG", 0x08, (
            _const("tiles", 0, 8, geometry.tiles, "number of tiles"),
            _const("input_bits", 8, 8, INPUT_BITS),
            _const("output_bits", 16, 8, OUTPUT_BITS),
            _const("counter_bits", 24, 8, COUNTER_BITS),
        ), "Chip configuration"),
        Register("IRQ_STATUS", 0x0C, (_ro("tiles", 0, TILES_MAX, "irq line of tile t in bit t"),),
                 "Interrupt summary"),
        Register("STREAM_STATUS", 0x10, (
            _w1c("error", 0, "a packet was dropped by the router; write 1 to clear"),
            _ro("code", 8, 8, "ErrorCode of the last router error (PACKET_TYPE, PACKET_TILE)"),
        ), "Stream router status"),
        Register("STREAM_ERRORS", 0x14, (_ro("count", 0, 32, "packets dropped by the router"),),
                 "Stream router error counter"),
    )


def tile_registers(geometry: Geometry) -> tuple[Register, ...]:
    """Registers of one tile, at offsets from the tile's base address."""
    return (
        Register("TILE_ID", 0x00, (_const("id", 0, 32, TILE_ID_VALUE, "'PCMT'"),), "Tile identifier"),
        Register("GEOMETRY", 0x04, (
            _const("rows", 0, 16, geometry.rows, "crossbar rows"),
            _const("cols", 16, 16, geometry.cols, "crossbar columns"),
        ), "Crossbar geometry"),
        Register("CMD", 0x08, (
            _rw("opcode", 0, 8, "Command; writing the register starts it"),
            _rw("arg", 8, 24, "argument, see Command"),
        ), "Command (write starts it; read returns the last written word)", strobe=True),
        Register("STATUS", 0x0C, (
            _ro("busy", 0, 1, "a command is running"),
            _w1c("done", 1, "a command completed (write 1 to clear)"),
            _w1c("error", 2, "a command or packet failed (write 1 to clear; ERROR_INFO says why)"),
            _w1c("saturated", 3, "an ADC counter saturated since last clear"),
            _ro("act_ready", 4, 1, "an activation vector is buffered"),
            _ro("prog_staged", 5, 1, "PROGRAM_DATA is staged"),
            _ro("ldpu_staged", 6, 1, "LDPU_PARAMS are staged"),
            _ro("opcode", 8, 8, "opcode of the running command, else of the last one started"),
        ), "Tile status"),
        Register("CONFIG", 0x10, (
            _rw("read_mode", 0, 1, "ReadMode"),
            _rw("activation", 1, 1, "Activation"),
            _rw("irq_done", 2, 1, "raise irq on STATUS.done"),
            _rw("irq_error", 3, 1, "raise irq on STATUS.error"),
        ), "Tile configuration"),
        Register("WINDOW", 0x14, (_rw("cycles", 0, WINDOW_BITS, "ADC integration window, cycles",
                                      WINDOW_RESET),), "ADC window length"),
        Register("LDPU_SHIFT", 0x18, (_rw("shift", 0, LDPU_SHIFT_BITS,
                                          "LDPU right shift with round-half-up"),), "LDPU shift"),
        Register("ERROR_INFO", 0x1C, (
            _ro("code", 0, 8, "ErrorCode of the last error"),
            _ro("opcode", 8, 8, "opcode of the command that failed (0 for packet errors)"),
        ), "Last error"),
        Register("MVM_COUNT", 0x20, (_ro("count", 0, 32, "MVMs completed"),), "Performance"),
        Register("LAST_MVM_CYCLES", 0x24, (_ro("cycles", 0, 32,
                                               "cycles from latching the input to the last result "
                                               "beat of the last MVM"),), "Performance"),
        Register("ERROR_COUNT", 0x28, (_ro("count", 0, 32, "errors raised by this tile"),),
                 "Performance"),
        Register("SATURATION_COUNT", 0x2C, (_ro("count", 0, 32,
                                                "column-windows whose counter saturated"),),
                 "Performance"),
    )


@dataclass(frozen=True)
class RegisterMap:
    """Absolute addresses of every register on a chip of `geometry`."""

    geometry: Geometry
    chip: tuple[Register, ...] = field(init=False)
    tile: tuple[Register, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "chip", chip_registers(self.geometry))
        object.__setattr__(self, "tile", tile_registers(self.geometry))

    @staticmethod
    def tile_base(tile: int) -> int:
        return (tile + 1) * TILE_STRIDE

    def address(self, name: str, tile: int | None = None) -> int:
        """Absolute byte address of register `name` (of `tile` for tile registers)."""
        if tile is None:
            return self._find(self.chip, name).offset
        if not 0 <= tile < self.geometry.tiles:
            raise ConfigError(f"tile must be in [0, {self.geometry.tiles - 1}], not {tile!r}")
        return self.tile_base(tile) + self._find(self.tile, name).offset

    def register(self, name: str, tile: bool = False) -> Register:
        return self._find(self.tile if tile else self.chip, name)

    @staticmethod
    def _find(regs: tuple[Register, ...], name: str) -> Register:
        for reg in regs:
            if reg.name == name:
                return reg
        raise ConfigError(f"register must be one of {[r.name for r in regs]}, not {name!r}")

    def decode(self, address: int) -> tuple[int | None, Register] | None:
        """(tile or None for chip, register) at `address`, or None if unmapped."""
        if address % 4:
            return None
        block, offset = divmod(address, TILE_STRIDE)
        regs, tile = (self.chip, None) if block == 0 else (self.tile, block - 1)
        if tile is not None and tile >= self.geometry.tiles:
            return None
        for reg in regs:
            if reg.offset == offset:
                return tile, reg
        return None


# ---------------------------------------------------------------------------------------------
# Analog boundary (digital <-> analog), per tile
# ---------------------------------------------------------------------------------------------


def boundary_words(bits: int) -> int:
    return -(-bits // BOUNDARY_WORD_BITS)


@dataclass(frozen=True)
class BoundaryLayout:
    """How a tile's wide boundary vectors are sliced into <= 64-bit ports.

    Row i's drive bits are bit (i % 64) of word (i // 64). Row i's latched magnitude is byte
    (i % 8) of drive_mag word (i // 8). Column j's cycle-mode pulse count is bits
    2*(j % 32) + 1 : 2*(j % 32) of cco_pulses word (j // 32). Column j's transaction-mode count
    is bits 16*(j % 4) + 11 : 16*(j % 4) of cco_count word (j // 4). Programming data: word k of a
    row carries columns 4k .. 4k+3, column 4k+m as (G+ byte at bits 16m+7:16m, G- byte above).
    """

    geometry: Geometry

    @property
    def drive_words(self) -> int:
        return boundary_words(self.geometry.rows)

    @property
    def mag_words(self) -> int:
        return boundary_words(self.geometry.rows * 8)

    @property
    def pulse_words(self) -> int:
        return boundary_words(self.geometry.cols * CCO_PULSE_BITS)

    @property
    def count_words(self) -> int:
        return boundary_words(self.geometry.cols * CCO_COUNT_LANE_BITS)

    @property
    def prog_words(self) -> int:
        return boundary_words(self.geometry.cols * 16)

    def word_bits(self, total_bits: int, index: int) -> int:
        """Width of word `index` of a vector of `total_bits` (the last one may be narrower)."""
        return min(BOUNDARY_WORD_BITS, total_bits - index * BOUNDARY_WORD_BITS)
