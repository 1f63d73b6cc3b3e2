"""A cocotb bench that must fail: proves a failing simulation is reported as a failure."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles


@cocotb.test()
async def total_is_never_seven(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await ClockCycles(dut.clk, 2)
    assert int(dut.total.value) == 7, "deliberate failure"
