"""Mapping, calibration, drift compensation and execution of networks on the twin, the same
deployments through the cosim, and one clear error for each kind of bad input."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.host.cli import main
from pcmhil.host.compiler import map_graph, tile_codes
from pcmhil.host.evaluate import deploy, infer, load_data
from pcmhil.host.frontends import load_model
from pcmhil.host.graph import run_float
from pcmhil.model.presets import LogFit, get_preset


def test_wide_layer_is_split_over_rows_and_columns():
    graph = load_model("digits-mlp-300")
    mapping = map_graph(graph)
    layers = mapping.report()["layers"]
    first, second = (node.name for node in graph.mvm_nodes)
    assert (layers[first]["row_blocks"], layers[first]["col_blocks"]) == (1, 2)
    assert (layers[second]["row_blocks"], layers[second]["col_blocks"]) == (2, 1)
    # blocks of one tile never overlap
    for tile in range(mapping.geometry.tiles):
        used = np.zeros((256, 256), dtype=int)
        for b in mapping.blocks_of_tile(tile):
            used[b.row0:b.row0 + b.tile_rows, b.col0:b.col0 + b.tile_cols] += 1
        assert used.max() <= 1
        plus, minus = tile_codes(mapping, tile)
        assert (np.minimum(plus, minus) == 0).all()  # one polarity per weight


def test_small_tiles_split_everything():
    mapping = map_graph(load_model("digits-mlp"), rows=64, cols=64, max_tiles=8)
    report = mapping.report()
    assert report["tiles_used"] == 4  # diagonal packing: every 64x64 block fills a tile's rows
    assert [layer["blocks"] for layer in report["layers"].values()] == [2, 2]


def test_idle_columns_hold_copies_without_taking_more_tiles():
    graph = load_model("mnist1d-cnn")
    one = map_graph(graph, copies={})
    mapping = map_graph(graph)
    assert mapping.geometry.tiles == one.geometry.tiles == 2
    copies = [mapping.report()["layers"][name]["copies"] for name in ("0", "3", "6", "10")]
    # tile 0 holds the three convolutions (32 outputs each), tile 1 the classifier (10 outputs)
    assert copies == [[[1, 3]], [[1, 3]], [[1, 2]], [[1, 25]]]
    assert [np.any(tile_codes(mapping, t), axis=(0, 1)).sum() for t in range(2)] == [256, 250]
    for tile in range(mapping.geometry.tiles):
        for block, alone in zip(mapping.blocks_of_tile(tile), one.blocks_of_tile(tile), strict=True):
            held = tile_codes(mapping, tile)[0][block.row0:block.row0 + block.rows,
                                                block.col0:block.col0 + block.tile_cols]
            single = tile_codes(one, tile)[0][alone.row0:alone.row0 + alone.rows,
                                              alone.col0:alone.col0 + alone.cols]
            np.testing.assert_array_equal(held, np.tile(single, block.col_copies))
    with pytest.raises(ConfigError, match=r"copies of layer '0' must fit a 256x256 tile, not need 320x32"):
        map_graph(graph, copies={"0": (64, 1)})


def test_model_larger_than_the_chip_is_refused_with_numbers():
    expected = r"must fit in 2 tiles of 16x16, not need \d+: its MVM layers hold 22200 weights"
    with pytest.raises(ConfigError, match=expected):
        map_graph(load_model("digits-mlp-300"), rows=16, cols=16, max_tiles=2)


def test_ideal_preset_is_float_equivalent_with_splits():
    result = infer("digits-mlp-300", "digits", "twin", preset="ideal", t_inference_s=1.0)
    assert result["tiles_used"] == 3
    assert result["accuracy"] >= result["float_accuracy"] - 0.01


@pytest.mark.parametrize("copies", [{}, {"0": (2, 1), "2": (1, 3)}, None])
def test_ideal_preset_matches_float_predictions_with_any_copies(copies):
    """Without non-idealities the chip computes the float network up to int8 quantisation, however
    the weights are copied: over rows (currents add), over columns (outputs averaged), or not."""
    graph = load_model("digits-mlp")
    data = load_data("digits", graph, 120)
    dep = deploy(graph, data, "twin", preset="ideal", copies=copies)
    try:
        chip = np.argmax(dep.run(data.x_test), axis=1)
    finally:
        dep.chip.transport.close()
    assert np.mean(chip == np.argmax(run_float(graph, data.x_test), axis=1)) >= 0.99


def test_infer_json_layout_and_float_backend():
    result = infer("digits-mlp", "digits", "float", images=50)
    assert set(result) == {"model", "backend", "preset", "images", "accuracy", "float_accuracy",
                           "t_inference_s", "seconds", "images_per_s", "tiles_used",
                           "predictions_sha256"}
    assert result["accuracy"] == result["float_accuracy"]
    graph = load_model("digits-mlp")
    data = load_data("digits", graph, 50)
    assert result["accuracy"] == np.mean(np.argmax(run_float(graph, data.x_test), 1) == data.y_test)


def test_drift_compensation_recovers_a_uniform_drift():
    """With every device drifting by the same exponent and nothing else non-ideal, both the global
    and the per-column compensation must find the drift factor ((t + t0) / t0) ** nu: the ADC offset
    residue must not pull it towards 1 (it did while the reference read |raw|)."""
    nu, t = 0.06, 365 * 86400.0
    uniform = dataclasses.replace(get_preset("ideal"), drift_scale=1.0, nu_mean_fit=LogFit(0.0, nu, 0.0, 1.0))
    graph = load_model("mnist1d-cnn")
    data = load_data("mnist1d", graph, 100)
    dep = deploy(graph, data, "twin", preset=uniform, seed=1)
    try:
        fresh = dep.run(data.x_test)
        dep.chip.advance_time(t)
        expected = ((t + uniform.t0_s) / uniform.t0_s) ** nu
        assert dep.compensate_drift() == pytest.approx([expected] * 2, rel=0.02)
        # not all: the signal is 2.35 times fewer ADC counts now, so it is resolved more coarsely
        assert np.mean(np.argmax(dep.run(data.x_test), 1) == np.argmax(fresh, 1)) >= 0.85
        assert dep.compensate_drift(per_column=True) == pytest.approx([expected] * 2, rel=0.02)
        dep.reset_drift_compensation()
        assert np.mean(np.argmax(dep.run(data.x_test), 1) == np.argmax(fresh, 1)) < 0.5
    finally:
        dep.chip.transport.close()


@pytest.mark.parametrize("flags, settings", [([], [False, True]), (["--gdc"], [True]),
                                             (["--no-gdc"], [False])])
def test_drift_command_line_with_and_without_compensation(tmp_path, capsys, flags, settings):
    """The issue's form: pcmhil drift --model --data --times --seeds [--gdc/--no-gdc] --json --plot."""
    plot = tmp_path / "drift.png"
    argv = ["drift", "--model", "digits-mlp", "--contrast", "digits-mlp-nohwa", "--data", "digits",
            "--times", "86400,1", "--seeds", "2", "--images", "30", *flags, "--json", "--plot", str(plot)]
    assert main(argv) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [run["model"] for run in runs] == ["digits-mlp", "digits-mlp-nohwa"]
    for run in runs:
        assert (run["seeds"], run["images"], run["replicate"], run["gdc_per_column"]) == (2, 30, True, False)
        expected = [(t, g) for t in (1.0, 86400.0) for g in settings]
        assert [(r["t_s"], r["gdc"]) for r in run["results"]] == expected
        for r in run["results"]:
            assert len(r["accuracies"]) == 2 and r["accuracy_mean"] == pytest.approx(np.mean(r["accuracies"]))
    assert plot.stat().st_size > 10_000


