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

        drive = Signal(DriveWindow)  # of the current window
        mag = Signal(rows * MAG_BITS)  # d_i of the current window
        neg = Signal(rows)
        en = Signal(rows)
        upcoming = Signal(MAG_BITS)  # c + 1, wrapping: it only matters while a row conducts
        remaining = Signal(WINDOW_BITS)  # cycles of the window after this one: W - 1 - c
        durations = [mag[i * MAG_BITS:(i + 1) * MAG_BITS] for i in range(rows)]
        # drive_en of the next cycle, c + 1 < d_i, registered so that it is stable for cycle c + 1.
        # With c < d_i known (en_i) and c rising by one, that is c + 1 != d_i: an equality per
        # row instead of a comparator. d_i <= PWM_MAX_CYCLES < 2**MAG_BITS, so the low bits do.
        # In a full window (VERIFY_ROW) a conducting row stays on until the window ends.
        conducts_next = Cat(en[i] & (drive.full | (upcoming != d)) for i, d in enumerate(durations))
        next_active, next_last = Signal(), Signal()  # win_active and last of the next cycle
        m.d.comb += [next_active.eq(self.win_active), next_last.eq(self.last)]  # by default held
        m.d.sync += [
            self.win_active.eq(next_active),
            self.last.eq(next_last),
            self.count_enable.eq(Mux(self.boundary_mode, next_last, next_active)),
        ]
        boundary_words(m, self.drive_en, en)
        boundary_words(m, self.drive_neg, neg)
        boundary_words(m, self.drive_mag, mag)

        # Every signal that fans out to all rows or columns comes straight from a register: the
        # window's drive is registered before the durations are computed from it, and `last`
        # and `setup` and `count_enable` (which reach every column's counter) are computed a
        # cycle ahead.
        with m.FSM():
            with m.State("IDLE"):
                with m.If(control.start):
                    m.d.sync += [
                        drive.eq(control.drive),
                        self.win_select.eq(control.drive.select),
                        self.win_cycles.eq(control.cycles),
                        self.win_full.eq(control.drive.full),
                    ]
                    m.next = "PREPARE"
            with m.State("PREPARE"):
                m.d.comb += control.busy.eq(1)
                m.d.sync += [
                    mag.eq(Cat(self._duration(latch, i, drive) for i in range(rows))),
                    neg.eq(Cat(self._negative(latch, i, drive) for i in range(rows))),
                    self.setup.eq(1),
                ]
                m.next = "SETUP"
            with m.State("SETUP"):
                m.d.comb += control.busy.eq(1)
                m.d.sync += [
                    self.setup.eq(0),
                    self.win_start.eq(1),
                    upcoming.eq(1),
                    remaining.eq(self.win_cycles - 1),
                    en.eq(Cat(d != 0 for d in durations)),
                ]
                m.d.comb += [
                    next_active.eq(1),
                    # a window lasts at least one cycle even if WINDOW was written 0 after the
                    # command's check
                    next_last.eq(self.win_cycles <= 1),
                ]
                m.next = "WINDOW"
            with m.State("WINDOW"):
                m.d.comb += control.busy.eq(1)
                m.d.sync += [
                    self.win_start.eq(0),
                    upcoming.eq(upcoming + 1),
                    remaining.eq(remaining - 1),
                    en.eq(conducts_next),
                ]
                m.d.comb += next_last.eq(remaining == 1)
                with m.If(self.last):
                    m.d.sync += en.eq(0)
                    m.d.comb += [next_active.eq(0), next_last.eq(0)]
                    m.next = "IDLE"
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
