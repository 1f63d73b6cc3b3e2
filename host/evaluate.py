"""Accuracy of a network run through the chip: `pcmhil infer` and `pcmhil drift`.

The same driver runs on every backend: `float` (the reference, no quantisation), `twin`
(the bit-accurate chip model) and `cosim` (the RTL in Verilator with the analog model).
Calibration uses the first CALIBRATION_IMAGES training images of a named dataset; an .npz file
has no training split, so its first CALIBRATION_IMAGES images calibrate (and are still counted
in the accuracy; say so when you compare).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcmhil.errors import ConfigError
from pcmhil.host.backends import open_transport
from pcmhil.host.chip import Chip
from pcmhil.host.compiler import map_graph
from pcmhil.host.datasets import load_dataset, load_npz_data
from pcmhil.host.frontends import load_model
from pcmhil.host.graph import Graph, run_float
from pcmhil.host.inference import Deployment, accuracy, check_backend
from pcmhil.interface import ReadMode
from pcmhil.model.analog_tile import AnalogSpec

CALIBRATION_IMAGES = 128
DEFAULT_PRESET = "pcm"


@dataclass
class Data:
    name: str
    x_test: np.ndarray
    y_test: np.ndarray
    x_calibration: np.ndarray


def load_data(data: str, graph: Graph, images: int | None = None) -> Data:
    if str(data).endswith(".npz"):
        x, y = load_npz_data(data, graph.input_shape)
        calibration = x[:CALIBRATION_IMAGES]
    else:
        ds = load_dataset(data, graph.input_shape)
        x, y, calibration = ds.x_test, ds.y_test, ds.x_train[:CALIBRATION_IMAGES]
    if images is not None:
        if not isinstance(images, int) or not 1 <= images <= len(x):
            raise ConfigError(f"images must be an integer in [1, {len(x)}], not {images!r}")
        x, y = x[:images], y[:images]
    return Data(str(data), x, y, calibration)


def predictions_sha256(predictions: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(predictions, dtype="<i8").tobytes()).hexdigest()


def deploy(graph: Graph, data: Data, backend: str, *, preset: str = DEFAULT_PRESET, seed: int = 0,
           mode: str = "transaction", verify: bool = True, read_mode: ReadMode = ReadMode.ONE_PHASE,
           copies: dict[str, tuple[int, int]] | None = None, progress=None,
           **transport_options) -> Deployment:
    """Map (`copies` as map_graph takes them: by default, column copies in idle columns), program
    (with verify) and calibrate `graph` on a fresh chip of `backend`."""
    mapping = map_graph(graph, copies=copies)
    spec = AnalogSpec(kwargs={"preset": preset, "seed": seed})
    transport = open_transport(backend, mapping.geometry, spec, mode=mode, progress=progress,
                               **transport_options)
    deployment = Deployment(graph, mapping, Chip(transport, mapping.geometry), read_mode=read_mode)
    deployment.program(verify=verify, progress=progress)
    deployment.calibrate(data.x_calibration)
    return deployment


def infer(model: str, data: str = "digits", backend: str = "twin", *, images: int | None = None,
          preset: str = DEFAULT_PRESET, t_inference_s: float = 1.0, gdc: bool = True,
          gdc_per_column: bool = False, replicate: bool = True, seed: int = 0,
          mode: str = "transaction", verify: bool = True, progress=None) -> dict:
    check_backend(backend)
    if not np.isfinite(t_inference_s) or t_inference_s < 0:
        raise ConfigError(f"t_inference_s must be a finite number >= 0, not {t_inference_s!r}")
    graph = load_model(model)
    d = load_data(data, graph, images)
    float_accuracy = accuracy(run_float(graph, d.x_test), d.y_test)
    start = time.perf_counter()
    tiles_used = 0
    if backend == "float":
        logits = run_float(graph, d.x_test)
        run_seconds = time.perf_counter() - start
    else:
        dep = deploy(graph, d, backend, preset=preset, seed=seed, mode=mode, verify=verify,
                     copies=None if replicate else {}, progress=progress)
        try:
            tiles_used = dep.mapping.geometry.tiles
            dep.chip.advance_time(t_inference_s)
            if gdc:
                dep.compensate_drift(per_column=gdc_per_column)
            run_start = time.perf_counter()
            logits = dep.run(d.x_test)
            run_seconds = time.perf_counter() - run_start
        finally:
            dep.chip.transport.close()
    predictions = np.argmax(logits, axis=1)
    return {
        "model": model, "backend": backend, "preset": None if backend == "float" else preset,
        "images": len(d.x_test), "accuracy": accuracy(logits, d.y_test),
        "float_accuracy": float_accuracy, "t_inference_s": t_inference_s,
        "seconds": round(time.perf_counter() - start, 3),
        "images_per_s": round(len(d.x_test) / run_seconds, 1), "tiles_used": tiles_used,
        "predictions_sha256": predictions_sha256(predictions),
    }


def drift(model: str, data: str = "digits", *, times_s=(1, 3600, 86400, 2592000, 31536000),
          seeds: int = 3, preset: str = DEFAULT_PRESET, gdc=(False, True), gdc_per_column: bool = False,
          replicate: bool = True, images: int | None = None, backend: str = "twin", progress=None) -> dict:
    """Accuracy mean/std over `seeds` chips at each time after programming, with/without GDC
    (global, or per column with `gdc_per_column`)."""
    check_backend(backend)
    times = sorted(float(t) for t in times_s)
    if not times or times[0] < 0:
        raise ConfigError(f"times must be non-negative seconds, not {times_s!r}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be an integer >= 1, not {seeds!r}")
    graph = load_model(model)
    d = load_data(data, graph, images)
    acc = {(t, g): [] for t in times for g in gdc}
    for seed in range(seeds):
        dep = deploy(graph, d, backend, preset=preset, seed=seed, copies=None if replicate else {})
        now = 0.0
        try:
            for t in times:
                dep.chip.advance_time(t - now)
                now = t
                for g in gdc:
                    if g:
                        dep.compensate_drift(per_column=gdc_per_column)
                    else:
                        dep.reset_drift_compensation()
                    acc[(t, g)].append(accuracy(dep.run(d.x_test), d.y_test))
                if progress:
                    progress(f"seed {seed + 1}/{seeds}, t = {t:g} s: " + ", ".join(
                        f"{'GDC' if g else 'no GDC'} {acc[(t, g)][-1]:.4f}" for g in gdc))
        finally:
            dep.chip.transport.close()
    return {
        "model": model, "backend": backend, "preset": preset, "seeds": seeds, "images": len(d.x_test),
        "gdc_per_column": gdc_per_column, "replicate": replicate, "tiles_used": dep.mapping.geometry.tiles,
        "float_accuracy": accuracy(run_float(graph, d.x_test), d.y_test),
        "results": [{"t_s": t, "gdc": g, "accuracy_mean": float(np.mean(acc[(t, g)])),
                     "accuracy_std": float(np.std(acc[(t, g)])), "accuracies": acc[(t, g)]}
                    for t in times for g in gdc],
    }


def plot_drift(results: list[dict], path: str | Path) -> None:
    """Accuracy vs. time after programming (log axis), one line per model and GDC setting. When
    both settings were run, a second panel zooms in on the compensated lines, which the collapse
    without compensation would flatten."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    both = all({r["gdc"] for r in result["results"]} == {False, True} for result in results)
    fig, axes = plt.subplots(1, 2 if both else 1, figsize=(12 if both else 7.5, 4.8), squeeze=False)
    for ax, settings in zip(axes[0], ((False, True), (True,)) if both else ((False, True),), strict=True):
        _plot_drift_panel(ax, results, settings)
    first = results[0]
    axes[0][0].set_ylabel(f"test accuracy (%), mean +- std over {first['seeds']} seeds")
    if both:
        axes[0][1].set_title("with drift compensation (zoom)", fontsize=10)
    copies = "column copies in idle columns" if first["replicate"] else "one copy per weight"
    fig.suptitle(f"accuracy vs. drift: {first['preset']} preset, {first['backend']}, {copies}, "
                 f"{first['images']} test images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_drift_panel(ax, results: list[dict], settings: tuple[bool, ...]) -> None:
    series = 0
    for index, result in enumerate(results):
        color = f"C{index}"
        gdc = "per-column GDC" if result["gdc_per_column"] else "GDC"
        for g in sorted({r["gdc"] for r in result["results"]} & set(settings)):
            rows = [r for r in result["results"] if r["gdc"] == g]
            dodge = 1.12**series  # side by side on the log axis, so the error bars stay apart
            series += 1
            ax.errorbar([r["t_s"] * dodge for r in rows], [100 * r["accuracy_mean"] for r in rows],
                        yerr=[100 * r["accuracy_std"] for r in rows], marker="o" if g else "s", capsize=3,
                        color=color, linestyle="-" if g else "--",
                        label=f"{result['model']} ({gdc if g else 'no GDC'})")
        ax.axhline(100 * result["float_accuracy"], color=color, linewidth=0.8, linestyle=":",
                   label=f"{result['model']} float")
    ax.set_xscale("log")
    ax.set_xlabel("time after programming (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