def test_same_seed_same_predictions_on_the_twin():
    a = infer("digits-mlp", "digits", "twin", images=60, preset="pcm", seed=3, t_inference_s=86400)
    b = infer("digits-mlp", "digits", "twin", images=60, preset="pcm", seed=3, t_inference_s=86400)
    assert a["predictions_sha256"] == b["predictions_sha256"]


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "gpu"}, "backend must be one of"),
    ({"images": 0}, r"images must be an integer in \[1, 360\]"),
    ({"t_inference_s": -1.0}, "t_inference_s must be a finite number >= 0"),
])
def test_bad_inference_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        infer("digits-mlp", "digits", **{"backend": "twin", **kwargs})


def test_npz_without_labels_is_refused(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((3, 64)))
    with pytest.raises(ConfigError, match="y"):
        infer("digits-mlp", str(path), "float")


def test_deployment_refuses_inputs_of_the_wrong_shape():
    graph = load_model("digits-mlp")
    data = load_data("digits", graph, 8)
    dep = deploy(graph, data, "twin", preset="ideal")
    try:
        with pytest.raises(ConfigError, match=r"input must have shape \(N, 64\), not \(2, 63\)"):
            dep.run(np.zeros((2, 63)))
    finally:
        dep.chip.transport.close()


def _npz_model(path, layers, input_shape=(64,)):
    """A model file in graph.py's .npz format (arrays keyed layer<index>.<key>)."""
    arrays = {f"layer{i}.{key}": layer.pop(key) for i, layer in enumerate(layers)
              for key in ("weight", "bias") if key in layer}
    np.savez(path, input_shape=np.asarray(input_shape), layers=np.asarray(json.dumps(layers)), **arrays)
    return str(path)


