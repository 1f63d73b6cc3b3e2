"""`pcmhil bench cosim`: co-simulation speed, measured side by side in one run.

At one geometry (default 256x256): cosim MVM/s in transaction and cycle mode, the ceiling (the
same RTL clocked for the same number of cycles with no model and no bus traffic), the twin's
MVM/s on a batch (end to end through the driver: Chip.mvm on int8 inputs), and a plain numpy
float matmul of that batch, with their ratios and where the wall time goes (cosim: Verilator
clocking, bus/DMA Python, the analog model, the host link; twin: the analog model vs. the
twin's digital side and the driver).

Weights: uniform in [-1, 1] at full scale (every figure, like `pcmhil mvm`). For the twin, whose
cost depends on the weights, also DNN-like ones: N(0, 1) clipped at +-3, at full scale (as
`pcmhil bench model`). Uniform full-range weights and inputs bring the column currents near
the CCOs' saturation in many cycles: the clipping proof (model/drive.py) then needs more
matmuls and exact scans than for DNN-like weights, whose currents stay further inside.
"""

from __future__ import annotations

import time

import numpy as np

from pcmhil.host.backends import open_transport
from pcmhil.host.chip import Chip
from pcmhil.host.random_mvm import GAIN, SHIFT
from pcmhil.interface import WINDOW_RESET, Geometry
from pcmhil.model import int_gemm, kernels, window_worker
from pcmhil.model.analog_tile import AnalogSpec
from pcmhil.model.checks import check_int

#: The bench's weight distributions (module doc), as values in [-1, 1] (full scale = 1).
WEIGHTS = {
    "uniform": lambda rng, shape: rng.uniform(-1, 1, shape),
    "clipped-normal": lambda rng, shape: np.clip(rng.standard_normal(shape), -3, 3) / 3,
}


def _programmed_chip(backend: str, geometry: Geometry, seed: int, preset: str, mode: str = "transaction",
                     progress=None, weights: str = "uniform") -> Chip:
    rng = np.random.default_rng(seed)
    w = WEIGHTS[weights](rng, (geometry.rows, geometry.cols))
    transport = open_transport(backend, geometry, AnalogSpec(kwargs={"preset": preset, "seed": seed}),
                               mode=mode, progress=progress)
    chip = Chip(transport, geometry)
    chip.program(0, np.rint(np.maximum(w, 0) * 255), np.rint(np.maximum(-w, 0) * 255))
    chip.configure(0, window=WINDOW_RESET, shift=SHIFT)
    chip.calibrate(0, 2)
    chip.load_ldpu(0, np.full(geometry.cols, GAIN), np.zeros(geometry.cols, dtype=np.int64))
    return chip


def _cosim(geometry: Geometry, mode: str, count: int, seed: int, preset: str, progress) -> dict:
    chip = _programmed_chip("cosim", geometry, seed, preset, mode, progress)
    transport = chip.transport
    try:
        compiled = transport.warm_up()  # the model's compiled kernels now, not after many windows mid-run
        x = np.random.default_rng(seed + 1).integers(-128, 128, (count, geometry.rows))
        chip.mvm(0, x[:2])  # warm up
        before, cycles0 = transport.stats(), transport.simulated_cycles()
        start = time.perf_counter()
        chip.mvm(0, x)
        wall = time.perf_counter() - start
        after, cycles = transport.stats(), transport.simulated_cycles() - cycles0
        clock_start = time.perf_counter()
        transport.clock_only(cycles)
        ceiling = time.perf_counter() - clock_start
    finally:
        transport.close()
    handle = after["handle_s"] - before["handle_s"]
    model = after["model_s"] - before["model_s"]
    return {
        "mvm_per_s": count / wall, "seconds": wall, "cycles_per_mvm": cycles / count,
        "compiled_kernels": compiled,
        "ceiling_mvm_per_s": count / ceiling,
        "breakdown_s": {"verilator": ceiling, "model": model,
                        "bus_and_dma_python": max(handle - model - ceiling, 0.0),
                        "transport": max(wall - handle, 0.0)},
    }


