"""The chip's bus side under cocotb + Verilator with cocotbext-axi bus models.

The chip top is built with fake tiles (fake_tile.py), so these tests need nothing from the
real tile; what each bench test proves is in its docstring (benches/chip_bus_bench.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benches.chip_bus_bench import GEOMETRY_ENV
from fake_tile import FakeTile

from pcmhil.cosim.toolchain import BuildSpec, build, run_cocotb
from pcmhil.interface import Geometry
from pcmhil.rtl.export import TOPLEVEL, chip_verilog

BENCHES = Path(__file__).parent / "benches"
BENCH_MODULE = "chip_bus_bench"
GEOMETRY = Geometry(8, 8, 2)
BENCH_TESTS = (
    "register_map_decode",
    "register_writes",
    "irq_summary",
    "axil_handshakes_under_backpressure",
    "stream_routing_under_backpressure",
    "stream_errors",
)

pytestmark = pytest.mark.cosim


@pytest.fixture(scope="module")
def chip_build():
    verilog = chip_verilog(GEOMETRY, tile_factory=FakeTile)
    return build(BuildSpec(toplevel=TOPLEVEL, verilog={f"{TOPLEVEL}.v": verilog}))


@pytest.mark.parametrize("testcase", BENCH_TESTS)
def test_chip_bus(chip_build, testcase, tmp_path):
    geometry = f"{GEOMETRY.rows},{GEOMETRY.cols},{GEOMETRY.tiles}"
    run = run_cocotb(chip_build, BENCH_MODULE, tmp_path, testcase=testcase, timeout_s=120,
                     python_path=[BENCHES], extra_env={GEOMETRY_ENV: geometry})
    log = run.log_file.read_text(errors="replace")[-4000:] if run.log_file.exists() else ""
    assert run.ok and run.tests == 1, f"{testcase}: {run.failed} of {run.tests} failed\n{log}"
