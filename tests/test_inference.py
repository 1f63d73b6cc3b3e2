"""Mapping, calibration and execution of networks on the twin."""

from __future__ import annotations

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.host.compiler import map_graph, tile_codes
from pcmhil.host.evaluate import infer, load_data
from pcmhil.host.frontends import load_model
from pcmhil.host.graph import run_float


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
            used[b.row0:b.row0 + b.rows, b.col0:b.col0 + b.cols] += 1
        assert used.max() <= 1
        plus, minus = tile_codes(mapping, tile)
        assert (np.minimum(plus, minus) == 0).all()  # one polarity per weight


def test_small_tiles_split_everything():
    mapping = map_graph(load_model("digits-mlp"), rows=64, cols=64, max_tiles=8)
    report = mapping.report()
    assert report["tiles_used"] == 4  # diagonal packing: every 64x64 block fills a tile's rows
    assert [layer["blocks"] for layer in report["layers"].values()] == [2, 2]


def test_model_larger_than_the_chip_is_refused_with_numbers():
    expected = r"must fit in 2 tiles of 16x16, not need \d+: its MVM layers hold 22200 weights"
    with pytest.raises(ConfigError, match=expected):
        map_graph(load_model("digits-mlp-300"), rows=16, cols=16, max_tiles=2)


def test_ideal_preset_is_float_equivalent_with_splits():
    result = infer("digits-mlp-300", "digits", "twin", preset="ideal", t_inference_s=1.0)
    assert result["tiles_used"] == 3
    assert result["accuracy"] >= result["float_accuracy"] - 0.01


def test_infer_json_layout_and_float_backend():
    result = infer("digits-mlp", "digits", "float", images=50)
    assert set(result) == {"model", "backend", "preset", "images", "accuracy", "float_accuracy",
                           "t_inference_s", "seconds", "images_per_s", "tiles_used",
                           "predictions_sha256"}
    assert result["accuracy"] == result["float_accuracy"]
    graph = load_model("digits-mlp")
    data = load_data("digits", graph, 50)
    assert result["accuracy"] == np.mean(np.argmax(run_float(graph, data.x_test), 1) == data.y_test)


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
