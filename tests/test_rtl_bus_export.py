"""Export of the chip top: port names, written files, and `verilator --lint-only -Wall` with the
reviewed waivers (rtl/lint_waivers.vlt)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cocotbext.axi.axil_channels import AxiLiteARBus, AxiLiteAWBus, AxiLiteBBus, AxiLiteRBus, AxiLiteWBus
from fake_tile import FakeTile

from pcmhil.cosim.toolchain import BuildSpec, build
from pcmhil.interface import Geometry
from pcmhil.rtl.chip import AXIL_PREFIX, AXIS_IN_PREFIX, AXIS_OUT_PREFIX
from pcmhil.rtl.export import TOPLEVEL, WAIVERS, chip_verilog, export_verilog, lint

#: Every AXI4-Stream signal our packet streams carry (cocotbext-axi knows more, all optional).
AXIS_SIGNALS = {"tdata", "tvalid", "tready", "tlast"}


def _suffixes(ports, prefix: str) -> set[str]:
    return {p.removeprefix(f"{prefix}_") for p in ports if p.startswith(f"{prefix}_")}


def test_top_level_ports_bind_every_cocotbext_axi_signal():
    """cocotbext-axi binds by name and silently skips a missing optional signal (wstrb, bresp,
    ...): the chip must offer every signal its AXI4-Lite model knows, named `s_axil_<name>`."""
    geometry = Geometry(8, 8, 3)
    header = re.search(rf"^module {TOPLEVEL}\((.*?)\);", chip_verilog(geometry, FakeTile),
                       re.MULTILINE | re.DOTALL)
    ports = {port.strip() for port in header.group(1).split(",")}
    axil = {name for bus in (AxiLiteAWBus, AxiLiteWBus, AxiLiteBBus, AxiLiteARBus, AxiLiteRBus)
            for name in (*bus._signals, *bus._optional_signals)}
    assert _suffixes(ports, AXIL_PREFIX) == axil
    assert _suffixes(ports, AXIS_IN_PREFIX) == _suffixes(ports, AXIS_OUT_PREFIX) == AXIS_SIGNALS
    assert {"clk", "rst", "irq", *(f"t{t}__win_start" for t in range(geometry.tiles))} <= ports


@pytest.mark.cosim
def test_export_of_the_bus_side_writes_its_files_and_lints_clean(tmp_path):
    """With fake tiles: the router, arbiter, AXI4-Lite slave, decoder and chip registers need no
    waiver beyond the reviewed ones, whatever the tile brings."""
    result = export_verilog(Geometry(8, 8, 3), tmp_path, tile_factory=FakeTile)
    assert result["lint_ok"], result["lint_report"]
    files = [Path(f) for f in result["files"]]
    assert [f.name for f in files] == [f"{TOPLEVEL}.v", f"{TOPLEVEL}.f", WAIVERS.name,
                                       "lint_report.txt"]
    assert all(f.parent == tmp_path and f.stat().st_size > 0 for f in files)
    assert (tmp_path / f"{TOPLEVEL}.f").read_text().split() == [f"{TOPLEVEL}.v"]
    assert f"module {TOPLEVEL}(" in (tmp_path / f"{TOPLEVEL}.v").read_text()


@pytest.mark.cosim
def test_lint_fails_on_a_warning_that_is_not_waived(tmp_path):
    """The waivers are not blanket: a truncating assignment in the top module still fails."""
    source = tmp_path / f"{TOPLEVEL}.v"
    source.write_text(f"module {TOPLEVEL}(input [7:0] a, output [3:0] y);\n"
                      "  assign y = a;\nendmodule\n")
    file_list = tmp_path / f"{TOPLEVEL}.f"
    file_list.write_text(f"{source.name}\n")
    ok, report = lint(tmp_path, file_list, WAIVERS)
    assert not ok
    assert "%Warning-WIDTHTRUNC" in report and "'a' generates 8 bits" in report


def _real_tile():
    try:
        from pcmhil.rtl.tile import Tile
    except ImportError as exc:
        pytest.skip(f"the real tile (pcmhil.rtl.tile) is not importable yet: {exc}")
    return Tile


@pytest.mark.cosim
@pytest.mark.parametrize("geometry", [
    Geometry(16, 16, 2),
    pytest.param(Geometry(256, 256, 1), marks=pytest.mark.slow),
], ids=str)
def test_export_of_the_chip_lints_clean(geometry, tmp_path):
    result = export_verilog(geometry, tmp_path, tile_factory=_real_tile())
    assert result["lint_ok"], result["lint_report"]


@pytest.mark.cosim
@pytest.mark.slow
def test_export_of_the_256x256_chip_builds_under_verilator(tmp_path):
    """Issue 4's bar: the exported full-size chip top also compiles into a simulation."""
    export_verilog(Geometry(256, 256, 1), tmp_path, tile_factory=_real_tile())
    verilog = {f"{TOPLEVEL}.v": (tmp_path / f"{TOPLEVEL}.v").read_text()}
    assert build(BuildSpec(toplevel=TOPLEVEL, verilog=verilog)).executable.exists()
