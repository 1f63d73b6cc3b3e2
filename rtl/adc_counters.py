"""ADC counters: one saturating counter per column (docs/numerics.md section 3), fed by the CCO
front end in either boundary mode (section 2), with per-window saturation counting.

- cycle mode: the count is cleared as a window starts (at e_0) and adds each cycle's pulses at
  the end of the cycle (e_{c+1});
- transaction mode: the count loads the window's cco_count at the end of its last cycle (e_W).
A column-window saturates when the unclamped value exceeds COUNTER_MAX; the number of saturated
columns of each window is summed by a pipelined adder tree after the window.

After a window the counts stay until the next one starts.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from pcmhil.interface import (
    BOUNDARY_WORD_BITS,
    CCO_COUNT_LANE_BITS,
    CCO_PULSE_BITS,
    COUNTER_BITS,
    BoundaryLayout,
    Geometry,
)

#: Values summed per stage of the saturation adder tree (a short carry chain per stage).
TREE_FAN_IN = 4


def pipelined_sum(m: Module, bits, valid) -> tuple[Signal, Signal, list[Signal]]:
    """The number of ones of `bits` (sampled when `valid`), summed in registered stages of
    TREE_FAN_IN-input adders, each stage exactly as wide as its largest sum.

    Returns (sum, sum_valid, the valid flag of every stage)."""
    values = [(bit, 1) for bit in bits]  # (value, the largest value it can take)
    stages = []
    while True:
        level = len(stages)
        registers = []
        for k in range(0, len(values), TREE_FAN_IN):
            chunk = values[k:k + TREE_FAN_IN]
            largest = sum(top for _, top in chunk)
            register = Signal(range(largest + 1), name=f"tree{level}_{k // TREE_FAN_IN}")
            m.d.sync += register.eq(sum(value for value, _ in chunk))
            registers.append((register, largest))
        stage_valid = Signal(name=f"tree{level}_valid")
        m.d.sync += stage_valid.eq(valid)
        stages.append(stage_valid)
        values, valid = registers, stage_valid
        if len(values) == 1:
            return values[0][0], valid, stages


class AdcCounters(wiring.Component):
    """cco_pulses/cco_count/boundary_mode: from the analog side; setup/count_enable/last: the PWM
    driver's window timing (setup: the cycle before cycle 0; count_enable: take a value at the
    end of this cycle; last: the window's last cycle); counts: every column's count;
    saturations: the number of saturated columns of each window; busy: a saturation sum is in
    flight."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        lay = BoundaryLayout(geometry)
        cols = geometry.cols
        super().__init__({
            "cco_pulses": In(BOUNDARY_WORD_BITS).array(lay.pulse_words),
            "cco_count": In(BOUNDARY_WORD_BITS).array(lay.count_words),
            "boundary_mode": In(1),
            "setup": In(1),
            "count_enable": In(1),
            "last": In(1),
            "counts": Out(data.ArrayLayout(COUNTER_BITS, cols)),
            "saturations": Out(stream.Signature(range(cols + 1), always_ready=True)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cols = self.geometry.cols
        pulses = Cat(*self.cco_pulses)
        lanes = Cat(*self.cco_count)
        cycle_mode = ~self.boundary_mode
        # cycle mode counts every window cycle, transaction mode loads at the last one (the PWM
        # driver's register, as it enables every column's counter)
        update = self.count_enable
        saturated = Signal(cols)  # per column, in the current (or last) window

        for j in range(cols):
            count = self.counts[j]
            lane = lanes[j * CCO_COUNT_LANE_BITS:(j + 1) * CCO_COUNT_LANE_BITS]
            total = count + pulses[j * CCO_PULSE_BITS:(j + 1) * CCO_PULSE_BITS]
            # the unclamped value exceeds COUNTER_MAX: a carry out of the counter's bits
            over = Mux(cycle_mode, total[COUNTER_BITS:] != 0, lane[COUNTER_BITS:] != 0)
            value = Mux(cycle_mode, total[:COUNTER_BITS], lane[:COUNTER_BITS])
            with m.If(self.setup):  # a synchronous clear: the flip-flops' own reset input
                m.d.sync += [count.eq(0), saturated[j].eq(0)]
            with m.Elif(update):
                m.d.sync += [
                    count.eq(value | over.replicate(COUNTER_BITS)),  # COUNTER_MAX if over
                    saturated[j].eq(saturated[j] | over),
                ]

        ended = Signal()  # the cycle after a window: every column's flag is final
        m.d.sync += ended.eq(self.last)
        total, total_valid, stages = pipelined_sum(m, saturated, ended)
        m.d.comb += [
            self.saturations.payload.eq(total),
            self.saturations.valid.eq(total_valid),
            self.busy.eq(Cat(ended, *stages).any()),
        ]
        return m
