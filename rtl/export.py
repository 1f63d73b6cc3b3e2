"""Export the chip top as Verilog and lint it (the core of `pcmhil export`).

`export_verilog` writes into the output folder:
- `pcmhil_chip.v`: the chip top and all its modules (Amaranth -> Yosys write_verilog). The
  module is not called `pcmhil` or `chip`, so no port shares its name (Verilator rejects that);
- `pcmhil_chip.f`: the file list of the Verilog sources, paths relative to the folder;
- `lint_waivers.vlt`: the reviewed Verilator waivers (a copy of rtl/lint_waivers.vlt);
- `lint_report.txt`: the output of `verilator --lint-only -Wall` with those waivers.

FPGA targets (synthesis and place-and-route reports) are meant to be added beside the lint step
as further outputs of the same folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from amaranth.back import verilog

from pcmhil.cosim.toolchain import configure_environment, verilator_root
from pcmhil.errors import ToolchainError
from pcmhil.interface import Geometry
from pcmhil.rtl.chip import Chip

TOPLEVEL = "pcmhil_chip"
WAIVERS = Path(__file__).with_name("lint_waivers.vlt")
#: A 256x256 chip lints in well under a minute here; this only stops a hung tool.
LINT_TIMEOUT_S = 900


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