def _bad_model(kind, tmp_path) -> tuple[str, str]:
    """(model, data) arguments of `pcmhil infer` with one thing wrong."""
    rng = np.random.default_rng(0)
    fc = {"op": "linear", "name": "fc", "weight": rng.normal(size=(10, 64))}
    if kind == "unsupported op":
        return _npz_model(tmp_path / "m.npz", [fc, {"op": "sigmoid", "name": "squash"}]), "digits"
    if kind == "NaN weights":
        fc["weight"][3, 5] = np.nan
        return _npz_model(tmp_path / "m.npz", [fc]), "digits"
    if kind == "larger than the chip":  # 9 column blocks of 64 x 233, one per tile; the chip has 8
        wide = {"op": "linear", "name": "wide", "weight": rng.normal(size=(2100, 64))}
        return _npz_model(tmp_path / "m.npz", [wide]), "digits"
    data = {"wrong input shape": {"x": np.zeros((3, 8, 8)), "y": np.arange(3)},
            "npz without x": {"y": np.arange(3)}, "npz without y": {"x": np.zeros((3, 64))}}[kind]
    np.savez(tmp_path / "d.npz", **data)
    return "digits-mlp", str(tmp_path / "d.npz")


@pytest.mark.parametrize("kind, message", [
    ("unsupported op", r"op of node 'squash' must be one of the supported linear, conv1d, .*; not 'sigmoid'"),
    ("NaN weights", r"weight of layer 'fc' must be finite, not np.float64\(nan\) at index \(3, 5\)"),
    ("larger than the chip", r"the model must fit in 8 tiles of 256x256, not need 9: its MVM layers hold "
                             r"134400 weights in 9 blocks of at most 256x256, and a tile holds blocks on "
                             r"disjoint rows and columns only \(the chip has 524288 cells\)"),
    ("wrong input shape", r"x in '.*d.npz' must have shape \(N, 64\) as the model expects, not \(3, 8, 8\)"),
    ("npz without x", r"data file '.*d.npz' must have arrays 'x' \(inputs\) and 'y' \(integer labels\), "
                      r"not be missing 'x'"),
    ("npz without y", r"data file '.*d.npz' must have arrays 'x' .* not be missing 'y'"),
])
def test_bad_input_gives_one_clear_error_from_the_command_line(tmp_path, capsys, kind, message):
    """Issue 6: each kind of bad input ends `pcmhil infer` with exit code 2 and one line saying what
    was wrong and what was expected (no traceback)."""
    model, data = _bad_model(kind, tmp_path)
    assert main(["infer", "--model", model, "--data", data, "--backend", "twin", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pcmhil infer: error: "), captured.err
    assert re.search(message, lines[0]), lines[0]


def _run_on_twin_and_cosim(model: str, images: int, preset: str, seed: int, t_inference_s: float,
                           verify: bool):
    """{backend: (logits, trace)} of the same deployment (same analog seed) on both backends."""
    graph = load_model(model)
    data = load_data("digits", graph, images)
    runs = {}
    for backend in ("twin", "cosim"):
        dep = deploy(graph, data, backend, preset=preset, seed=seed, verify=verify)
        try:
            dep.chip.advance_time(t_inference_s)
            dep.compensate_drift()
            runs[backend] = dep.run(data.x_test, trace=True)
        finally:
            dep.chip.transport.close()
    return graph, data, runs


def _assert_same_on_both(graph, runs) -> None:
    (twin, twin_trace), (cosim, cosim_trace) = runs["twin"], runs["cosim"]
    for node in graph.nodes:
        np.testing.assert_array_equal(cosim_trace[node.name], twin_trace[node.name], err_msg=node.name)
    assert np.array_equal(np.argmax(cosim, axis=1), np.argmax(twin, axis=1))


@pytest.mark.cosim
def test_split_network_is_identical_on_twin_and_cosim():
    """Issue 6: the 300-wide hidden layer (split over rows and columns of three tiles, with column
    copies) gives the same activations in every layer, hence the same predictions, through the RTL
    as on the twin, for the same seed: programming, calibration, drift, GDC, inference. One-shot
    programming keeps it short; the slow variant below programs with verify."""
    graph, _, runs = _run_on_twin_and_cosim("digits-mlp-300", 16, "pcm", 4, 3600.0, verify=False)
    assert map_graph(graph).geometry.tiles == 3
    _assert_same_on_both(graph, runs)


@pytest.mark.cosim
@pytest.mark.slow
def test_split_network_on_the_cosim_is_float_equivalent_with_the_ideal_preset():
    """All 360 test images, program-and-verify: identical to the twin, float-equivalent accuracy."""
    graph, data, runs = _run_on_twin_and_cosim("digits-mlp-300", 360, "ideal", 0, 1.0, verify=True)
    _assert_same_on_both(graph, runs)
    float_accuracy = np.mean(np.argmax(run_float(graph, data.x_test), axis=1) == data.y_test)
    assert np.mean(np.argmax(runs["cosim"][0], axis=1) == data.y_test) >= float_accuracy - 0.01