def bench_twin(geometry: Geometry, batch: int = 1000, seed: int = 0, preset: str = "hermes-2dev",
               repeats: int = 5, weights: str = "uniform") -> dict:
    """The twin's MVM/s on a batch of int8 vectors through Chip.mvm, and a numpy float64 matmul
    of the same batch: medians of `repeats` runs each after one run not timed, the twin's first
    (the matmul's BLAS threads may go on spinning after a call and slow a single-threaded run
    that follows)."""
    twin = _programmed_chip("twin", geometry, seed, preset, weights=weights)
    analog = twin.transport.tiles[0].analog
    x = np.random.default_rng(seed + 1).integers(-128, 128, (batch, geometry.rows)).astype(np.int8)
    twin.mvm(0, x[:10])  # warm up (cached conductance matrices)
    int8 = int_gemm.warm_up()  # torch's int8 GEMM for the window matmuls (model/int_gemm.py), if installed
    compiled = kernels.warm_up()  # the windows' per-pair loops compiled (model/kernels.py): large
    # batches in two threads; without them, half in the second process (model/window_worker.py)
    worker = not compiled and window_worker.warm_up(batch)
    twin.mvm(0, x)  # warm up the large batch's path (its second thread, buffers, band count): steady state
    runs = []
    for _ in range(repeats):
        model_before, start = analog.busy_s, time.perf_counter()
        twin.mvm(0, x)
        runs.append((time.perf_counter() - start, analog.busy_s - model_before))
    twin_s, model_s = np.median(runs, axis=0)
    xf, wf = x.astype(np.float64), np.random.default_rng(seed).standard_normal((geometry.rows, geometry.cols))
    xf @ wf  # warm up (BLAS threads)
    matmul_runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        xf @ wf
        matmul_runs.append(time.perf_counter() - start)
    matmul_s = float(np.median(matmul_runs))
    return {"mvm_per_s": batch / twin_s, "float_matmul_mvm_per_s": batch / matmul_s, "window_worker": worker,
            "int8_gemm": int8, "compiled_kernels": compiled,
            "breakdown_s": {"analog_model": float(model_s), "twin_and_driver": float(twin_s - model_s)}}


def bench_cosim(rows: int = 256, cols: int = 256, count: int = 300, cycle_count: int = 40,
                batch: int = 1000, seed: int = 0, preset: str = "hermes-2dev", progress=None) -> dict:
    say = progress or (lambda _m: None)
    geometry = Geometry(rows, cols, 1)
    count, cycle_count = check_int("count", count, 1, 10**7), check_int("cycle_count", cycle_count, 1, 10**7)
    batch = check_int("batch", batch, 1, 10**7)
    say(f"twin: batches of {batch} MVMs and float matmuls")
    twin = bench_twin(geometry, batch, seed, preset)
    twin_dnn = bench_twin(geometry, batch, seed, preset, weights="clipped-normal")
    say(f"cosim transaction mode: {count} MVMs")
    transaction = _cosim(geometry, "transaction", count, seed, preset, say)
    say(f"cosim cycle mode: {cycle_count} MVMs")
    cycle = _cosim(geometry, "cycle", cycle_count, seed, preset, say)
    twin_rate, float_rate = twin["mvm_per_s"], twin["float_matmul_mvm_per_s"]
    return {
        "rows": rows, "cols": cols, "preset": preset,
        "cosim_transaction_mvm_per_s": round(transaction["mvm_per_s"], 1),
        "cosim_cycle_mvm_per_s": round(cycle["mvm_per_s"], 1),
        "ceiling_mvm_per_s": round(transaction["ceiling_mvm_per_s"], 1),
        "cycles_per_mvm": round(transaction["cycles_per_mvm"], 1),
        "twin_mvm_per_s": round(twin_rate, 1), "float_matmul_mvm_per_s": round(float_rate, 1),
        "twin_clipped_normal_weights_mvm_per_s": round(twin_dnn["mvm_per_s"], 1),
        "twin_window_worker": twin["window_worker"], "twin_int8_gemm": twin["int8_gemm"],
        "twin_compiled_kernels": twin["compiled_kernels"],
        "cosim_compiled_kernels": transaction["compiled_kernels"] and cycle["compiled_kernels"],
        "ratios": {
            "transaction_vs_ceiling": round(transaction["mvm_per_s"] / transaction["ceiling_mvm_per_s"], 4),
            "cycle_vs_transaction": round(cycle["mvm_per_s"] / transaction["mvm_per_s"], 4),
            "twin_vs_transaction": round(twin_rate / transaction["mvm_per_s"], 1),
            "float_vs_twin": round(float_rate / twin_rate, 2),
        },
        "breakdown_s": {"transaction": _rounded(transaction["breakdown_s"]),
                        "cycle": _rounded(cycle["breakdown_s"]), "twin": _rounded(twin["breakdown_s"]),
                        "twin_clipped_normal_weights": _rounded(twin_dnn["breakdown_s"])},
        "counts": {"transaction": count, "cycle": cycle_count, "twin_batch": batch},
    }


def _rounded(seconds: dict) -> dict:
    return {key: round(value, 4) for key, value in seconds.items()}
