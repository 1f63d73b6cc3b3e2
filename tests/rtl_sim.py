"""Running Amaranth simulations of RTL blocks in tests."""

from __future__ import annotations

from amaranth.sim import Simulator

CLOCK_PERIOD_S = 1e-8


def simulate(dut, *benches, background=()) -> None:
    """Run async testbenches on `dut` with one clock, in parallel with `background` ones; the
    simulation ends when every (foreground) testbench has returned."""
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD_S)
    for bench in benches:
        sim.add_testbench(bench)
    for bench in background:
        sim.add_testbench(bench, background=True)
    sim.run()
