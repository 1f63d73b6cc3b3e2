"""The co-simulation: the RTL in Verilator under cocotb, bound to an analog model, behind the
same Transport as the twin. Equivalence with the twin, and failure handling."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from pcmhil.cosim.transport import CosimTransport
from pcmhil.errors import SimulationError
from pcmhil.host import packets as pk
from pcmhil.host.chip import Chip
from pcmhil.host.equivalence import _wait, compare, random_workload, run_workload
from pcmhil.host.twin import TwinTransport
from pcmhil.interface import PWM_MAX_CYCLES, Command, ErrorCode, Geometry, PacketType, ReadMode, command_word
from pcmhil.model.analog_tile import AnalogSpec

pytestmark = pytest.mark.cosim
TESTS = Path(__file__).resolve().parent
FAKE = AnalogSpec("fake_analog:make_fake_tiles", {"seed": 5})


def open_cosim(geometry, spec=FAKE, **kwargs):
    return CosimTransport(geometry, spec, python_path=[TESTS], **kwargs)


def test_fake_analog_workloads_match_the_twin():
    """The digital periphery alone: with an exact integer analog stand-in, every output code and
    register of random workloads (valid and invalid operations) equals the twin's."""
    geometry = Geometry(8, 12, 2)
    with open_cosim(geometry) as cosim:
        for seed in range(3):
            workload = random_workload(geometry, seed, n_ops=20)
            spec = AnalogSpec(FAKE.factory, {"seed": seed})
            cosim.reset(spec)
            got = run_workload(Chip(cosim, geometry), workload)
            want = run_workload(Chip(TwinTransport(geometry, spec), geometry), workload)
            assert compare(got, want) == []


def test_batches_longer_than_the_dma_buffers_match_the_twin():
    """A batch whose input and output streams each wrap the harness's DMA buffers several times
    (cosim/harness.py: DMA_DEPTH beats, BEATS_PER_WORD beats a memory entry), with packets that
    straddle the entries and the input's chunks: every code equals the twin's."""
    from pcmhil.cosim.harness import BEATS_PER_WORD, DMA_DEPTH

    geometry = Geometry(64, 60, 1)
    in_beats, out_beats = geometry.rows // 4 + 1, geometry.cols // 4 + 1  # header + int8 lanes
    count = 2 * DMA_DEPTH // min(in_beats, out_beats) + 7
    assert in_beats % BEATS_PER_WORD and out_beats % BEATS_PER_WORD  # packets straddle entries
    x = np.random.default_rng(8).integers(-128, 128, (count, geometry.rows))
    with open_cosim(geometry) as cosim:  # the fake tile's weights: small random integers
        chips = [Chip(cosim, geometry), Chip(TwinTransport(geometry, FAKE), geometry)]
        for chip in chips:
            chip.calibrate(0, 2)
        got, want = (chip.mvm(0, x) for chip in chips)
    assert got.shape == (count, geometry.cols)
    assert np.array_equal(got, want)
    assert len(np.unique(got)) > 50  # codes spread over the range, not one saturated value


#: CI subset of the equivalence regression (the full >= 1,000-workload run is marked slow).
PRESETS = ("pcm", "hermes-2dev", "hermes-1dev", "projected", "ideal")


@pytest.mark.parametrize("mode", ["transaction", "cycle"])
def test_model_workloads_match_the_twin(mode, window_path):
    """The whole chip: RTL + analog model (both fidelity modes) vs. the twin, code for code; the
    twin's windows on numpy's path, all their matmuls on the int8 GEMM, or that and their
    per-pair loops compiled, or every pair summed exactly (`window_path`). With the compiled
    paths, the simulation's model has its kernels loaded too (in transaction mode its single
    windows are then summed exactly: `kernels.exact_windows`)."""
    geometry = Geometry(8, 12, 2)
    with open_cosim(geometry, AnalogSpec(kwargs={"preset": "pcm", "seed": 0}), mode=mode) as cosim:
        if window_path in ("compiled", "walk", "exact"):
            assert cosim.warm_up()
        for seed in range(4):
            spec = AnalogSpec(kwargs={"preset": PRESETS[seed % len(PRESETS)], "seed": seed})
            workload = random_workload(geometry, 100 + seed, n_ops=24)
            cosim.reset(spec)
            got = run_workload(Chip(cosim, geometry), workload)
            want = run_workload(Chip(TwinTransport(geometry, spec), geometry), workload)
            assert compare(got, want) == [], f"seed {seed}"


