"""One tile: the digital periphery of a HERMES-like core around its analog crossbar.

    rx -> TileRx -> InputBuffer -----------------> Controller (registers, command FSM) -> irq
                 -> StagingStore (PROGRAM_DATA) --> RowProgrammer -----> analog prog_*
                 -> StagingStore (LDPU_PARAMS) -------------------.
    Controller -> PwmDriver (latch, windows) ---------------------|----> analog win_*, drive_*
    analog cco_* -> AdcCounters -> RawAccumulator -> TileTx (LDPU) <-'  -> OutputBuffer -> tx

docs/numerics.md is the contract of every block; pcmhil.interface defines every width and code.
"""

from amaranth import Module
from amaranth.lib import wiring

from pcmhil.interface import LDPU_LANES, Geometry, PacketType, packet_payload_beats
from pcmhil.rtl.adc_counters import AdcCounters
from pcmhil.rtl.controller import Controller
from pcmhil.rtl.input_buffer import InputBuffer
from pcmhil.rtl.ldpu import LdpuParams
from pcmhil.rtl.output_buffer import OutputBuffer
from pcmhil.rtl.pwm import PwmDriver
from pcmhil.rtl.raw_accumulator import RawAccumulator
from pcmhil.rtl.row_programmer import ProgramWords, RowProgrammer
from pcmhil.rtl.signatures import tile_signature
from pcmhil.rtl.staging import StagingStore
from pcmhil.rtl.tile_rx import TileRx
from pcmhil.rtl.tile_tx import TileTx

#: Boundary ports driven by the PWM driver, by the row programmer, and read by the counters.
PWM_PORTS = ("win_start", "win_active", "win_select", "win_cycles", "win_full", "drive_en", "drive_neg",
             "drive_mag")
PROGRAM_PORTS = ("prog_valid", "prog_index", "prog_data", "prog_commit", "prog_row", "prog_mode")
COUNTER_PORTS = ("cco_pulses", "cco_count", "boundary_mode")


def _forward(m: Module, destination, source, names) -> None:
    """destination.name = source.name for each name (word arrays element by element)."""
    for name in names:
        dst, src = getattr(destination, name), getattr(source, name)
        pairs = zip(dst, src, strict=True) if isinstance(dst, list) else [(dst, src)]
        m.d.comb += [d.eq(s) for d, s in pairs]


class Tile(wiring.Component):
    """csr: the tile's registers (tile_registers offsets); rx: its input packets (type and tile
    already checked by the router); tx: its output packets; analog: the mixed-signal boundary;
    irq: (done and irq_done) or (error and irq_error)."""

    def __init__(self, geometry: Geometry, tile_index: int):
        self.geometry, self.tile_index = geometry, tile_index
        super().__init__(tile_signature(geometry))

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        m.submodules.rx = rx = TileRx(g)
        m.submodules.input_buffer = act = InputBuffer(g)
        m.submodules.program_staging = prog = StagingStore(
            packet_payload_beats(PacketType.PROGRAM_DATA, g), lanes=1, chunk=ProgramWords.elem_shape)
        m.submodules.ldpu_staging = params = StagingStore(
            packet_payload_beats(PacketType.LDPU_PARAMS, g), lanes=LDPU_LANES, chunk=LdpuParams)
        m.submodules.controller = ctrl = Controller(g)
        m.submodules.pwm = pwm = PwmDriver(g)
        m.submodules.counters = counters = AdcCounters(g)
        m.submodules.accumulator = acc = RawAccumulator(g)
        m.submodules.programmer = programmer = RowProgrammer(g)
        m.submodules.tx = tx = TileTx(g, self.tile_index)
        m.submodules.output_buffer = out = OutputBuffer(g)

        # packets in
        wiring.connect(m, wiring.flipped(self.rx), rx.rx)
        wiring.connect(m, rx.act, act.sink)
        wiring.connect(m, rx.prog, prog.sink)
        wiring.connect(m, rx.ldpu, params.sink)
        m.d.comb += [rx.act_full.eq(act.full), ctrl.packet_error.eq(rx.error)]

        # registers and command sequencing
        wiring.connect(m, wiring.flipped(self.csr), ctrl.csr)
        wiring.connect(m, ctrl.act_read, act.read)
        wiring.connect(m, ctrl.window, pwm.control)
        wiring.connect(m, ctrl.combine, acc.control)
        wiring.connect(m, ctrl.tx, tx.control)
        wiring.connect(m, ctrl.program, programmer.control)
        wiring.connect(m, ctrl.saturations, counters.saturations)
        wiring.connect(m, programmer.words, prog.read)
        m.d.comb += [
            self.irq.eq(ctrl.irq),
            act.release.eq(ctrl.act_release),
            ctrl.act_full.eq(act.full),
            ctrl.prog_staged.eq(prog.staged),
            prog.consume.eq(ctrl.prog_consume),
            ctrl.ldpu_staged.eq(params.staged),
            params.consume.eq(ctrl.ldpu_consume),
            ctrl.counters_busy.eq(counters.busy),
        ]

        # analog boundary
        _forward(m, self.analog, pwm, PWM_PORTS)
        _forward(m, self.analog, programmer, PROGRAM_PORTS)
        _forward(m, counters, self.analog, COUNTER_PORTS)
        m.d.comb += [
            counters.setup.eq(pwm.setup),
            counters.count_enable.eq(pwm.count_enable),
            counters.last.eq(pwm.last),
            pwm.boundary_mode.eq(self.analog.boundary_mode),
        ]

        # column values out
        m.d.comb += [
            acc.counts.eq(counters.counts),
            acc.last.eq(pwm.last),
            tx.acc.eq(acc.values),
            tx.counts.eq(counters.counts),
        ]
        wiring.connect(m, tx.params, params.read)
        m.d.comb += tx.params_loaded.eq(params.loaded)
        wiring.connect(m, tx.out, out.sink)
        m.d.comb += tx.room.eq(out.room)
        wiring.connect(m, out.tx, wiring.flipped(self.tx))
        return m
