"""`pcmhil demo`: the default MLP through the co-simulated chip, checked against the twin.

Programs the shipped HWA-trained digits MLP into the chip RTL under Verilator (with
program-and-verify through the chip's own commands), calibrates it, runs test images through
it, and runs the same workload on the twin with the same analog model and seed: the two must
agree on every activation of every layer, code for code.
"""

from __future__ import annotations

import time

import numpy as np

from pcmhil.host.evaluate import deploy, load_data, predictions_sha256
from pcmhil.host.frontends import load_model
from pcmhil.host.graph import run_float
from pcmhil.host.inference import accuracy

DEMO_MODEL = "digits-mlp"
DEMO_DATA = "digits"
DEMO_IMAGES = 120
DEMO_PRESET = "hermes-2dev"
DEMO_SEED = 1
#: Device time between programming and inference (drift), with global drift compensation.
DEMO_T_INFERENCE_S = 3600.0


def run_demo(progress=print, images: int = DEMO_IMAGES, mode: str = "transaction") -> dict:
    start = time.perf_counter()
    graph = load_model(DEMO_MODEL)
    data = load_data(DEMO_DATA, graph, images)
    float_logits = run_float(graph, data.x_test)
    results, traces, timing = {}, {}, {}
    for backend in ("twin", "cosim"):
        progress(f"[{backend}] mapping, programming (program-and-verify) and calibrating ...")
        t0 = time.perf_counter()
        dep = deploy(graph, data, backend, preset=DEMO_PRESET, seed=DEMO_SEED, mode=mode,
                     progress=lambda m, b=backend: progress(f"[{b}] {m}"))
        try:
            report = dep.program_reports[0].summary() if dep.program_reports else {}
            progress(f"[{backend}] programmed: {report}")
            dep.chip.advance_time(DEMO_T_INFERENCE_S)
            factors = dep.compensate_drift()
            progress(f"[{backend}] {DEMO_T_INFERENCE_S:.0f} s of drift, GDC factors {np.round(factors, 4)}")
            t1 = time.perf_counter()
            logits, trace = dep.run(data.x_test, trace=True)
            timing[backend] = {"setup_s": round(t1 - t0, 2), "run_s": round(time.perf_counter() - t1, 3)}
            progress(f"[{backend}] {len(data.x_test)} images in {timing[backend]['run_s']} s")
        finally:
            dep.chip.transport.close()
        results[backend] = logits
        traces[backend] = trace
        if backend == "twin":
            mapping = dep.mapping.report()
            program = report
    layers = []
    for node in graph.nodes:
        a, b = traces["twin"][node.name], traces["cosim"][node.name]
        layers.append({"layer": node.name, "op": node.op, "equal": bool(np.array_equal(a, b)),
                       "max_abs_diff": float(np.abs(a - b).max())})
    return {
        "model": DEMO_MODEL, "images": len(data.x_test), "preset": DEMO_PRESET, "mode": mode,
        "t_inference_s": DEMO_T_INFERENCE_S,
        "float_accuracy": accuracy(float_logits, data.y_test),
        "twin_accuracy": accuracy(results["twin"], data.y_test),
        "cosim_accuracy": accuracy(results["cosim"], data.y_test),
        "predictions_sha256": {k: predictions_sha256(np.argmax(v, axis=1)) for k, v in results.items()},
        "layers": layers, "all_layers_equal": all(layer["equal"] for layer in layers),
        "mapping": mapping, "programming": program, "timing": timing,
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_demo(result: dict) -> str:
    lines = [
        f"pcmhil demo: {result['model']} on {result['images']} digits test images, preset "
        f"{result['preset']}, {result['t_inference_s']:.0f} s after programming, GDC on",
        "",
        f"  accuracy   float {100 * result['float_accuracy']:6.2f} %   twin "
        f"{100 * result['twin_accuracy']:6.2f} %   cosim {100 * result['cosim_accuracy']:6.2f} %",
        f"  programming (program-and-verify): {result['programming']}",
        f"  mapping: {result['mapping']['tiles_used']} tile(s), utilisation "
        f"{result['mapping']['utilisation']:.1%}, {result['mapping']['mvms_per_inference']} MVMs per image",
        "",
        "  layer-wise agreement cosim vs twin:",
    ]
    for layer in result["layers"]:
        verdict = "identical" if layer["equal"] else f"DIFFERENT, max |diff| {layer['max_abs_diff']:g}"
        lines.append(f"    {layer['layer']:>6} {layer['op']:<10} {verdict}")
    lines += ["", f"  time: {result['timing']}  total {result['seconds']} s",
              "", "demo: OK" if result["all_layers_equal"] else "demo: FAILED (cosim and twin disagree)"]
    return "\n".join(lines)