def test_mvm_codes_identical_on_every_backend_and_mode():
    from pcmhil.host.random_mvm import random_mvm

    hashes = {(backend, mode): random_mvm(backend, mode=mode, rows=32, cols=16, count=12, seed=1,
                                          preset="hermes-2dev")["codes_sha256"]
              for backend, mode in (("twin", "transaction"), ("cosim", "transaction"),
                                    ("cosim", "cycle"))}
    assert len(set(hashes.values())) == 1, hashes


def test_twin_batches_through_the_window_worker_match_the_cosim(monkeypatch):
    """Batches large enough to run partly in the model's worker process (model/window_worker.py)
    give the RTL's codes too: 1-phase and 4-phase, one batch after another; with torch
    installed (CI), their matmuls on its int8 GEMM on both sides (model/int_gemm.py). The
    per-pair loops on numpy's path here (compiled, they split batches into threads instead:
    cco.CCO._halves), compiled in the worker."""
    from pcmhil.host.random_mvm import GAIN, SHIFT
    from pcmhil.model import int_gemm, kernels, window_worker

    int_gemm.warm_up()
    monkeypatch.setattr(kernels, "module", lambda: None)

    if window_worker._usable_cpus() < 2:
        pytest.skip("the worker is not used with one usable CPU")
    geometry, spec = Geometry(32, 16, 1), AnalogSpec(kwargs={"preset": "hermes-2dev", "seed": 3})
    rng = np.random.default_rng(4)
    w = rng.uniform(-1, 1, (geometry.rows, geometry.cols))
    assert window_worker.warm_up(window_worker.MIN_WINDOWS, timeout_s=60)
    jobs = window_worker.shared().jobs
    with CosimTransport(geometry, spec, mode="transaction") as cosim:
        chips = [Chip(cosim, geometry), Chip(TwinTransport(geometry, spec), geometry)]
        for chip in chips:
            chip.program(0, np.rint(np.maximum(w, 0) * 255), np.rint(np.maximum(-w, 0) * 255))
            chip.calibrate(0, 2)
            chip.load_ldpu(0, np.full(geometry.cols, GAIN), np.zeros(geometry.cols, dtype=np.int64))
        for read_mode in (ReadMode.ONE_PHASE, ReadMode.FOUR_PHASE, ReadMode.ONE_PHASE):
            x = rng.integers(-128, 128, (window_worker.MIN_WINDOWS + 30, geometry.rows))
            for chip in chips:
                chip.configure(0, read_mode=read_mode, shift=SHIFT)
            got, want = (chip.mvm(0, x) for chip in chips)
            assert np.array_equal(got, want), read_mode
    assert window_worker.shared().jobs >= jobs + 3  # every batch had a part in the worker


