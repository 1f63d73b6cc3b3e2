"""The tile controller: the register block and the command sequencer (docs/numerics.md 6).

Commands and their sequences (states of the FSM):
- MVM: MVM_WAIT (a vector is buffered) -> LOAD (input buffer -> PWM latch) -> LOADED (release
  the buffer, clear the raw values) -> WINDOW / WINDOW_WAIT per window of the read mode (the raw
  accumulators combine the counts as it ends) -> EMIT / EMIT_WAIT (RESULT packet) -> MVM_WAIT
  for the next vector;
- VERIFY_ROW, CALIBRATE: LOAD (a synthesised latch) -> windows -> EMIT (VERIFY_DATA, CALIB_DATA);
- PROGRAM_ROW: PROGRAM / PROGRAM_WAIT (the row programmer sends the staged words);
- LOAD_LDPU: the staged parameters become active at the write;
every command ends in FINISH, which waits for the saturation counts of its windows and then
raises done, or ABORTED if an ABORT was accepted while it ran.

A CMD write is checked in the cycle the register file signals it, in the order of numerics 6;
the first failing check is the error. Errors of the same cycle (a CMD write, a command ending
ABORTED, a packet error) all count in ERROR_COUNT; ERROR_INFO keeps the CMD write's, else the
ABORTED, else the packet error.
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from pcmhil.interface import (
    BUS_DATA_BITS,
    BYTES_PER_BEAT,
    CALIBRATE_MAX_LOG2,
    FOUR_PHASE_WINDOWS,
    INPUT_BITS,
    PWM_MAX_CYCLES,
    VERIFY_INPUT,
    Activation,
    Command,
    DeviceSelect,
    ErrorCode,
    Geometry,
    PacketType,
    ReadMode,
    tile_registers,
)
from pcmhil.rtl.csr import RegisterFile
from pcmhil.rtl.pwm import DriveWindow, WindowControl
from pcmhil.rtl.raw_accumulator import CombineControl
from pcmhil.rtl.row_programmer import PROG_ROW_BITS, ProgramControl
from pcmhil.rtl.signatures import CSRBus
from pcmhil.rtl.sizes import address_width
from pcmhil.rtl.tile_tx import TxControl


class WindowStep(data.Struct):
    """One window of a command: what it drives and how its counts enter the raw values."""

    drive: DriveWindow
    accumulate: 1
    subtract: 1


#: PROGRAM_ROW / VERIFY_ROW argument: row in bits 15:0, ProgramMode in bit 16 (numerics 6).
ROW_ARG = data.StructLayout({"row": PROG_ROW_BITS, "mode": 1})

ONE_PHASE_STEP = WindowStep.const({
    "drive": {"select": DeviceSelect.DIFFERENTIAL, "positive": 1, "negative": 1, "bipolar": 1},
    "accumulate": 1, "subtract": 0,
})
FOUR_PHASE_STEPS = [WindowStep.const({
    "drive": {"select": select, "positive": sign > 0, "negative": sign < 0, "bipolar": 0},
    "accumulate": 1, "subtract": combine < 0,
}) for sign, select, combine in FOUR_PHASE_WINDOWS]
# VERIFY_ROW latches the full-scale negative input VERIFY_INPUT on its row (0 elsewhere) and
# drives only negative inputs, unipolar, in full windows: the row conducts for all W cycles,
# every other row not at all. The PLUS count is kept in the raw values, the MINUS count stays
# in the counters.
assert VERIFY_INPUT < 0
VERIFY_STEPS = [WindowStep.const({
    "drive": {"select": select, "positive": 0, "negative": 1, "bipolar": 0, "full": 1},
    "accumulate": select is DeviceSelect.PLUS, "subtract": 0,
}) for select in (DeviceSelect.PLUS, DeviceSelect.MINUS)]

#: Windows of a CALIBRATE of the largest k.
MAX_WINDOWS = 1 << CALIBRATE_MAX_LOG2


class Controller(wiring.Component):
    """csr: the tile's register block; irq; packet_error: from the parser; act_*: the input
    buffer; prog_*/ldpu_*: the staging stores; window/combine/tx/program: the blocks it
    sequences; counters_busy/saturations: from the ADC counters."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        self.row_words = geometry.row_words
        super().__init__({
            "csr": In(CSRBus()),
            "irq": Out(1),
            "packet_error": In(1),
            "act_read": In(ReadPort.Signature(addr_width=address_width(self.row_words), shape=BUS_DATA_BITS)),
            "act_full": In(1),
            "act_release": Out(1),
            "prog_staged": In(1),
            "prog_consume": Out(1),
            "ldpu_staged": In(1),
            "ldpu_consume": Out(1),
            "window": Out(WindowControl()),
            "combine": Out(CombineControl()),
            "counters_busy": In(1),
            "saturations": In(stream.Signature(range(geometry.cols + 1), always_ready=True)),
            "tx": Out(TxControl()),
            "program": Out(ProgramControl()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.registers = regs = RegisterFile(tile_registers(self.geometry))
        wiring.connect(m, wiring.flipped(self.csr), regs.bus)
        r = regs.signal
        opcode = r("STATUS", "opcode")  # of the running (or last) command

        busy = Signal()
        written, new_opcode, new_arg = r("CMD", "written"), r("CMD", "opcode"), r("CMD", "arg")
        check = self._check(m, regs, new_opcode, new_arg, busy)
        accepted = written & (check == ErrorCode.NONE)
        abort_accepted = accepted & busy  # only ABORT passes the checks while busy
        abort = Signal()  # an ABORT was accepted while the running command ran
        ending = Signal()  # FINISH ends the command this cycle
        ending_aborted = Signal()  # ... with ABORTED
        _, *command_errors = self._record_errors(m, regs, [  # in increasing priority for ERROR_INFO
            (self.packet_error, ErrorCode.PACKET_LENGTH, 0),  # numerics 6: opcode 0 for packets
            (ending_aborted, ErrorCode.ABORTED, opcode),
            (written & (check != ErrorCode.NONE), check, new_opcode),
        ])
        self._statistics(m, regs)

        arg = Signal.like(new_arg)  # of the running command
        row_arg = ROW_ARG(arg[:ROW_ARG.size])
        four_phase = Signal()  # read mode of the current MVM vector
        window_index = Signal(range(MAX_WINDOWS))
        last_window = Signal.like(window_index)  # of the command (or vector), set in LOADED
        step, windows = self._window_step(m, opcode, four_phase, arg[:len(self.tx.calib_log2)],
                                          window_index)
        self._drive_blocks(m, regs, arg, row_arg, four_phase, step)

        remaining = Signal.like(new_arg)  # MVM vectors still to process
        grace = Signal()  # the vector buffered when ABORT came in: the MVM still processes it
        load_index = Signal(address_width(self.row_words))
        mvm_cycles = Signal.like(r("LAST_MVM_CYCLES", "cycles"))
        m.d.sync += mvm_cycles.eq(mvm_cycles + 1)
        loading = Signal()
        self._load_latch(m, opcode, row_arg.row, load_index, loading)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(accepted):
                    m.d.sync += [opcode.eq(new_opcode), arg.eq(new_arg)]
                    with m.Switch(new_opcode):
                        with m.Case(Command.MVM):
                            m.d.sync += remaining.eq(new_arg)
                            m.next = "MVM_WAIT"
                        with m.Case(Command.PROGRAM_ROW):
                            m.d.comb += self.prog_consume.eq(1)
                            m.next = "PROGRAM"
                        with m.Case(Command.VERIFY_ROW, Command.CALIBRATE):
                            m.next = "LOAD"
                        with m.Case(Command.LOAD_LDPU):
                            m.d.comb += self.ldpu_consume.eq(1)
                            m.next = "FINISH"
                        # ABORT while idle: nothing happens
            with m.State("MVM_WAIT"):
                with m.If((remaining == 0) | (abort & ~grace)):
                    m.next = "FINISH"
                with m.Elif(self.act_full):
                    m.d.sync += [
                        grace.eq(0),
                        four_phase.eq(r("CONFIG", "read_mode") == ReadMode.FOUR_PHASE),
                        mvm_cycles.eq(1),  # LAST_MVM_CYCLES: the first LOAD cycle is cycle 1
                    ]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += load_index.eq(load_index + 1)
                with m.If(load_index == self.row_words - 1):
                    # a register, as it reaches every column: high during LOADED
                    m.d.sync += self.combine.clear.eq(1)
                    m.next = "LOADED"
            with m.State("LOADED"):  # the last word enters the latch; the raw values are cleared
                m.d.comb += self.act_release.eq(opcode == Command.MVM)
                m.d.sync += [load_index.eq(0), window_index.eq(0), last_window.eq(windows - 1),
                             self.combine.clear.eq(0)]
                m.next = "WINDOW"
            with m.State("WINDOW"):
                m.d.comb += self.window.start.eq(1)
                # registers, as they reach every column; the accumulators combine the counts
                # in the cycle after the window's last one
                m.d.sync += [self.combine.accumulate.eq(step.accumulate),
                             self.combine.subtract.eq(step.subtract)]
                m.next = "WINDOW_WAIT"
            with m.State("WINDOW_WAIT"):
                with m.If(~self.window.busy):
                    m.d.sync += window_index.eq(window_index + 1)
                    m.next = "WINDOW"
                    with m.If(window_index == last_window):
                        m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += self.tx.start.eq(1)
                m.next = "EMIT_WAIT"
            with m.State("EMIT_WAIT"):
                with m.If(~self.tx.busy):
                    with m.If(opcode == Command.MVM):
                        mvm_count = r("MVM_COUNT", "count")
                        m.d.sync += [
                            mvm_count.eq(mvm_count + 1),
                            r("LAST_MVM_CYCLES", "cycles").eq(mvm_cycles),
                            remaining.eq(remaining - 1),
                        ]
                        m.next = "MVM_WAIT"
                    with m.Else():
                        m.next = "FINISH"
            with m.State("PROGRAM"):
                m.d.comb += self.program.start.eq(1)
                m.next = "PROGRAM_WAIT"
            with m.State("PROGRAM_WAIT"):
                with m.If(~self.program.busy):
                    m.next = "FINISH"
            with m.State("FINISH"):
                with m.If(~self.counters_busy):
                    m.d.comb += [
                        ending.eq(1),
                        ending_aborted.eq(abort | abort_accepted),
                        r("STATUS", "done__set").eq(~(abort | abort_accepted)),
                    ]
                    m.d.sync += abort.eq(0)
                    m.next = "IDLE"
        m.d.comb += [
            busy.eq(~fsm.ongoing("IDLE")),
            # also while a CMD write is checked and while a command's error is being recorded,
            # so that a STATUS read right after the write sees busy until the command's outcome
            # (done, error) is visible
            r("STATUS", "busy").eq(Cat(busy, written, *command_errors).any()),
            loading.eq(fsm.ongoing("LOAD")),
        ]

        # ABORT (numerics 6): an MVM finishes the vector it is in and the one already buffered.
        # Past LOADED the buffer no longer holds the current vector, so a full buffer there is
        # a vector the MVM would take next.
        processing = Cat(fsm.ongoing(state) for state in
                         ("WINDOW", "WINDOW_WAIT", "EMIT", "EMIT_WAIT")).any()
        with m.If(abort_accepted & ~abort & ~ending):  # one that ends the command: counted there
            m.d.sync += [abort.eq(1), grace.eq(self.act_full & processing)]
        return m

    def _check(self, m: Module, regs, opcode, arg, busy) -> Signal:
        """The error code of a CMD write, NONE if the command is accepted (numerics 6)."""
        r = regs.signal
        known, bad_argument, needs_window, no_data = Signal(), Signal(), Signal(), Signal()
        row_arg = ROW_ARG(arg[:ROW_ARG.size])
        row_bad = row_arg.row >= self.geometry.rows
        with m.Switch(opcode):
            with m.Case(Command.MVM):
                m.d.comb += [bad_argument.eq(arg == 0), needs_window.eq(1)]
            with m.Case(Command.PROGRAM_ROW):
                m.d.comb += [bad_argument.eq(row_bad | (arg[ROW_ARG.size:] != 0)),
                             no_data.eq(~self.prog_staged)]
            with m.Case(Command.VERIFY_ROW):
                m.d.comb += [bad_argument.eq(row_bad | (arg[PROG_ROW_BITS:] != 0)), needs_window.eq(1)]
            with m.Case(Command.LOAD_LDPU):
                m.d.comb += [bad_argument.eq(arg != 0), no_data.eq(~self.ldpu_staged)]
            with m.Case(Command.CALIBRATE):
                m.d.comb += [bad_argument.eq(arg > CALIBRATE_MAX_LOG2), needs_window.eq(1)]
            with m.Case(Command.ABORT):
                m.d.comb += bad_argument.eq(arg != 0)
        with m.Switch(opcode):
            with m.Case(*Command):
                m.d.comb += known.eq(1)

        code = Signal(ErrorCode)
        with m.If(busy & (opcode != Command.ABORT)):
            m.d.comb += code.eq(ErrorCode.BUSY)
        with m.Elif(~known):
            m.d.comb += code.eq(ErrorCode.UNKNOWN_COMMAND)
        with m.Elif(bad_argument):
            m.d.comb += code.eq(ErrorCode.BAD_ARGUMENT)
        with m.Elif(needs_window & (r("WINDOW", "cycles") < PWM_MAX_CYCLES)):
            m.d.comb += code.eq(ErrorCode.BAD_CONFIG)
        with m.Elif(no_data):
            m.d.comb += code.eq(ErrorCode.NO_DATA)
        return code

    @staticmethod
    def _record_errors(m: Module, regs, events) -> list[Signal]:
        """Every (strobe, code, opcode) event counts; the last one raised sets ERROR_INFO. The
        events are registered first (their checks and the counter's adder are two carry chains)
        and recorded a cycle later; returns the registered strobes."""
        r = regs.signal
        info_code, info_opcode = r("ERROR_INFO", "code"), r("ERROR_INFO", "opcode")
        registered = []
        for strobe, code, opcode in events:
            event = Signal(), Signal.like(info_code), Signal.like(info_opcode)
            m.d.sync += [event[0].eq(strobe), event[1].eq(code), event[2].eq(opcode)]
            registered.append(event)
        count = r("ERROR_COUNT", "count")
        m.d.sync += count.eq(count + sum(strobe for strobe, _, _ in registered))
        for strobe, code, opcode in registered:
            with m.If(strobe):
                m.d.sync += [info_code.eq(code), info_opcode.eq(opcode)]
        m.d.comb += r("STATUS", "error__set").eq(Cat(strobe for strobe, _, _ in registered).any())
        return [strobe for strobe, _, _ in registered]

    def _statistics(self, m: Module, regs) -> None:
        """Saturation counting (numerics 3), the status flags of the blocks, irq (numerics 6)."""
        r = regs.signal
        saturations = self.saturations
        count = r("SATURATION_COUNT", "count")
        with m.If(saturations.valid):
            m.d.sync += count.eq(count + saturations.payload)
        m.d.comb += [
            r("STATUS", "saturated__set").eq(saturations.valid & (saturations.payload != 0)),
            r("STATUS", "act_ready").eq(self.act_full),
            r("STATUS", "prog_staged").eq(self.prog_staged),
            r("STATUS", "ldpu_staged").eq(self.ldpu_staged),
            self.irq.eq((r("STATUS", "done") & r("CONFIG", "irq_done"))
                        | (r("STATUS", "error") & r("CONFIG", "irq_error"))),
        ]

    @staticmethod
    def _window_step(m: Module, opcode, four_phase, calib_log2, index):
        """The command's window number `index` and the number of its windows (numerics 1, 6)."""
        step = Signal(WindowStep)
        windows = Signal(range(MAX_WINDOWS + 1))
        with m.Switch(opcode):
            with m.Case(Command.MVM):
                with m.If(four_phase):
                    m.d.comb += [step.eq(_table(FOUR_PHASE_STEPS)[index[:2]]),
                                 windows.eq(len(FOUR_PHASE_STEPS))]
                with m.Else():
                    m.d.comb += [step.eq(ONE_PHASE_STEP), windows.eq(1)]
            with m.Case(Command.VERIFY_ROW):
                m.d.comb += [step.eq(_table(VERIFY_STEPS)[index[0]]), windows.eq(len(VERIFY_STEPS))]
            with m.Case(Command.CALIBRATE):
                # 2^k DIFFERENTIAL windows with every d_i = 0 (the latch holds zeros)
                m.d.comb += [step.eq(ONE_PHASE_STEP), windows.eq(Const(1) << calib_log2)]
        return step, windows

    def _drive_blocks(self, m: Module, regs, arg, row_arg, four_phase, step) -> None:
        """The controls of the sequenced blocks that follow from the command and registers."""
        r = regs.signal
        opcode = r("STATUS", "opcode")
        m.d.comb += [
            self.window.drive.eq(step.drive),
            self.window.cycles.eq(r("WINDOW", "cycles")),
            self.tx.calib_log2.eq(arg),
            self.tx.subtract_offset.eq(~four_phase),  # numerics 4: 1-phase only
            self.tx.ldpu_shift.eq(r("LDPU_SHIFT", "shift")),
            self.tx.relu.eq(r("CONFIG", "activation") == Activation.RELU),
            self.program.row.eq(row_arg.row),
            self.program.mode.eq(row_arg.mode),
        ]
        with m.Switch(opcode):
            with m.Case(Command.MVM):  # aux = MVM_COUNT mod 2^16 before the increment
                m.d.comb += [self.tx.kind.eq(PacketType.RESULT), self.tx.aux.eq(r("MVM_COUNT", "count"))]
            with m.Case(Command.VERIFY_ROW):
                m.d.comb += [self.tx.kind.eq(PacketType.VERIFY_DATA), self.tx.aux.eq(row_arg.row)]
            with m.Case(Command.CALIBRATE):
                m.d.comb += [self.tx.kind.eq(PacketType.CALIB_DATA), self.tx.aux.eq(arg)]

    def _load_latch(self, m: Module, opcode, row, load_index, loading) -> None:
        """While `loading`, word `load_index` of the latch source is read (one cycle latency)
        and shifted into the PWM latch in the next cycle: the input buffer for MVM, the
        full-scale input on `row` for VERIFY_ROW, zeros for CALIBRATE."""
        fetched = Signal()
        fetched_index = Signal.like(load_index)
        m.d.sync += [fetched.eq(loading), fetched_index.eq(load_index)]
        lane_bits = ceil_log2(BYTES_PER_BEAT)
        verify_input = Const(VERIFY_INPUT, signed(INPUT_BITS)).as_unsigned()
        verify_word = Mux(fetched_index == row[lane_bits:], verify_input << (row[:lane_bits] * INPUT_BITS), 0)
        with m.Switch(opcode):
            with m.Case(Command.MVM):
                m.d.comb += self.window.load.payload.eq(self.act_read.data)
            with m.Case(Command.VERIFY_ROW):
                m.d.comb += self.window.load.payload.eq(verify_word)
        m.d.comb += [self.act_read.addr.eq(load_index), self.window.load.valid.eq(fetched)]


def _table(steps) -> Array:
    return Array(Value.cast(step) for step in steps)
