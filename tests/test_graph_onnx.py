"""The ONNX frontend on hand-built ONNX graphs (float64 initialisers, so comparisons with the
numpy frontend for the same weights are exact up to summation order)."""

from __future__ import annotations

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.host.frontends import from_onnx
from pcmhil.host.graph import from_numpy, run_float

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def write_onnx(path, nodes, weights, input_shape, output, batch="N"):
    """An ONNX file with one float64 input [batch, *input_shape] and the given nodes."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [batch, *input_shape])],
        [helper.make_tensor_value_info(output, TensorProto.DOUBLE, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), name=k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


RNG = np.random.default_rng(0)
W1, B1, W2 = RNG.normal(size=(6, 4)), RNG.normal(size=6), RNG.normal(size=(3, 6))
X = RNG.normal(size=(5, 4))
NUMPY_MLP = from_numpy({"input_shape": (4,), "layers": [
    {"op": "linear", "weight": W1, "bias": B1}, {"op": "relu"}, {"op": "linear", "weight": W2}]})


@pytest.mark.parametrize("first_layer, weights", [
    ([helper.make_node("MatMul", ["x", "w1t"], ["mm"]), helper.make_node("Add", ["mm", "b1"], ["h"])],
     {"w1t": W1.T, "b1": B1}),
    ([helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1)], {"w1": W1, "b1": B1}),
    ([helper.make_node("Gemm", ["x", "w1t", "b1h"], ["h"], alpha=2.0, beta=0.5)],
     {"w1t": W1.T / 2, "b1h": (2 * B1)[None, :]}),
])
def test_linear_spellings_match_the_numpy_frontend(tmp_path, first_layer, weights):
    nodes = [*first_layer, helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Identity", ["r"], ["i"]), helper.make_node("MatMul", ["i", "w2t"], ["y"])]
    path = write_onnx(tmp_path / "mlp.onnx", nodes, {**weights, "w2t": W2.T}, (4,), "y")
    graph = from_onnx(path)
    assert [node.op for node in graph.nodes] == ["linear", "relu", "linear"]
    np.testing.assert_allclose(run_float(graph, X), run_float(NUMPY_MLP, X), rtol=1e-13, atol=1e-13)


def test_cnn_with_batchnorm_residual_and_pooling_matches_the_numpy_frontend(tmp_path):
    rng = np.random.default_rng(1)
    p = {"wc": rng.normal(size=(3, 2, 3, 3)), "bc": rng.normal(size=3), "gamma": rng.uniform(0.5, 2, 3),
         "beta": rng.normal(size=3), "mean": rng.normal(size=3), "var": rng.uniform(0.5, 2, 3),
         "wc2": rng.normal(size=(3, 3, 1, 1)), "wl": rng.normal(size=(2, 12)), "bl": rng.normal(size=2),
         "shape": np.array([-1, 12], dtype=np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], epsilon=2**-10),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Conv", ["r", "wc2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["r", "c2"], ["sum"]),
        helper.make_node("Dropout", ["sum"], ["d"]),
        helper.make_node("MaxPool", ["d"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[1, 1]),
        helper.make_node("Reshape", ["ap", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wl", "bl"], ["y"], transB=1),
    ]
    graph = from_onnx(write_onnx(tmp_path / "cnn.onnx", nodes, p, (2, 4, 4), "y"))
    reference = from_numpy({"input_shape": (2, 4, 4), "layers": [
        {"op": "conv2d", "name": "c", "weight": p["wc"], "bias": p["bc"], "padding": 1},
        {"op": "batchnorm", "weight": p["gamma"], "bias": p["beta"], "running_mean": p["mean"],
         "running_var": p["var"], "eps": 2**-10},  # ONNX float attributes are float32
        {"op": "relu", "name": "r"}, {"op": "conv2d", "name": "c2", "weight": p["wc2"]},
        {"op": "add", "inputs": ["r", "c2"]}, {"op": "maxpool2d", "kernel_size": 2},
        {"op": "avgpool2d", "kernel_size": 1}, {"op": "flatten"},
        {"op": "linear", "weight": p["wl"], "bias": p["bl"]}]})
    x = rng.normal(size=(3, 2, 4, 4))
    assert [n.op for n in graph.nodes] == [n.op for n in reference.nodes]
    np.testing.assert_allclose(run_float(graph, x), run_float(reference, x), rtol=1e-12, atol=1e-12)


def test_fixed_batch_of_one_and_flatten_and_conv1d(tmp_path):
    """torch exports a batch of 1; the graph still runs any batch."""
    rng = np.random.default_rng(2)
    weights = {"w": rng.normal(size=(2, 1, 3))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3], pads=[1, 1], strides=[2]),
             helper.make_node("Flatten", ["c"], ["y"], axis=1)]
    graph = from_onnx(write_onnx(tmp_path / "c1.onnx", nodes, weights, (1, 7), "y", batch=1))
    assert graph.input_shape == (1, 7) and graph.output_shape == (8,)
    reference = from_numpy({"input_shape": (1, 7), "layers": [
        {"op": "conv1d", "weight": weights["w"], "stride": 2, "padding": 1}, {"op": "flatten"}]})
    x = rng.normal(size=(4, 1, 7))
    np.testing.assert_array_equal(run_float(graph, x), run_float(reference, x))


def test_unsupported_op_is_rejected_naming_op_node_and_supported_set(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Sigmoid", ["h"], ["y"], name="squash")]
    path = write_onnx(tmp_path / "bad.onnx", nodes, {"w": np.ones((4, 4))}, (4,), "y")
    with pytest.raises(ConfigError, match=r"op of node 'squash' must be one of the supported Gemm, MatMul, "
                                          r"Add, Conv, Relu, .*; not 'Sigmoid'"):
        from_onnx(path)


def test_nan_weights_name_the_layer(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)]
    path = write_onnx(tmp_path / "nan.onnx", nodes, {"w": np.where(np.eye(4), np.nan, 0.0)}, (4,), "y")
    with pytest.raises(ConfigError, match=r"weight of layer 'fc' must be finite, not np.float64\(nan\)"):
        from_onnx(path)


@pytest.mark.parametrize("nodes, weights, message", [
    ([helper.make_node("Add", ["x", "c"], ["y"], name="shift")], {"c": np.ones(4)},
     r"Add 'shift' of a constant must be the bias of the MatMul/Gemm/Conv right before it"),
    ([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")], {"s": np.array([-1, 2, 2])},
     r"Reshape 'rs' must flatten \[batch, ...\] to \[batch, features\], not \[None, 4\] -> \[None, 2, 2\]"),
    ([helper.make_node("Gemm", ["x", "w"], ["y"], name="g", transA=1)], {"w": np.ones((4, 4))},
     r"transA of Gemm 'g' must be 0, not 1"),
    ([helper.make_node("MatMul", ["x", "x"], ["y"], name="sq")], {},
     r"input 'x' of ONNX node 'sq' must be a constant \(initializer\), not computed"),
])
def test_bad_onnx_graphs_are_rejected(tmp_path, nodes, weights, message):
    with pytest.raises(ConfigError, match=message):
        from_onnx(write_onnx(tmp_path / "bad.onnx", nodes, weights, (4,), "y"))


def test_asymmetric_padding_is_rejected(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="c", kernel_shape=[3, 3], pads=[0, 0, 1, 1])]
    path = write_onnx(tmp_path / "pad.onnx", nodes, {"w": np.ones((1, 1, 3, 3))}, (1, 5, 5), "y")
    with pytest.raises(ConfigError, match=r"padding of ONNX node 'c' must be explicit and symmetric"):
        from_onnx(path)


def test_wrong_input_shape_for_an_onnx_model(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = from_onnx(write_onnx(tmp_path / "m.onnx", nodes, {"w": np.ones((4, 2))}, (4,), "y"))
    with pytest.raises(ConfigError, match=r"input must have shape \(N, 4\), not \(3, 5\)"):
        run_float(graph, np.zeros((3, 5)))
