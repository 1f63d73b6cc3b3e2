"""Host side of the co-simulation: a Transport whose chip is RTL in Verilator, in its own process.

The simulation runs like a board on a link: the host starts it, it connects back over a Unix
socket, and every Transport verb is one request/reply. Failures are reported within bounded
time with what the host knows: the simulation process dying (end of connection, seen within
milliseconds), a frozen simulation (no reply within `request_timeout_s` wall-clock seconds: the
process is killed), and a chip that stops making progress (the simulation gives up after a
simulated-cycle budget and replies with every tile's controller state; the link stays usable).
"""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pcmhil.cosim import toolchain
from pcmhil.cosim.harness import (
    HARNESS_PUBLIC,
    TESTBENCH,
    TIED_OFF,
    TOPLEVEL,
    CosimHarness,
    testbench_verilog,
)
from pcmhil.cosim.link import LinkClosed, recv_message, send_message
from pcmhil.cosim.server import CONFIG_ENV
from pcmhil.errors import ConfigError, SimulationError
from pcmhil.interface import Geometry
from pcmhil.model.analog_tile import AnalogSpec
from pcmhil.transport import BusError, Transport

MODES = tuple(sorted(TIED_OFF))  # the fidelity modes, each its own build
#: Simulated cycles a request may take before the chip is declared stuck.
DEFAULT_CYCLE_BUDGET = 2_000_000


#: Everything the harness Verilog is generated from (the key of its cached elaboration).
HARNESS_SOURCES = ("pcmhil.interface", "pcmhil.rtl", "pcmhil.cosim.harness")


def harness_verilog(geometry: Geometry) -> str:
    from amaranth.back import verilog

    return toolchain.cached_verilog(
        TOPLEVEL, asdict(geometry), HARNESS_SOURCES,
        lambda: verilog.convert(CosimHarness(geometry), name=TOPLEVEL, emit_src=False))


def harness_build_spec(geometry: Geometry, waves: bool = False,
                       mode: str = "transaction") -> toolchain.BuildSpec:
    """The simulation of `geometry` for one fidelity mode (each mode's build ties off the analog
    inputs it never drives)."""
    text = harness_verilog(geometry)
    # Only the testbench and the DMA memories are visible to Python: the chip below is compiled
    # without VPI access, as fast as Verilator makes it.
    return toolchain.BuildSpec(
        toplevel=TESTBENCH,
        verilog={f"{TOPLEVEL}.v": text, f"{TESTBENCH}.v": testbench_verilog(text, mode)},
        waves=waves, public=(TESTBENCH, *HARNESS_PUBLIC), timing=True)


