"""The layer graph on its own (numpy only): execution against direct loops, im2col, BatchNorm
folding, the .npz format, and one clear error per kind of bad model or input."""

from __future__ import annotations

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.host.graph import (
    from_npz,
    from_numpy,
    im2col,
    rows_to_feature_map,
    run_float,
    save_npz,
    to_numpy,
    weight_matrix,
)


def direct_conv(x, weight, bias, stride, padding):
    """Cross-correlation by explicit loops over output positions (x [N, C, H, W])."""
    x = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    kh, kw = weight.shape[2:]
    out_h = (x.shape[2] - kh) // stride[0] + 1
    out_w = (x.shape[3] - kw) // stride[1] + 1
    out = np.empty((x.shape[0], weight.shape[0], out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, weight) + bias
    return out


def direct_pool(x, kernel, stride, reduce):
    out_h = (x.shape[2] - kernel[0]) // stride[0] + 1
    out_w = (x.shape[3] - kernel[1]) // stride[1] + 1
    out = np.empty(x.shape[:2] + (out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, :, i * stride[0]:i * stride[0] + kernel[0], j * stride[1]:j * stride[1] + kernel[1]]
            out[:, :, i, j] = reduce(window, axis=(2, 3))
    return out


def conv_graph(weight, bias, stride, padding, in_shape):
    op = f"conv{weight.ndim - 2}d"
    return from_numpy({"input_shape": in_shape, "layers": [
        {"op": op, "name": "conv", "weight": weight, "bias": bias, "stride": stride, "padding": padding}]})


@pytest.mark.parametrize("stride, padding", [((1, 1), (0, 0)), ((1, 1), (1, 1)), ((2, 1), (1, 2))])
def test_conv2d_via_im2col_equals_direct_loops(stride, padding):
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(size=(4, 3, 3, 2)), rng.normal(size=4)
    x = rng.normal(size=(2, 3, 7, 6))
    graph = conv_graph(weight, bias, stride, padding, (3, 7, 6))
    node = graph.node("conv")
    expected = direct_conv(x, weight, bias, stride, padding)
    rows = im2col(x, node)
    assert rows.shape == (2 * expected.shape[2] * expected.shape[3], 3 * 3 * 2)
    via_matmul = rows_to_feature_map(rows @ weight_matrix(node).T + bias, node)
    np.testing.assert_allclose(via_matmul, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run_float(graph, x), expected, rtol=1e-12, atol=1e-12)
    assert node.output_shape == expected.shape[1:]


def test_conv1d_is_a_height_one_conv2d():
    rng = np.random.default_rng(2)
    weight, bias = rng.normal(size=(5, 2, 3)), rng.normal(size=5)
    x = rng.normal(size=(3, 2, 11))
    graph = conv_graph(weight, bias, 2, 1, (2, 11))
    expected = direct_conv(x[:, :, None, :], weight[:, :, None, :], bias, (1, 2), (0, 1))[:, :, 0, :]
    assert graph.node("conv").output_shape == (5, 6)
    np.testing.assert_allclose(run_float(graph, x), expected, rtol=1e-12, atol=1e-12)
    assert im2col(x, graph.node("conv")).shape == (3 * 6, 2 * 3)


def test_im2col_rows_are_output_positions_in_row_major_order():
    """A 1x1 identity conv: each im2col row is one pixel's channels, and the inverse reshape
    puts the rows back where they came from."""
    x = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    node = conv_graph(np.eye(3).reshape(3, 3, 1, 1), np.zeros(3), 1, 0, (3, 4, 5)).node("conv")
    rows = im2col(x, node)
    np.testing.assert_array_equal(rows[1 * 20 + 2 * 5 + 3], x[1, :, 2, 3])
    np.testing.assert_array_equal(rows_to_feature_map(rows, node), x)


@pytest.mark.parametrize("op, reduce", [("maxpool2d", np.max), ("avgpool2d", np.mean)])
def test_pooling_equals_direct_loops(op, reduce):
    x = np.random.default_rng(3).normal(size=(2, 3, 7, 8))
    graph = from_numpy({"input_shape": (3, 7, 8), "layers": [{"op": op, "kernel_size": (3, 2), "stride": 2}]})
    np.testing.assert_allclose(run_float(graph, x), direct_pool(x, (3, 2), (2, 2), reduce), rtol=1e-12)
    default_stride = from_numpy({"input_shape": (3, 7, 8), "layers": [{"op": op, "kernel_size": 2}]})
    assert default_stride.output_shape == (3, 3, 4)


def test_1d_pooling():
    x = np.random.default_rng(4).normal(size=(2, 3, 9))
    graph = from_numpy({"input_shape": (3, 9), "layers": [{"op": "maxpool1d", "kernel_size": 2}]})
    np.testing.assert_array_equal(run_float(graph, x), x[:, :, :8].reshape(2, 3, 4, 2).max(axis=-1))


def mlp_spec(rng, with_batchnorm=False):
    layers = [{"op": "linear", "name": "fc1", "weight": rng.normal(size=(6, 4)), "bias": rng.normal(size=6)}]
    if with_batchnorm:
        layers.append({"op": "batchnorm", "name": "bn", "weight": rng.uniform(0.5, 2, 6),
                       "bias": rng.normal(size=6), "running_mean": rng.normal(size=6),
                       "running_var": rng.uniform(0.5, 2, 6), "eps": 1e-3})
    layers += [{"op": "relu", "name": "act"}, {"op": "dropout"},
               {"op": "linear", "name": "fc2", "weight": rng.normal(size=(3, 6))}]
    return {"input_shape": (4,), "layers": layers}


def test_run_float_computes_the_mlp_and_traces_every_node():
    spec = mlp_spec(np.random.default_rng(5))
    x = np.random.default_rng(6).normal(size=(5, 4))
    fc1, fc2 = spec["layers"][0], spec["layers"][3]
    hidden = np.maximum(x @ fc1["weight"].T + fc1["bias"], 0)
    out, trace = run_float(from_numpy(spec), x, trace=True)
    np.testing.assert_allclose(out, hidden @ fc2["weight"].T, rtol=1e-12)
    assert list(trace) == ["fc1", "act", "fc2"]  # dropout is gone
    np.testing.assert_allclose(trace["act"], hidden, rtol=1e-12)


def test_batchnorm_folds_exactly_into_the_layer_before():
    spec = mlp_spec(np.random.default_rng(7), with_batchnorm=True)
    fc1, bn = spec["layers"][0], spec["layers"][1]
    x = np.random.default_rng(8).normal(size=(5, 4))
    unfolded = ((x @ fc1["weight"].T + fc1["bias"] - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3)
                * bn["weight"] + bn["bias"])
    graph = from_numpy(spec)
    assert [node.op for node in graph.nodes] == ["linear", "relu", "linear"]
    _, trace = run_float(graph, x, trace=True)
    np.testing.assert_allclose(trace["fc1"], unfolded, rtol=1e-13, atol=1e-13)


def test_batchnorm_folds_per_output_channel_of_a_conv():
    rng = np.random.default_rng(9)
    weight, channels = rng.normal(size=(4, 2, 3, 3)), 4
    bn = {"op": "batchnorm", "weight": rng.uniform(0.5, 2, channels), "bias": rng.normal(size=channels),
          "running_mean": rng.normal(size=channels), "running_var": rng.uniform(0.5, 2, channels)}
    graph = from_numpy({"input_shape": (2, 5, 5), "layers": [{"op": "conv2d", "weight": weight}, bn]})
    x = rng.normal(size=(2, 2, 5, 5))
    conv = direct_conv(x, weight, np.zeros(channels), (1, 1), (0, 0))
    per_channel = [(bn[k])[None, :, None, None] for k in ("running_mean", "running_var", "weight", "bias")]
    mean, var, gamma, beta = per_channel
    np.testing.assert_allclose(run_float(graph, x), (conv - mean) / np.sqrt(var + 1e-5) * gamma + beta,
                               rtol=1e-12, atol=1e-12)


def test_residual_add():
    rng = np.random.default_rng(10)
    w = rng.normal(size=(4, 4))
    graph = from_numpy({"input_shape": (4,), "layers": [
        {"op": "relu", "name": "a"}, {"op": "linear", "name": "b", "weight": w},
        {"op": "add", "name": "sum", "inputs": ["a", "b"]}]})
    x = rng.normal(size=(3, 4))
    np.testing.assert_allclose(run_float(graph, x), np.maximum(x, 0) + np.maximum(x, 0) @ w.T, rtol=1e-12)
    assert graph.node("sum").inputs == ("a", "b")


def cnn_spec(rng):
    return {"input_shape": (1, 6, 6), "layers": [
        {"op": "conv2d", "name": "c1", "weight": rng.normal(size=(3, 1, 3, 3)), "padding": 1},
        {"op": "relu", "name": "r1"},
        {"op": "conv2d", "name": "c2", "weight": rng.normal(size=(3, 3, 3, 3)), "bias": rng.normal(size=3),
         "padding": 1},
        {"op": "add", "inputs": ["r1", "c2"]},
        {"op": "avgpool2d", "kernel_size": 2}, {"op": "flatten"},
        {"op": "linear", "weight": rng.normal(size=(2, 27)), "bias": rng.normal(size=2)}]}


def test_npz_and_numpy_round_trips_are_exact(tmp_path):
    graph = from_numpy(cnn_spec(np.random.default_rng(11)))
    x = np.random.default_rng(12).normal(size=(4, 1, 6, 6))
    save_npz(graph, tmp_path / "model.npz")
    for rebuilt in (from_numpy(to_numpy(graph)), from_npz(tmp_path / "model.npz")):
        np.testing.assert_array_equal(run_float(rebuilt, x), run_float(graph, x))
        assert [(n.name, n.op, n.inputs, n.output_shape) for n in rebuilt.nodes] == \
               [(n.name, n.op, n.inputs, n.output_shape) for n in graph.nodes]


def test_graph_copies_weights_and_keeps_them_read_only():
    spec = mlp_spec(np.random.default_rng(13))
    weight = spec["layers"][0]["weight"]
    graph = from_numpy(spec)
    weight[0, 0] = 99.0
    assert graph.node("fc1").weight[0, 0] != 99.0
    with pytest.raises(ValueError, match="read-only"):
        graph.node("fc1").weight[0, 0] = 1.0


def layer_list(*layers, input_shape=(4,)):
    return {"input_shape": input_shape, "layers": list(layers)}


W4 = np.ones((4, 4))


@pytest.mark.parametrize("spec, message", [
    (layer_list({"op": "linear", "weight": W4}, {"op": "sigmoid", "name": "squash"}),
     r"op of node 'squash' must be one of the supported linear, conv1d, conv2d, relu, flatten, .*; "
     r"not 'sigmoid'"),
    (layer_list({"op": "linear", "name": "fc", "weight": np.where(np.eye(4), np.nan, 1.0)}),
     r"weight of layer 'fc' must be finite, not np.float64\(nan\) at index \(0, 0\)"),
    (layer_list({"op": "linear", "name": "fc", "weight": W4, "bias": [0, np.inf, 0, 0]}),
     r"bias of layer 'fc' must be finite, not np.float64\(inf\) at index \(1,\)"),
    (layer_list({"op": "linear", "name": "fc", "weight": np.ones((4, 5))}),
     r"linear layer 'fc' with weight \(4, 5\) must get input of shape \(5,\), not \(4,\)"),
    (layer_list({"op": "linear", "name": "fc", "wieght": W4}),
     r"keys of linear layer 'fc' must be among \('weight', 'bias'\), not \['wieght'\]"),
    (layer_list({"op": "linear", "name": "fc"}), r"linear layer 'fc' must have a 'weight' array"),
    (layer_list({"op": "relu", "inputs": ["nowhere"]}),
     r"must name earlier layers or 'input', not \['nowhere'\]"),
    (layer_list({"op": "relu", "name": "a"}, {"op": "relu", "name": "a"}),
     r"unique and not 'input', not 'a'"),
    (layer_list({"op": "relu", "name": "r"}, {"op": "batchnorm", "name": "bn", "weight": np.ones(4),
                                             "bias": np.zeros(4), "running_mean": np.zeros(4),
                                             "running_var": np.ones(4)}),
     r"batchnorm 'bn' must directly follow a linear or conv layer used by nothing else, not relu 'r'"),
    (layer_list({"op": "conv2d", "name": "c", "weight": np.ones((2, 1, 3, 3)), "groups": 2},
                input_shape=(1, 5, 5)),
     r"groups of conv2d layer 'c' must be 1, not 2"),
    (layer_list({"op": "conv2d", "name": "c", "weight": np.ones((2, 3, 3, 3))}, input_shape=(1, 5, 5)),
     r"conv2d layer 'c' with weight \(2, 3, 3, 3\) must get input of shape \(channels=3, 2 spatial dims\), "
     r"not \(1, 5, 5\)"),
    (layer_list({"op": "conv1d", "name": "c", "weight": np.ones((2, 1, 7))}, input_shape=(1, 5)),
     r"input \(5,\) of conv1d layer 'c' must be at least its kernel \(7,\)"),
    (layer_list({"op": "maxpool2d", "name": "p", "kernel_size": 2, "padding": 1}, input_shape=(1, 4, 4)),
     r"padding of maxpool2d layer 'p' must be 0, not 1"),
    (layer_list({"op": "avgpool1d", "name": "p", "kernel_size": 2, "ceil_mode": True}, input_shape=(1, 5)),
     r"ceil_mode of avgpool1d layer 'p' must be false"),
    (layer_list({"op": "flatten", "name": "f"}, {"op": "add", "name": "s", "inputs": ["input", "f"]},
                input_shape=(2, 2)),
     r"inputs of add layer 's' must have equal shapes, not \[\(2, 2\), \(4,\)\]"),
    ({"layers": []}, r"must have keys 'input_shape' and 'layers'"),
    (layer_list({"op": "dropout"}), r"must have a layer besides identity and dropout, not none"),
])
def test_bad_models_are_rejected_with_one_clear_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        from_numpy(spec)


def test_wrong_input_shape_names_expected_and_got():
    graph = from_numpy(cnn_spec(np.random.default_rng(14)))
    with pytest.raises(ConfigError, match=r"input must have shape \(N, 1, 6, 6\), not \(2, 36\)"):
        run_float(graph, np.zeros((2, 36)))


def test_npz_without_the_graph_arrays_is_rejected(tmp_path):
    np.savez(tmp_path / "weights.npz", w=np.ones(3))
    with pytest.raises(ConfigError, match=r"must have arrays 'input_shape' and 'layers', not be missing"):
        from_npz(tmp_path / "weights.npz")
