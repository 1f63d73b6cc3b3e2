"""Model speed, measured side by side with plain numpy float matmuls: `pcmhil bench model`.

Issue 3 targets: one rows x cols MVM (a 1-phase window on a programmed array with drift, read
noise and the CCO) <= 1 ms; a batch of 1,000 <= 50x a numpy float64 matmul of the same batch.
The read state (drift and the 1/f realisation) is realised once per time event, not per MVM
(device.py), so its cost is reported separately (`time_event_s`).

The model and the reference are timed in alternation, so that both see the same machine load.

Workload: weights N(0, 1) clipped at +-3 (DNN-like) mapped with per-column scale; inputs
uniform int8 codes in [-128, 127] (PWM durations |x| <= 128 cycles, sign as read polarity);
windows of 128 cycles (docs/numerics.md PWM_MAX_CYCLES).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from . import int_gemm, kernels, window_worker
from .checks import check_int
from .crossbar import Crossbar, CrossbarConfig, read_mode_windows

SINGLE_TARGET_S = 1e-3
BATCH_TARGET_RATIO = 50.0
N_WINDOW_CYCLES = 128
BENCH_PRESET = "hermes-2dev"


def bench_model(rows: int = 256, cols: int = 256, batch: int = 1000, seed: int = 0,
                progress: Callable[[str], None] | None = None) -> dict:
    """Time the model against numpy float64 matmuls; returns a JSON-ready dict of seconds,
    ratios and whether the targets were met. `progress(message)` is told of each stage."""
    rows = check_int("rows", rows, 1, 4096)
    cols = check_int("cols", cols, 1, 4096)
    batch = check_int("batch", batch, 1, 100_000)
    say = progress or (lambda message: None)
    rng = np.random.default_rng(check_int("seed", seed, 0, 2**64 - 1))
    weights = np.clip(rng.standard_normal((rows, cols)), -3, 3)
    inputs = rng.integers(-128, 128, (batch, rows))
    crossbar = Crossbar(CrossbarConfig(preset=BENCH_PRESET, rows=rows, cols=cols, seed=seed))

    say("programming")
    program_s = _seconds(lambda: crossbar.program_weights(weights, op_index=0))
    say("time event: drift and 1/f realisation at 1 h")
    time_event_s = _seconds(lambda: crossbar.devices.advance_time(3600.0))
    (window,) = read_mode_windows(inputs, "1-phase")

    x, w = inputs.astype(np.float64), weights.astype(np.float64)
    ops = iter(range(batch, 2**62))
    say("single MVM and float64 vector-matrix product, alternating")
    single_s, matmul_single_s = _alternating_medians(
        lambda: crossbar.cco.window_counts(window.durations[0], window.polarity[0], window.select,
                                           N_WINDOW_CYCLES, next(ops)),
        lambda: x[0] @ w, 200)
    say(f"batch of {batch} and float64 matmul, alternating")
    int8 = int_gemm.warm_up()  # large batches' matmuls on torch's int8 GEMM if installed (int_gemm.py)
    compiled = kernels.warm_up()  # their per-pair loops compiled (kernels.py): halves in two threads,
    worker = not compiled and window_worker.warm_up(batch)  # else half in the worker (window_worker.py)
    batch_s, matmul_batch_s = _alternating_medians(
        lambda: crossbar.cco.window_counts_batch(window.durations, window.polarity, window.select,
                                                 N_WINDOW_CYCLES, np.arange(batch)),
        lambda: x @ w, 7)
    return {
        "preset": BENCH_PRESET, "rows": rows, "cols": cols, "batch": batch,
        "n_window_cycles": N_WINDOW_CYCLES, "read_mode": "1-phase", "window_worker": worker,
        "int8_gemm": int8, "compiled_kernels": compiled,
        "program_s": program_s, "time_event_s": time_event_s,
        "single_mvm_s": single_s, "batch_s": batch_s, "batch_per_mvm_s": batch_s / batch,
        "matmul_dtype": "float64", "matmul_single_s": matmul_single_s, "matmul_batch_s": matmul_batch_s,
        "single_ratio": single_s / matmul_single_s, "batch_ratio": batch_s / matmul_batch_s,
        "single_target_s": SINGLE_TARGET_S, "batch_target_ratio": BATCH_TARGET_RATIO,
        "meets_targets": bool(single_s <= SINGLE_TARGET_S and batch_s / matmul_batch_s <= BATCH_TARGET_RATIO),
    }


def _seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _alternating_medians(model: Callable[[], object], reference: Callable[[], object],
                         repeats: int) -> tuple[float, float]:
    """Median seconds of `model` and of `reference`, timed in alternation so that both see the
    same machine load (BLAS threads, other processes)."""
    model(), reference()  # warm caches (the selected conductance matrix, BLAS threads)
    times = np.array([(_seconds(model), _seconds(reference)) for _ in range(repeats)])
    return float(np.median(times[:, 0])), float(np.median(times[:, 1]))