class CosimTransport(Transport):
    """The chip RTL under cocotb + Verilator, bound to the analog model, in a child process."""

    def __init__(self, geometry: Geometry, analog: AnalogSpec, *, mode: str = "transaction",
                 waves: bool | str | Path = False, request_timeout_s: float = 120.0,
                 start_timeout_s: float = 600.0, cycle_budget: int = DEFAULT_CYCLE_BUDGET,
                 progress=None, python_path=()):
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, not {mode!r}")
        self.geometry = geometry
        self.mode = mode
        self.request_timeout_s = request_timeout_s
        self.cycle_budget = cycle_budget
        self.last_request = "start"
        self.process = None
        self.waves_file = None
        self._sock = None
        self._dir = Path(tempfile.mkdtemp(prefix="pcmhil-"))  # short: socket paths < 107 bytes
        progress = progress or (lambda _msg: None)
        try:
            progress("building the chip RTL (cached when unchanged)")
            built = toolchain.build(harness_build_spec(geometry, waves=bool(waves), mode=mode))
            progress(f"Verilator build {'reused' if built.cached else 'done'} ({built.seconds:.1f} s)")
            self._start(built, analog, waves, start_timeout_s, python_path)
        except BaseException:
            self.close()
            raise

    def _start(self, built, analog: AnalogSpec, waves, start_timeout_s: float,
               python_path) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = str(self._dir / "link")
        listener.bind(path)
        listener.listen(1)
        config = {"socket": path, "geometry": asdict(self.geometry), "mode": self.mode,
                  "analog": asdict(analog)}
        # Waves outlive the transport, so they go to a folder of the user's (default ./waves).
        if waves:
            test_dir = Path(waves if isinstance(waves, (str, Path)) else "waves").resolve()
        else:
            test_dir = self._dir / "sim"
        # No pytest assertion rewriting in the simulation: cocotb's default ("*.py") rewrites every
        # module imported there (numpy, numba, ours) and the server asserts nothing. Measured at
        # 64 x 64: the transport opens in 1.2-1.5 s instead of 2.9-4.6 s, and the model's
        # compiled kernels load in 0.5-0.7 s instead of 3.8-6.2 s.
        self.process = toolchain.start_cocotb(
            built, "pcmhil.cosim.server", test_dir, waves=bool(waves),
            extra_env={CONFIG_ENV: json.dumps(config), "COCOTB_REWRITE_ASSERTION_FILES": ""},
            python_path=python_path)
        self.waves_dir = test_dir if waves else None
        #: the FST waveform of the run (complete once the transport is closed)
        self.waves_file = test_dir / "dump.fst" if waves else None
        deadline = time.monotonic() + start_timeout_s
        listener.settimeout(0.2)
        try:
            while self._sock is None:
                with contextlib.suppress(TimeoutError):
                    self._sock, _ = listener.accept()
                if self._sock is None:
                    self._check_alive("starting the simulation")
                    if time.monotonic() > deadline:
                        raise SimulationError(f"the simulation did not connect within "
                                              f"{start_timeout_s:.0f} s; log tail:\n"
                                              f"{self.process.log_tail()}")
        finally:
            listener.close()
        self._reply()  # ("ready", None)

    # ---- request machinery -----------------------------------------------------------------

    def _check_alive(self, doing: str) -> None:
        code = self.process.popen.poll() if self.process else None
        if code is not None:
            raise SimulationError(f"the co-simulation process exited (code {code}) while "
                                  f"{doing}; log tail:\n{self.process.log_tail()}")

    def _link_lost(self, doing: str) -> SimulationError:
        """The socket closed under us: report the process's death (a killed process closes its
        socket before the OS reaps it, so wait a bounded time for the exit code)."""
        if self.process is None:
            return SimulationError(f"the co-simulation link broke during {doing}")
        try:
            code = self.process.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return SimulationError(f"the co-simulation link broke during {doing} while the process "
                                   f"was still running (killed it); log tail:\n"
                                   f"{self.process.log_tail()}")
        return SimulationError(f"the co-simulation process died (exit code {code}) during {doing}; "
                               f"log tail:\n{self.process.log_tail()}")

    def _reply(self):
        deadline = time.monotonic() + self.request_timeout_s
        while True:
            ready, _, _ = select.select([self._sock], [], [], 0.5)
            if ready:
                break
            self._check_alive(f"waiting for the reply to {self.last_request}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise SimulationError(
                    f"the co-simulation did not answer {self.last_request} within "
                    f"{self.request_timeout_s:.0f} s and was killed (a frozen simulation); "
                    f"log tail:\n{self.process.log_tail()}")
        try:
            status, value = recv_message(self._sock)
        except LinkClosed:
            raise self._link_lost(self.last_request) from None
        if status == "no-progress":
            raise SimulationError(f"the chip stopped making progress during {self.last_request}: "
                                  f"{value}")
        if status == "error":
            raise SimulationError(f"the co-simulation failed {self.last_request}: {value}")
        return value

    def _request(self, description: str, *message):
        if self._sock is None:
            raise SimulationError(f"the co-simulation link is closed (cannot do {description})")
        self.last_request = description
        try:
            send_message(self._sock, message)
        except LinkClosed:
            raise self._link_lost(description) from None
        return self._reply()

    # ---- Transport verbs -------------------------------------------------------------------

    def read(self, address: int) -> int:
        data, resp = self._request(f"read of {address:#06x}", "read", address)
        if resp:
            raise BusError("read", address)
        return data

    def write(self, address: int, value: int, strobe: int = 0b1111) -> None:
        _, resp = self._request(f"write of {value:#x} to {address:#06x}", "write", address,
                                value, strobe)
        if resp:
            raise BusError("write", address)

    def poll(self, address: int, mask: int, value: int, timeout_s: float = 30.0) -> int:
        register = self._request(f"poll of {address:#06x}", "poll", address, mask, value,
                                 self.cycle_budget)
        return register

    def send(self, packets) -> None:
        rows = [np.asarray(p, dtype=np.uint32).reshape(-1) for p in
                (np.atleast_2d(packets) if isinstance(packets, np.ndarray) else packets)]
        words = np.concatenate(rows)
        lasts = np.zeros(len(words), dtype=bool)
        lasts[np.cumsum([len(r) for r in rows]) - 1] = True
        self._request(f"send of {len(rows)} packets", "send", words, lasts,
                      self.cycle_budget)

    def receive(self, count: int, timeout_s: float = 10.0) -> list[np.ndarray]:
        return self._request(f"receive of {count} packets", "receive", count, self.cycle_budget)

    def pending(self) -> int:
        return self._request("pending", "pending")

    def reset(self, analog: AnalogSpec | None = None) -> None:
        self._request("reset", "reset", None if analog is None else asdict(analog))

    def advance_time(self, seconds: float) -> None:
        self._request(f"advance_time({seconds})", "advance_time", seconds)

    def simulated_cycles(self) -> int:
        return self._request("cycles", "cycles")

    def warm_up(self) -> bool:
        """Load the analog model's compiled kernels in the simulation now, as a benchmark wants
        before it times (else they load after kernels.LOAD_AFTER_SMALL_WINDOWS windows, in
        transaction mode ~0.1-0.3 ms a window faster at 256 x 256); whether they loaded."""
        return self._request("warm_up", "warm_up")

    def clock_only(self, cycles: int) -> None:
        """Clock the RTL for `cycles` with no model and no bus traffic (the speed ceiling)."""
        self._request(f"clock({cycles})", "clock", cycles)

    def profile(self, dump_to: str | Path | None = None) -> None:
        """Start profiling the simulation's Python (None), or stop and write cProfile stats."""
        self._request("profile", "profile", None if dump_to is None else str(dump_to))

    def stats(self) -> dict:
        """Where the simulation's time went: requests, seconds handling them, in the model."""
        return self._request("stats", "stats")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self.last_request = "close"
                send_message(self._sock, ("close",))
                self._sock.settimeout(5)
                recv_message(self._sock)
            self._sock.close()
            self._sock = None
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.popen.wait(timeout=10)
            self.process.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
