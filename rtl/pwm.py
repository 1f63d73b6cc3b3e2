"""PWM row drivers: the activation latch and the window sequencer that drives the analog
boundary (docs/numerics.md sections 1 and 2).

Each input x_i becomes a duration d_i = |x_i| (or 0 if its sign does not conduct in this
window) and a read polarity. A window is W cycles c = 0 .. W-1 and row i conducts in cycle c iff
c < d_i. Every boundary output is a register: `start` in cycle t latches the window's drive,
device select and W, the durations and polarities follow, and cycle 0 of the window is t + 3.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import (
    BOUNDARY_WORD_BITS,
    BUS_DATA_BITS,
    INPUT_BITS,
    WINDOW_BITS,
    BoundaryLayout,
    DeviceSelect,
    Geometry,
)

#: Bits of one row's latched duration on drive_mag (a byte per row, BoundaryLayout).
MAG_BITS = 8
#: Cycle 0 of a window comes this many cycles after the cycle of its `start`.
START_LATENCY = 3


class DriveWindow(data.Struct):
    """What one window drives (numerics 1): which input signs conduct and with what polarity."""

    select: DeviceSelect
    positive: 1  # rows with x > 0 conduct for |x| cycles
    negative: 1  # rows with x < 0 conduct for |x| cycles
    bipolar: 1  # read polarity = input sign (1-phase); else every current is unipolar
    full: 1  # VERIFY_ROW: a conducting row conducts for the whole window, not |x| cycles


class WindowControl(wiring.Signature):
    """The controller's side of the PWM driver.

    load: one latch word per transfer (rows 4k .. 4k+3 of the vector, k = 0, 1, ... in order);
    start: run one window of `drive` lasting `cycles`; busy: from the cycle after `start` until
    the window's last cycle.
    """

    def __init__(self):
        super().__init__({
            "load": Out(stream.Signature(BUS_DATA_BITS, always_ready=True)),
            "start": Out(1),
            "drive": Out(DriveWindow),
            "cycles": Out(WINDOW_BITS),
            "busy": In(1),
        })


def strobe_copy(m: Module, name: str, strobe) -> Signal:
    """`strobe` of the previous cycle from a flip-flop of its own. Yosys merges flip-flops with
    equal inputs (opt_merge; a `keep` on the signal does not stop it), so this one's input reads
    its own output: `strobe & ~copy` equals `strobe` because a strobe is never high in two
    consecutive cycles, and no other flip-flop computes it."""
    copy = Signal(name=name)
    m.d.sync += copy.eq(strobe & ~copy)
    return copy


def boundary_words(m: Module, words, vector) -> None:
    """Drive a list of 64-bit boundary words from a flat vector (pad bits 0)."""
    for k, word in enumerate(words):
        m.d.comb += word.eq(vector[k * BOUNDARY_WORD_BITS:(k + 1) * BOUNDARY_WORD_BITS])


class PwmDriver(wiring.Component):
    """control: from the controller; setup: the cycle before a window's cycle 0 (the ADC counters
    restart at its end); last: the window's last cycle (c = W-1, the counters load at its end);
    boundary_mode: the analog side's (static); count_enable: the ADC counters take a value at the
    end of this cycle (every window cycle in cycle mode, the last in transaction mode); the rest:
    the digital -> analog drive ports of AnalogBoundary."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        lay = BoundaryLayout(geometry)
        super().__init__({
            "control": In(WindowControl()),
            "setup": Out(1),
            "last": Out(1),
            "boundary_mode": In(1),
            "count_enable": Out(1),
            "win_start": Out(1),
            "win_active": Out(1),
            "win_select": Out(DeviceSelect),
            "win_cycles": Out(WINDOW_BITS),
            "win_full": Out(1),
            "drive_en": Out(BOUNDARY_WORD_BITS).array(lay.drive_words),
            "drive_neg": Out(BOUNDARY_WORD_BITS).array(lay.drive_words),
            "drive_mag": Out(BOUNDARY_WORD_BITS).array(lay.mag_words),
        })

    def elaborate(self, platform):
        m = Module()
        rows = self.geometry.rows
        control = self.control
        latch = Signal(rows * INPUT_BITS)
        with m.If(control.load.valid):
            m.d.sync += latch.eq(Cat(latch[BUS_DATA_BITS:], control.load.payload))

        # The window's steps are plain registers, not an FSM whose state decode would sit
        # between a register and the 256 columns' counters or the 2,000+ row flip-flops:
        # `prepare` (the cycle after an accepted start: the drive is computed), `setup`, then
        # win_active in cycles 0 .. W-1 with `last` in cycle W-1. `going` is win_active and
        # `ends` is last of the next cycle, the latter from `left` (the window cycles after this
        # one: W in the setup cycle), so win_active, last and count_enable are each one gate
        # away from a few registers. busy is high from `prepare` to `last`.
        prepare = Signal()
        going = Signal()
        ends = Signal()
        left = Signal(WINDOW_BITS)
        drive = Signal(DriveWindow)  # of the current window
        busy = prepare | going | self.last
        accept = control.start & ~busy
        m.d.comb += control.busy.eq(busy)
        m.d.sync += [
            prepare.eq(accept),
            self.setup.eq(prepare),
            self.win_start.eq(self.setup),
            going.eq(prepare | (going & ~ends)),
            self.win_active.eq(going),
            self.last.eq(ends),
            self.count_enable.eq(Mux(self.boundary_mode, ends, going)),
        ]
        with m.If(accept):
            m.d.sync += [
                drive.eq(control.drive),
                self.win_select.eq(control.drive.select),
                self.win_cycles.eq(control.cycles),
                self.win_full.eq(control.drive.full),
            ]
        with m.If(prepare):
            # a window lasts at least one cycle even if WINDOW was written 0 after the command's
            # check (`left` is then not used)
            m.d.sync += [left.eq(self.win_cycles), ends.eq(self.win_cycles <= 1)]
        with m.Else():
            m.d.sync += [left.eq(left - going), ends.eq(going & (left == 2))]

        # The rows read their own copies of the strobes (loading: the prepare cycle; arming: the
        # setup cycle; stopping: the last cycle), so that the registers above stay few and close
        # together instead of being pulled towards the rows' flip-flops.
        loading = strobe_copy(m, "loading", accept)  # == prepare
        arming = strobe_copy(m, "arming", prepare)  # == setup
        stopping = strobe_copy(m, "stopping", ends)  # == last
        mag = Signal(rows * MAG_BITS)  # d_i of the current window
        neg = Signal(rows)
        en = Signal(rows)
        with m.If(loading):  # from the registered drive: its fields reach every row
            m.d.sync += [
                mag.eq(Cat(self._duration(latch, i, drive) for i in range(rows))),
                neg.eq(Cat(self._negative(latch, i, drive) for i in range(rows))),
            ]
        # drive_en of the next cycle, registered so that it is stable for that cycle. `upcoming`
        # is c + 1 (wrapping; 0 in the setup cycle, c = -1): with c < d_i known (en_i) and c
        # rising by one, c + 1 < d_i is c + 1 != d_i, an equality per row instead of a
        # comparator (d_i <= PWM_MAX_CYCLES < 2**MAG_BITS, so the low bits do). The setup cycle
        # arms every row, c + 1 = 0 != d_i leaves the rows with d_i > 0; in a full window
        # (VERIFY_ROW, `sustain`) an armed row conducts until the window ends.
        upcoming = Signal(MAG_BITS)
        sustain = Signal()
        m.d.sync += [
            upcoming.eq(Mux(going, upcoming + 1, 0)),
            sustain.eq(going & drive.full),
        ]
        durations = [mag[i * MAG_BITS:(i + 1) * MAG_BITS] for i in range(rows)]
        m.d.sync += en.eq(Cat((en[i] | arming) & ~stopping & (sustain | (upcoming != d))
                              for i, d in enumerate(durations)))
        boundary_words(m, self.drive_en, en)
        boundary_words(m, self.drive_neg, neg)
        boundary_words(m, self.drive_mag, mag)
        return m

    @staticmethod
    def _input(latch, i):
        return latch[i * INPUT_BITS:(i + 1) * INPUT_BITS].as_signed()

    def _duration(self, latch, i, drive):
        """d_i (numerics 1): |x_i| if the sign of x_i conducts in this window, else 0."""
        x = self._input(latch, i)
        conducts = Mux(x > 0, drive.positive, Mux(x < 0, drive.negative, 0))
        return Mux(conducts, abs(x), 0)[:MAG_BITS]

    def _negative(self, latch, i, drive):
        """drive_neg_i (numerics 1): the input's sign in 1-phase, 0 for unipolar windows."""
        return drive.bipolar & (self._input(latch, i) < 0)
