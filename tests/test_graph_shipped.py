"""The models shipped in host/models/: they load with numpy alone, reproduce the float accuracy
their records state, and their ONNX files compute the same function."""

from __future__ import annotations

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.host.datasets import load_dataset
from pcmhil.host.frontends import MODELS_DIR, load_model, shipped_models, shipped_record
from pcmhil.host.graph import run_float

SHIPPED = ("digits-cnn", "digits-mlp", "digits-mlp-300", "digits-mlp-nohwa", "mnist1d-cnn")


def test_the_models_ship_small_with_their_records():
    assert shipped_models() == list(SHIPPED)
    for name in SHIPPED:
        for ext in ("npz", "onnx", "pt", "json"):
            assert (MODELS_DIR / f"{name}.{ext}").stat().st_size < 1_000_000
        record = shipped_record(name)
        assert {"dataset", "split", "epochs", "seed", "hwa", "float_test_accuracy", "torch_version",
                "date", "train_seconds"} <= set(record)
    assert shipped_record("digits-mlp-nohwa")["hwa"]["weight_noise_rel"] == 0.0
    assert 0.03 <= shipped_record("digits-mlp")["hwa"]["weight_noise_rel"] <= 0.05
    assert [node.weight.shape for node in load_model("digits-mlp-300").mvm_nodes] == [(300, 64), (10, 300)]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reproduces_its_recorded_float_accuracy(name):
    record = shipped_record(name)
    graph = load_model(name)  # the .npz: no torch, no onnx
    data = load_dataset(record["dataset"], graph.input_shape)
    accuracy = (run_float(graph, data.x_test).argmax(axis=1) == data.y_test).mean()
    assert accuracy == record["float_test_accuracy"]
    assert accuracy >= {"digits": 0.97, "mnist1d": 0.90}[record["dataset"]]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_onnx_computes_what_the_npz_computes(name):
    pytest.importorskip("onnx")
    graph = load_model(name)
    x = np.random.default_rng(0).normal(size=(8, *graph.input_shape))
    reference = run_float(graph, x)
    np.testing.assert_allclose(run_float(load_model(MODELS_DIR / f"{name}.onnx"), x), reference,
                               rtol=0, atol=1e-12 * np.abs(reference).max())


def test_unknown_model_names_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"model must be a shipped model \(digits-cnn, digits-mlp, "
                                          r"digits-mlp-300, digits-mlp-nohwa, mnist1d-cnn\) or an .npz, "
                                          r"\.onnx or \.pt file, not 'resnet'"):
        load_model("resnet")
    with pytest.raises(ConfigError, match=r"model file must exist, not '.*missing.onnx'"):
        load_model(tmp_path / "missing.onnx")