def test_bench_cosim_reports_every_figure_side_by_side():
    """`pcmhil bench cosim` at a small geometry (the 32x16 chip of the test above): every rate
    measured and positive, the ratios those of the rates it prints, a 1-phase MVM at least one
    128-cycle window, the ceiling (no model, no bus) faster than the cosim, and every part of
    the breakdown there."""
    from pcmhil.host.bench import bench_cosim

    r = bench_cosim(rows=32, cols=16, count=8, cycle_count=2, batch=64)
    rates = ("cosim_transaction_mvm_per_s", "cosim_cycle_mvm_per_s", "ceiling_mvm_per_s", "twin_mvm_per_s",
             "float_matmul_mvm_per_s", "twin_clipped_normal_weights_mvm_per_s")
    assert all(r[key] > 0 for key in rates), r
    ratios = r["ratios"]
    assert ratios["cycle_vs_transaction"] == pytest.approx(
        r["cosim_cycle_mvm_per_s"] / r["cosim_transaction_mvm_per_s"], rel=0.01)
    assert ratios["float_vs_twin"] == pytest.approx(r["float_matmul_mvm_per_s"] / r["twin_mvm_per_s"],
                                                    rel=0.01)
    assert r["cycles_per_mvm"] >= PWM_MAX_CYCLES
    assert r["ceiling_mvm_per_s"] > r["cosim_transaction_mvm_per_s"]
    for mode in ("transaction", "cycle"):
        parts = r["breakdown_s"][mode]
        assert set(parts) == {"verilator", "model", "bus_and_dma_python", "transport"}
        assert min(parts.values()) >= 0 and parts["model"] > 0
    assert set(r["breakdown_s"]["twin"]) == {"analog_model", "twin_and_driver"}
    assert r["twin_window_worker"] is False  # batches of 64 windows have no part in the worker
    assert isinstance(r["twin_int8_gemm"], bool) and isinstance(r["twin_compiled_kernels"], bool)
    # numba is a dependency: the simulation's model loads its kernels unless they are switched off
    assert r["cosim_compiled_kernels"] is (os.environ.get("PCMHIL_JIT", "1") != "0")


@pytest.mark.parametrize("settle_s", [0.0, 0.5], ids=["at-once", "after-settling"])
def test_killed_simulation_is_reported_within_ten_seconds(settle_s):
    # at-once: the next request races the kernel tearing the process down (the send may still
    # succeed, fail with EPIPE, or the reply read sees EOF); after-settling: the socket is
    # certainly closed before the send.  Every path must name the process's death.
    geometry = Geometry(8, 8, 1)
    cosim = open_cosim(geometry)
    try:
        chip = Chip(cosim, geometry)
        chip.calibrate(0, 0)
        os.killpg(cosim.process.popen.pid, signal.SIGKILL)
        time.sleep(settle_s)
        start = time.monotonic()
        with pytest.raises(SimulationError, match=r"co-simulation process (died|exited) "
                                                  r"\(exit code -9\)|co-simulation process exited "
                                                  r"\(code -9\)"):
            chip.calibrate(0, 0)
        assert time.monotonic() - start < 10
    finally:
        cosim.close()


