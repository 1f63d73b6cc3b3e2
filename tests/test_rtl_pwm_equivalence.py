"""The PWM driver against the one it replaced, cycle for cycle: `_ReferencePwmDriver` is the
driver as it was before its control was rebuilt for timing (one FSM whose state decode fed the
row datapath and the window strobes). Both run side by side in Amaranth's simulator on the same
random controller traffic (latch loads at any time, starts while idle and while busy, back to
back, random drive fields, window lengths 0 .. 4095 with the edge cases) and every output the
boundary, the ADC counters and the controller see must be equal in every cycle."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth import Cat, Module, Mux, Signal
from rtl_sim import simulate

from pcmhil.interface import BUS_DATA_BITS, INPUT_BITS, PWM_MAX_CYCLES, WINDOW_BITS, Geometry
from pcmhil.rtl.pwm import MAG_BITS, DriveWindow, PwmDriver, boundary_words


class _ReferencePwmDriver(PwmDriver):
    """The PWM driver before the timing rework (same signature), kept verbatim as the spec."""

    def elaborate(self, platform):
        m = Module()
        rows = self.geometry.rows
        control = self.control
        latch = Signal(rows * INPUT_BITS)
        with m.If(control.load.valid):
            m.d.sync += latch.eq(Cat(latch[BUS_DATA_BITS:], control.load.payload))

        drive = Signal(DriveWindow)
        mag = Signal(rows * MAG_BITS)
        neg = Signal(rows)
        en = Signal(rows)
        upcoming = Signal(MAG_BITS)
        remaining = Signal(WINDOW_BITS)
        durations = [mag[i * MAG_BITS:(i + 1) * MAG_BITS] for i in range(rows)]
        conducts_next = Cat(en[i] & (drive.full | (upcoming != d)) for i, d in enumerate(durations))
        next_active, next_last = Signal(), Signal()
        m.d.comb += [next_active.eq(self.win_active), next_last.eq(self.last)]
        m.d.sync += [
            self.win_active.eq(next_active),
            self.last.eq(next_last),
            self.count_enable.eq(Mux(self.boundary_mode, next_last, next_active)),
        ]
        boundary_words(m, self.drive_en, en)
        boundary_words(m, self.drive_neg, neg)
        boundary_words(m, self.drive_mag, mag)

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
                    mag.eq(Cat(self._reference_duration(latch, i, drive) for i in range(rows))),
                    neg.eq(Cat(self._reference_negative(latch, i, drive) for i in range(rows))),
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
                m.d.comb += [next_active.eq(1), next_last.eq(self.win_cycles <= 1)]
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
    def _reference_duration(latch, i, drive):
        x = latch[i * INPUT_BITS:(i + 1) * INPUT_BITS].as_signed()
        conducts = Mux(x > 0, drive.positive, Mux(x < 0, drive.negative, 0))
        return Mux(conducts, abs(x), 0)[:MAG_BITS]

    @staticmethod
    def _reference_negative(latch, i, drive):
        return drive.bipolar & (latch[i * INPUT_BITS:(i + 1) * INPUT_BITS].as_signed() < 0)


#: Inputs the controller (and the analog side's boundary_mode) drives, outputs compared.
INPUTS = ("control.load.valid", "control.load.payload", "control.start", "control.drive",
          "control.cycles", "boundary_mode")
OUTPUTS = ("control.busy", "setup", "last", "count_enable", "win_start", "win_active", "win_select",
           "win_cycles", "win_full", "drive_en", "drive_neg", "drive_mag")
#: Window lengths around every boundary of the window logic: 0 and 1 (one-cycle windows), the
#: PWM range, the 8-bit `c + 1` wrapping at 256; rarer long ones up to the 12-bit register's end.
EDGE_CYCLES = (0, 1, 2, 3, 4, 127, 128, 129, 254, 255, 256, 257)
LONG_CYCLES = (511, 2**WINDOW_BITS - 1)


def _port(dut, path: str):
    for name in path.split("."):
        dut = getattr(dut, name)
    return dut


def _values(ctx, dut) -> dict:
    values = {}
    for path in OUTPUTS:
        port = _port(dut, path)
        values[path] = [ctx.get(w) for w in port] if isinstance(port, list) else ctx.get(port)
    return values


def _random_inputs(rng: np.random.Generator, geometry: Geometry, mode: str) -> dict:
    """One cycle of controller traffic. `mode` says how boundary_mode behaves (0, 1, or
    'toggle': random every cycle, beyond the contract's static mode, to pin the exact gate)."""
    roll = rng.random()
    if roll < 0.4:
        cycles = int(rng.choice(EDGE_CYCLES))
    elif roll < 0.7:
        cycles = int(rng.integers(0, 17))
    elif roll < 0.99:
        cycles = int(rng.integers(1, 256))
    elif roll < 0.995:
        cycles = int(rng.choice(LONG_CYCLES))
    else:
        cycles = int(rng.integers(0, 2**WINDOW_BITS))
    return {
        "control.load.valid": int(rng.random() < 0.3),
        "control.load.payload": int(rng.integers(0, 2**BUS_DATA_BITS)),
        "control.start": int(rng.random() < 0.6),
        "control.drive": {"select": int(rng.integers(0, 3)), "positive": int(rng.integers(0, 2)),
                          "negative": int(rng.integers(0, 2)), "bipolar": int(rng.integers(0, 2)),
                          "full": int(rng.random() < 0.25)},
        "control.cycles": cycles,
        "boundary_mode": int(rng.integers(0, 2)) if mode == "toggle" else int(mode),
    }


def _run_side_by_side(geometry: Geometry, seed: int, n_cycles: int, mode: str) -> dict:
    """Drive both drivers with the same random traffic; return how often each output was seen
    high / each kind of window ran, so the test can check the traffic covered what it claims."""
    m = Module()
    m.submodules.reference = reference = _ReferencePwmDriver(geometry)
    m.submodules.rebuilt = rebuilt = PwmDriver(geometry)
    rng = np.random.default_rng(seed)
    seen = {"windows": 0, "full_windows": 0, "window_cycles": set(), "back_to_back": 0,
            "count_enable": 0}

    async def bench(ctx):
        was_busy = False
        for cycle in range(n_cycles):
            inputs = _random_inputs(rng, geometry, mode)
            for path, value in inputs.items():
                ctx.set(_port(reference, path), value)
                ctx.set(_port(rebuilt, path), value)
            want, got = _values(ctx, reference), _values(ctx, rebuilt)
            assert got == want, (f"cycle {cycle} (seed {seed}, mode {mode}): "
                                 f"{ {k: (want[k], got[k]) for k in want if want[k] != got[k]} }")
            if want["win_start"]:
                seen["windows"] += 1
                seen["full_windows"] += want["win_full"]
                seen["window_cycles"].add(want["win_cycles"])
            # a start in the first idle cycle after a window
            seen["back_to_back"] += was_busy and not want["control.busy"] and inputs["control.start"]
            seen["count_enable"] += want["count_enable"]
            was_busy = want["control.busy"]
            await ctx.tick()

    simulate(m, bench)
    return seen


@pytest.mark.parametrize(("geometry", "mode", "seed"), [
    (Geometry(rows=12, cols=4), "0", 1),
    (Geometry(rows=12, cols=4), "1", 2),
    (Geometry(rows=12, cols=4), "toggle", 3),
    (Geometry(rows=72, cols=4), "0", 4),  # two drive_en words, the second one padded
])
def test_rebuilt_driver_equals_the_reference_every_cycle(geometry, mode, seed):
    seen = _run_side_by_side(geometry, seed, n_cycles=8000, mode=mode)
    # the traffic ran many windows of the lengths that matter, full ones and back-to-back ones
    assert seen["windows"] >= 60 and seen["full_windows"] >= 10 and seen["back_to_back"] >= 25, seen
    assert {0, 1, 2, PWM_MAX_CYCLES, 255, 256, 257} <= seen["window_cycles"], seen
    assert seen["count_enable"] > 0
