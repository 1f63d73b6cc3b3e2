"""`pcmhil doctor`: prove the toolchain end to end and say how long each step took."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class DoctorReport:
    versions: dict[str, str | None] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    build_cached: bool | None = None

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    def as_json(self) -> dict:
        return {
            "ok": self.ok,
            "versions": self.versions,
            "steps": [{"name": s.name, "ok": s.ok, "seconds": round(s.seconds, 3)}
                      for s in self.steps],
            "build_cached": self.build_cached,
            "errors": {s.name: s.detail for s in self.steps if not s.ok},
        }


def run_doctor(progress: Callable[[str], None] = lambda _msg: None) -> DoctorReport:
    """Run every step; a failing step stops the ones that depend on it and is reported."""
    from pcmhil.cosim import smoke, toolchain

    report = DoctorReport()

    def step(name: str, action: Callable[[], str | None]) -> bool:
        progress(f"{name} ...")
        start = time.perf_counter()
        try:
            detail = action() or ""
            ok = True
        except Exception as exc:  # reported, not raised: doctor's job is to diagnose
            detail, ok = f"{type(exc).__name__}: {exc}", False
        report.steps.append(Step(name, ok, time.perf_counter() - start, detail))
        progress(f"{name}: {'ok' if ok else 'FAILED'} ({report.steps[-1].seconds:.2f} s)"
                 + (f" {detail}" if detail else ""))
        return ok

    def versions() -> str | None:
        report.versions = toolchain.tool_versions()
        missing = [name for name, version in report.versions.items() if version is None]
        if missing:
            raise RuntimeError(f"not found: {', '.join(missing)}")
        return None

    state: dict = {}

    def host_tools() -> None:
        toolchain.check_host_tools()
        toolchain.configure_environment()

    def generate() -> str:
        state["spec"] = smoke.smoke_build_spec()
        return f"{sum(t.count(chr(10)) for t in state['spec'].verilog.values())} lines of Verilog"

    def build() -> str:
        built = toolchain.build(state["spec"])
        state["build"] = built
        report.build_cached = built.cached
        return ("reused cached build" if built.cached else "built") + f" in {built.build_dir}"

    def simulate() -> str:
        with tempfile.TemporaryDirectory(prefix="pcmhil-doctor-") as tmp:
            run = toolchain.run_cocotb(state["build"], "pcmhil.cosim.smoke_bench", Path(tmp),
                                       timeout_s=120)
            if not run.ok:
                raise RuntimeError(f"{run.failed} of {run.tests} cocotb tests failed; "
                                   f"{run.log_file.read_text(errors='replace')[-2000:]}")
        return f"{run.tests} cocotb test passed"

    step("versions", versions)
    if step("host-tools", host_tools) and step("amaranth-verilog", generate):
        if step("verilator-build", build):
            step("cocotb-simulation", simulate)
    return report


def format_report(report: DoctorReport) -> str:
    lines = ["pcmhil doctor", ""]
    width = max(len(k) for k in report.versions) if report.versions else 8
    for name, version in report.versions.items():
        lines.append(f"  {name:<{width}}  {version or 'NOT FOUND'}")
    lines.append("")
    for s in report.steps:
        lines.append(f"  [{'ok' if s.ok else 'FAIL':>4}] {s.name:<18} {s.seconds:7.2f} s  {s.detail}")
    lines.append("")
    lines.append("doctor: OK" if report.ok else "doctor: FAILED")
    return "\n".join(lines)