def test_frozen_simulation_is_killed_and_reported():
    geometry = Geometry(8, 8, 1)
    cosim = open_cosim(geometry, request_timeout_s=3)
    try:
        os.killpg(cosim.process.popen.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(SimulationError, match=r"did not answer read of 0x0000 within 3 s"):
            cosim.read(0)
        assert time.monotonic() - start < 10
    finally:
        cosim.close()


def test_stuck_chip_reports_state_and_link_survives():
    geometry = Geometry(8, 8, 1)
    with open_cosim(geometry, cycle_budget=20_000) as cosim:
        chip = Chip(cosim, geometry)
        chip.command(0, chip_command("MVM"), 1, wait=False)
        with pytest.raises(SimulationError,
                           match=r"stopped making progress during receive of 1 packets.*"
                                 r"tile 0: STATUS=0x0000010[0-9a-f] "):
            cosim.receive(1)
        chip.abort(0)
        assert chip.status(0).error_code == 0x08  # ABORTED: the link still works
        chip.clear_flags(0)
        y = chip.mvm(0, np.zeros((2, 8), dtype=np.int8))
        assert y.shape == (2, 8)


def chip_command(name):
    from pcmhil.interface import Command

    return Command[name]


def _provoke_every_error(chip: Chip) -> dict:
    """Provoke each documented ErrorCode through the chip's AXI4-Lite and AXI4-Stream ports;
    returns {code name: (ERROR_INFO or STREAM_STATUS code, opcode)} as read back over the bus."""
    g, seen = chip.geometry, {}
    info = lambda t: (chip.read_field("ERROR_INFO", "code", t), chip.read_field("ERROR_INFO", "opcode", t))  # noqa: E731

    def command(opcode: int, arg: int = 0, tile: int = 0) -> None:
        chip.write("CMD", command_word(opcode, arg), tile)
        _wait(chip, tile)

    chip.configure(0, window=PWM_MAX_CYCLES)
    command(0x7F)
    seen["UNKNOWN_COMMAND"] = info(0)
    command(Command.MVM, 0)
    seen["BAD_ARGUMENT"] = info(0)
    command(Command.LOAD_LDPU)
    seen["NO_DATA"] = info(0)
    chip.write("WINDOW", PWM_MAX_CYCLES - 1, 0)
    command(Command.CALIBRATE, 0)
    seen["BAD_CONFIG"] = info(0)
    chip.write("WINDOW", PWM_MAX_CYCLES, 0)
    # BUSY, then ABORTED: an MVM waiting for its second vector
    chip.command(0, Command.MVM, 2, wait=False)
    chip.command(0, Command.CALIBRATE, 0, wait=False)
    seen["BUSY"] = info(0)
    chip.transport.send(pk.pack_activations(np.zeros((1, g.rows), np.int64), g, 0))
    chip.abort(0)
    _wait(chip, 0)
    seen["ABORTED"] = info(0)
    chip.transport.receive(chip.transport.pending())
    # packet errors: a tile's own (length) and the router's (type, tile index)
    good = pk.pack_activations(np.zeros((1, g.rows), np.int64), g, 1)[0]
    chip.transport.send(np.concatenate([good, [7]]).astype(np.uint32))  # one word too long
    error = chip.map.register("STATUS", True).field("error").mask
    chip.transport.poll(chip.map.address("STATUS", 1), error, error, 10.0)
    seen["PACKET_LENGTH"] = info(1)
    for name, packet in (("PACKET_TYPE", [pk.header_word(0x7E, 0), 1]),
                         ("PACKET_TILE", [pk.header_word(PacketType.ACTIVATIONS, g.tiles), 1])):
        chip.transport.send(np.array(packet, np.uint32))
        chip.transport.poll(chip.map.address("STREAM_STATUS"), 1, 1, 10.0)
        seen[name] = (chip.read_field("STREAM_STATUS", "code"), 0)
        chip.write("STREAM_STATUS", 1)
    return seen


def test_every_error_code_is_provoked_through_the_bus():
    """Issue 4: every documented error code, provoked through the AXI ports of the chip top (the
    HDL bus master and stream DMA of the harness) and read back from the registers; the twin
    reads back the same."""
    geometry = Geometry(8, 12, 2)
    with open_cosim(geometry) as cosim:
        got = _provoke_every_error(Chip(cosim, geometry))
    want = _provoke_every_error(Chip(TwinTransport(geometry, FAKE), geometry))
    expected_opcode = {"UNKNOWN_COMMAND": 0x7F, "BAD_ARGUMENT": Command.MVM.value,
                       "NO_DATA": Command.LOAD_LDPU.value, "BAD_CONFIG": Command.CALIBRATE.value,
                       "BUSY": Command.CALIBRATE.value, "ABORTED": Command.MVM.value}
    assert set(got) == {c.name for c in ErrorCode if c is not ErrorCode.NONE}
    for name, (code, opcode) in got.items():
        assert code == ErrorCode[name].value, (name, code)
        assert opcode == expected_opcode.get(name, 0), (name, opcode)
    assert got == want


def test_waves_are_written_as_fst(tmp_path):
    """Issue 5: --waves writes an FST of the run and says where."""
    import struct

    from pcmhil.host.random_mvm import random_mvm

    result = random_mvm("cosim", rows=8, cols=8, count=2, seed=1, waves=tmp_path / "waves")
    fst = Path(result["waves"])
    assert fst == tmp_path / "waves" / "dump.fst"
    head = fst.read_bytes()[:25]
    # FST header block: type 0, section length, start time, end time (in ps of simulated time)
    kind, _, start, end = head[0], *struct.unpack(">QQQ", head[1:25])
    assert kind == 0 and end > start + 1000
