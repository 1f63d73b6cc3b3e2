"""The layer graph every frontend produces and every backend executes.

A `Graph` is a list of `Node`s in topological order over a fixed op set: the MVM layers the chip
runs (`linear`, `conv1d`, `conv2d`) and the digital ops the host or the LDPU runs (`relu`,
`flatten`, max/average pooling, residual `add`). Weights are float64 in the PyTorch layout
(linear [out, in], conv [out, in, *kernel]); every node knows its static output shape without
the batch dimension, and the graph knows its input shape the same way.

The plain-numpy layer list below (`from_numpy`) is also the interchange format: the PyTorch and
ONNX frontends (host/frontends.py) translate into it, so BatchNorm folding, identity removal
and every validation happen once, here. It accepts a few import-only ops that never reach the
graph: `batchnorm` (folded into the preceding linear/conv layer, running statistics, i.e. eval
semantics) and `identity`/`dropout` (removed).

Numpy layer-list format::

    {"input_shape": (1, 8, 8),
     "layers": [{"op": "conv2d", "weight": W, "bias": b, "padding": 1},
                {"op": "relu"}, {"op": "maxpool2d", "kernel_size": 2},
                {"op": "flatten"}, {"op": "linear", "weight": W2, "bias": b2}]}

Every layer may carry a `name` (default: op + index) and `inputs` (default: the previous layer,
or the graph input "input" for the first). Per op:

- linear: weight [out, in], bias [out] (optional, default zeros). Input must be flat.
- conv1d / conv2d: weight [out, in, *kernel], bias, stride and padding (int or per-dimension
  tuple, default 1 and 0, zero padding on both sides); dilation and groups must be 1.
- maxpool1d/2d, avgpool1d/2d: kernel_size, stride (default kernel_size); padding must be 0 and
  ceil_mode false.
- relu, flatten (everything but the batch dimension), add (two inputs of equal shape).
- batchnorm: weight (gamma), bias (beta), running_mean, running_var, eps (default 1e-5).
- identity, dropout: no keys.

1-D layers keep their own ops and the PyTorch layout ([C, L] activations, [O, C, k] weights);
internally they run as 2-D layers of height 1, so one im2col serves both.

`save_npz`/`from_npz` store the same format in an .npz: `input_shape` (int array), `layers` (a
JSON string of the layer dicts without their arrays) and one array per layer parameter, keyed
`layer<index>.<key>`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pcmhil.errors import ConfigError

INPUT = "input"

#: Ops that the chip runs as matrix-vector multiplications.
MVM_OPS = ("linear", "conv1d", "conv2d")
#: Ops that run digitally (host or LDPU).
DIGITAL_OPS = ("relu", "flatten", "maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d", "add")
OPS = MVM_OPS + DIGITAL_OPS
#: Ops accepted on import only: folded (batchnorm) or removed (identity, dropout).
IMPORT_ONLY_OPS = ("batchnorm", "identity", "dropout")
IMPORT_OPS = OPS + IMPORT_ONLY_OPS

_CONV_KEYS = ("weight", "bias", "stride", "padding", "dilation", "groups")
_POOL_KEYS = ("kernel_size", "stride", "padding", "ceil_mode")
#: The parameter keys each op accepts besides op, name and inputs.
LAYER_KEYS = {
    "linear": ("weight", "bias"),
    "conv1d": _CONV_KEYS, "conv2d": _CONV_KEYS,
    "maxpool1d": _POOL_KEYS, "maxpool2d": _POOL_KEYS, "avgpool1d": _POOL_KEYS, "avgpool2d": _POOL_KEYS,
    "relu": (), "flatten": (), "add": (), "identity": (), "dropout": (),
    "batchnorm": ("weight", "bias", "running_mean", "running_var", "eps"),
}
_ARRAY_KEYS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True, eq=False)
class Node:
    """One layer. Shapes exclude the batch dimension; parameters are float64, PyTorch layout."""

    name: str
    op: str
    inputs: tuple[str, ...]
    output_shape: tuple[int, ...]
    weight: np.ndarray | None = None  # MVM ops only
    bias: np.ndarray | None = None  # MVM ops only (zeros when the source had none)
    kernel_size: tuple[int, ...] = ()  # conv and pool ops, one entry per spatial dimension
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()  # conv only; pools have none

    def __post_init__(self):
        for array in (self.weight, self.bias):
            if array is not None:
                array.setflags(write=False)  # nodes are values; a backend must not edit weights in place

    @property
    def spatial_dims(self) -> int:
        return len(self.kernel_size)


@dataclass(frozen=True, eq=False)
class Graph:
    input_shape: tuple[int, ...]
    nodes: tuple[Node, ...]
    _by_name: dict[str, Node] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {node.name: node for node in self.nodes})

    def node(self, name: str) -> Node:
        return self._by_name[name]

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.nodes[-1].output_shape

    @property
    def mvm_nodes(self) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.op in MVM_OPS)


# ----------------------------------------------------------------------------------------------
# Building: the numpy layer list -> Graph


@dataclass
class _Layer:
    """A parsed layer before folding: arrays are float64 copies and finite, attributes as given."""

    name: str
    op: str
    inputs: list[str]
    arrays: dict[str, np.ndarray]
    attrs: dict[str, object]


def from_numpy(spec: Mapping) -> Graph:
    """Build a Graph from the numpy layer-list format (module docstring)."""
    if "input_shape" not in spec or "layers" not in spec:
        raise ConfigError(f"a numpy model must have keys 'input_shape' and 'layers', not {sorted(spec)!r}")
    input_shape = _positive_ints(spec["input_shape"], "input_shape")
    raw_layers = list(spec["layers"])
    if not raw_layers:
        raise ConfigError("a numpy model must have at least one layer, not 0")
    unsupported = [(i, raw.get("op")) for i, raw in enumerate(raw_layers) if raw.get("op") not in IMPORT_OPS]
    if unsupported:
        index, op = unsupported[0]
        raise unsupported_op(op, raw_layers[index].get("name", f"layer {index}"), IMPORT_OPS)
    layers = _fold_batchnorms(_remove_passthrough(_parse_layers(raw_layers)))
    if not layers:
        raise ConfigError("a numpy model must have a layer besides identity and dropout, not none")
    return _build(input_shape, layers)


def unsupported_op(op, node: str, supported: Sequence[str]) -> ConfigError:
    """The one error every frontend raises, up front, for an op outside its supported set."""
    return ConfigError(f"op of node {node!r} must be one of the supported {', '.join(supported)}; "
                       f"not {op!r}")


def _parse_layers(raw_layers: Sequence[Mapping]) -> list[_Layer]:
    layers: list[_Layer] = []
    names = {INPUT}
    for index, raw in enumerate(raw_layers):
        op = raw["op"]
        name = str(raw.get("name", f"{op}{index}"))
        if name in names:
            raise ConfigError(f"layer names must be unique and not {INPUT!r}, not {name!r}")
        unknown = sorted(set(raw) - {"op", "name", "inputs", *LAYER_KEYS[op]})
        if unknown:
            raise ConfigError(f"keys of {op} layer {name!r} must be among {LAYER_KEYS[op]}, not {unknown!r}")
        default_inputs = [layers[-1].name if layers else INPUT]
        inputs = [str(i) for i in raw.get("inputs", default_inputs)]
        missing = [i for i in inputs if i not in names]
        if missing:
            raise ConfigError(f"inputs of layer {name!r} must name earlier layers or {INPUT!r}, "
                              f"not {missing!r}")
        arrays = {key: _finite_array(raw[key], name, key) for key in _ARRAY_KEYS if key in raw}
        attrs = {key: raw[key] for key in LAYER_KEYS[op] if key in raw and key not in _ARRAY_KEYS}
        layers.append(_Layer(name, op, inputs, arrays, attrs))
        names.add(name)
    return layers


def _finite_array(value, layer: str, key: str) -> np.ndarray:
    array = np.array(value, dtype=np.float64)  # a copy: the graph never shares the caller's arrays
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(f"{key} of layer {layer!r} must be finite, not {array[index]!r} at index {index}")
    return array


def _remove_passthrough(layers: list[_Layer]) -> list[_Layer]:
    """Drop identity/dropout layers, rewiring their consumers to their input."""
    alias: dict[str, str] = {}
    kept = []
    for layer in layers:
        layer.inputs = [alias.get(i, i) for i in layer.inputs]
        if layer.op in ("identity", "dropout"):
            _expect_inputs(layer, 1)
            alias[layer.name] = layer.inputs[0]
        else:
            kept.append(layer)
    return kept


def _fold_batchnorms(layers: list[_Layer]) -> list[_Layer]:
    """Fold each batchnorm into the MVM layer before it: y = gamma (Wx + b - mean) / sqrt(var + eps)
    + beta is again an affine layer, so the chip never sees the batchnorm."""
    by_name = {layer.name: layer for layer in layers}
    consumers: dict[str, int] = {}
    for layer in layers:
        for i in layer.inputs:
            consumers[i] = consumers.get(i, 0) + 1
    alias: dict[str, str] = {}
    kept = []
    for layer in layers:
        layer.inputs = [alias.get(i, i) for i in layer.inputs]
        if layer.op != "batchnorm":
            kept.append(layer)
            continue
        _expect_inputs(layer, 1)
        source = by_name.get(layer.inputs[0])
        if source is None or source.op not in MVM_OPS or consumers[source.name] != 1:
            what = "the graph input" if source is None else f"{source.op} {source.name!r}"
            raise ConfigError(f"batchnorm {layer.name!r} must directly follow a linear or conv layer used "
                              f"by nothing else, not {what}")
        _fold_into(source, layer)
        alias[layer.name] = source.name
    return kept


def _fold_into(source: _Layer, bn: _Layer) -> None:
    weight = _require_array(source, "weight")
    channels = weight.shape[0]
    params = {key: _require_array(bn, key) for key in ("weight", "bias", "running_mean", "running_var")}
    for key, value in params.items():
        if value.shape != (channels,):
            raise ConfigError(f"{key} of batchnorm {bn.name!r} must have shape ({channels},) to match "
                              f"{source.name!r}, not {value.shape}")
    eps = float(bn.attrs.get("eps", 1e-5))
    scale = params["weight"] / np.sqrt(params["running_var"] + eps)
    bias = source.arrays.get("bias", np.zeros(channels))
    source.arrays["weight"] = weight * scale.reshape((channels,) + (1,) * (weight.ndim - 1))
    source.arrays["bias"] = (bias - params["running_mean"]) * scale + params["bias"]


def _require_array(layer: _Layer, key: str) -> np.ndarray:
    if key not in layer.arrays:
        raise ConfigError(f"{layer.op} layer {layer.name!r} must have a {key!r} array, not none")
    return layer.arrays[key]


def _expect_inputs(layer: _Layer, count: int) -> None:
    if len(layer.inputs) != count:
        raise ConfigError(f"{layer.op} layer {layer.name!r} must have {count} input(s), not {layer.inputs!r}")


def _build(input_shape: tuple[int, ...], layers: list[_Layer]) -> Graph:
    shapes = {INPUT: input_shape}
    nodes = []
    for layer in layers:
        _expect_inputs(layer, 2 if layer.op == "add" else 1)
        node = _NODE_BUILDERS[layer.op](layer, [shapes[i] for i in layer.inputs])
        shapes[node.name] = node.output_shape
        nodes.append(node)
    return Graph(input_shape, tuple(nodes))


def _build_linear(layer: _Layer, in_shapes) -> Node:
    weight = _require_array(layer, "weight")
    if weight.ndim != 2 or in_shapes[0] != (weight.shape[1],):
        raise ConfigError(f"linear layer {layer.name!r} with weight {weight.shape} must get input of shape "
                          f"({weight.shape[1] if weight.ndim == 2 else '?'},), not {in_shapes[0]}")
    return Node(layer.name, "linear", tuple(layer.inputs), (weight.shape[0],), weight, _bias(layer, weight))


def _build_conv(layer: _Layer, in_shapes) -> Node:
    dims = _dims(layer.op)
    weight = _require_array(layer, "weight")
    in_shape = in_shapes[0]
    for key in ("dilation", "groups"):
        if _positive_ints(layer.attrs.get(key, 1), f"{key} of {layer.name!r}", dims) != (1,) * dims:
            raise ConfigError(f"{key} of {layer.op} layer {layer.name!r} must be 1, not {layer.attrs[key]!r}")
    if weight.ndim != 2 + dims or len(in_shape) != 1 + dims or in_shape[0] != weight.shape[1]:
        raise ConfigError(f"{layer.op} layer {layer.name!r} with weight {weight.shape} must get input of "
                          f"shape (channels={weight.shape[1] if weight.ndim > 1 else '?'}, "
                          f"{dims} spatial dims), not {in_shape}")
    kernel = tuple(weight.shape[2:])
    stride = _positive_ints(layer.attrs.get("stride", 1), f"stride of {layer.name!r}", dims)
    padding = _ints(layer.attrs.get("padding", 0), f"padding of {layer.name!r}", dims, minimum=0)
    spatial = _sliding_output(layer, in_shape[1:], kernel, stride, padding)
    return Node(layer.name, layer.op, tuple(layer.inputs), (weight.shape[0], *spatial), weight,
                _bias(layer, weight), kernel, stride, padding)


def _build_pool(layer: _Layer, in_shapes) -> Node:
    dims = _dims(layer.op)
    in_shape = in_shapes[0]
    if len(in_shape) != 1 + dims:
        raise ConfigError(f"{layer.op} layer {layer.name!r} must get input of shape (channels, {dims} "
                          f"spatial dims), not {in_shape}")
    if "kernel_size" not in layer.attrs:
        raise ConfigError(f"{layer.op} layer {layer.name!r} must have a kernel_size, not none")
    kernel = _positive_ints(layer.attrs["kernel_size"], f"kernel_size of {layer.name!r}", dims)
    stride = layer.attrs.get("stride")
    stride = kernel if stride is None else _positive_ints(stride, f"stride of {layer.name!r}", dims)
    if _ints(layer.attrs.get("padding", 0), f"padding of {layer.name!r}", dims, minimum=0) != (0,) * dims:
        raise ConfigError(f"padding of {layer.op} layer {layer.name!r} must be 0, "
                          f"not {layer.attrs['padding']!r}")
    if layer.attrs.get("ceil_mode", False):
        raise ConfigError(f"ceil_mode of {layer.op} layer {layer.name!r} must be false, not True")
    spatial = _sliding_output(layer, in_shape[1:], kernel, stride, (0,) * dims)
    return Node(layer.name, layer.op, tuple(layer.inputs), (in_shape[0], *spatial),
                kernel_size=kernel, stride=stride)


def _build_relu(layer: _Layer, in_shapes) -> Node:
    return Node(layer.name, "relu", tuple(layer.inputs), in_shapes[0])


def _build_flatten(layer: _Layer, in_shapes) -> Node:
    return Node(layer.name, "flatten", tuple(layer.inputs), (int(np.prod(in_shapes[0])),))


def _build_add(layer: _Layer, in_shapes) -> Node:
    if in_shapes[0] != in_shapes[1]:
        raise ConfigError(f"inputs of add layer {layer.name!r} must have equal shapes, not {in_shapes}")
    return Node(layer.name, "add", tuple(layer.inputs), in_shapes[0])


_NODE_BUILDERS = {
    "linear": _build_linear, "conv1d": _build_conv, "conv2d": _build_conv,
    "maxpool1d": _build_pool, "maxpool2d": _build_pool, "avgpool1d": _build_pool, "avgpool2d": _build_pool,
    "relu": _build_relu, "flatten": _build_flatten, "add": _build_add,
}


def _dims(op: str) -> int:
    return int(op[-2])  # "conv2d" -> 2


def _bias(layer: _Layer, weight: np.ndarray) -> np.ndarray:
    bias = layer.arrays.get("bias", np.zeros(weight.shape[0]))
    if bias.shape != (weight.shape[0],):
        raise ConfigError(f"bias of layer {layer.name!r} must have shape ({weight.shape[0]},), "
                          f"not {bias.shape}")
    return bias


def _sliding_output(layer: _Layer, size, kernel, stride, padding) -> tuple[int, ...]:
    out = tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding, strict=True))
    if min(out) < 1:
        raise ConfigError(f"input {tuple(size)} of {layer.op} layer {layer.name!r} must be at least its "
                          f"kernel {kernel} after padding {padding}, not smaller")
    return out


def _ints(value, what: str, count: int, minimum: int) -> tuple[int, ...]:
    values = (value,) * count if np.ndim(value) == 0 else tuple(np.asarray(value).ravel())
    if len(values) != count or any(int(v) != v or v < minimum for v in values):
        raise ConfigError(f"{what} must be {count} integer(s) >= {minimum}, not {value!r}")
    return tuple(int(v) for v in values)


def _positive_ints(value, what: str, count: int | None = None) -> tuple[int, ...]:
    return _ints(value, what, np.size(value) if count is None else count, minimum=1)


# ----------------------------------------------------------------------------------------------
# Back to the numpy format, and .npz files


def to_numpy(graph: Graph) -> dict:
    """The graph in the numpy layer-list format (folded: no batchnorm), so from_numpy(to_numpy(g))
    rebuilds the same graph."""
    layers = []
    for node in graph.nodes:
        layer = {"op": node.op, "name": node.name, "inputs": list(node.inputs)}
        if node.op in MVM_OPS:
            layer |= {"weight": node.weight, "bias": node.bias}
        if node.op.startswith("conv"):
            layer |= {"stride": list(node.stride), "padding": list(node.padding)}
        elif node.kernel_size:
            layer |= {"kernel_size": list(node.kernel_size), "stride": list(node.stride)}
        layers.append(layer)
    return {"input_shape": graph.input_shape, "layers": layers}


def save_npz(graph: Graph, path: str | Path) -> None:
    spec = to_numpy(graph)
    arrays = {}
    described = []
    for index, layer in enumerate(spec["layers"]):
        for key in _ARRAY_KEYS:
            if key in layer:
                arrays[f"layer{index}.{key}"] = layer.pop(key)
        described.append(layer)
    np.savez(path, input_shape=np.asarray(spec["input_shape"]), layers=np.asarray(json.dumps(described)),
             **arrays)


def from_npz(path: str | Path) -> Graph:
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in ("input_shape", "layers") if key not in data]
        if missing:
            raise ConfigError(f"model file {str(path)!r} must have arrays 'input_shape' and 'layers', "
                              f"not be missing {missing!r}")
        layers = json.loads(str(data["layers"]))
        for index, layer in enumerate(layers):
            layer.update({key: data[f"layer{index}.{key}"] for key in _ARRAY_KEYS
                          if f"layer{index}.{key}" in data})
        return from_numpy({"input_shape": tuple(data["input_shape"]), "layers": layers})


# ----------------------------------------------------------------------------------------------
# Execution: the `float` reference backend (float64, no quantisation)


def run_float(graph: Graph, x: np.ndarray, trace: bool = False):
    """Run a batch x [N, *graph.input_shape] in float64. Returns the output [N, *output_shape], or
    (output, {node name: activation}) with trace=True."""
    values = {INPUT: check_input(graph, x)}
    for node in graph.nodes:
        values[node.name] = execute_node(node, [values[i] for i in node.inputs])
    if trace:
        return values[graph.output], {node.name: values[node.name] for node in graph.nodes}
    return values[graph.output]


def check_input(graph: Graph, x) -> np.ndarray:
    """x as float64, after checking it is a batch of the graph's input shape."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[1:] != graph.input_shape:
        raise ConfigError(f"input must have shape (N, {', '.join(map(str, graph.input_shape))}), "
                          f"not {x.shape}")
    return x


def execute_node(node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    """One node in float64 on batched inputs; the backends reuse it for the digital ops."""
    return _EXECUTORS[node.op](node, *inputs)


def weight_matrix(node: Node) -> np.ndarray:
    """The MVM node's weights as a matrix [out, in]: for conv, `im2col(x) @ weight_matrix(node).T`."""
    return node.weight.reshape(node.weight.shape[0], -1)


def im2col(x: np.ndarray, node: Node) -> np.ndarray:
    """Patches [N * positions, in_channels * prod(kernel)] of a conv node's input x [N, C, *spatial]:
    one row per output position (row-major over the output's spatial dims, batch outermost),
    columns in the order of `weight_matrix(node)`, so the conv is one matrix product."""
    windows = _windows(x, node, node.padding)  # [N, C, *out, *kernel] as 2-D
    n, c, h, w, kh, kw = windows.shape
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * kh * kw)


def rows_to_feature_map(rows: np.ndarray, node: Node) -> np.ndarray:
    """Inverse reshape of im2col's row order: per-position outputs [N * positions, out_channels]
    -> the conv node's output [N, out_channels, *spatial]."""
    spatial = node.output_shape[1:]
    batched = rows.reshape(-1, *spatial, node.output_shape[0])
    return np.moveaxis(batched, -1, 1)


def _windows(x: np.ndarray, node: Node, padding: tuple[int, ...]) -> np.ndarray:
    """Strided sliding windows [N, C, out_h, out_w, k_h, k_w]; 1-D nodes run as height-1 2-D."""
    lift = 2 - node.spatial_dims
    x2 = x.reshape(x.shape[:2] + (1,) * lift + x.shape[2:])
    kernel, stride, pad = ((1,) * lift + node.kernel_size, (1,) * lift + node.stride, (0,) * lift + padding)
    x2 = np.pad(x2, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    windows = np.lib.stride_tricks.sliding_window_view(x2, kernel, axis=(2, 3))
    return windows[:, :, ::stride[0], ::stride[1]]


def _linear(node: Node, x: np.ndarray) -> np.ndarray:
    return x @ node.weight.T + node.bias


def _conv(node: Node, x: np.ndarray) -> np.ndarray:
    return rows_to_feature_map(im2col(x, node) @ weight_matrix(node).T + node.bias, node)


def _pool(reduce):
    def pool(node: Node, x: np.ndarray) -> np.ndarray:
        pooled = reduce(_windows(x, node, (0,) * node.spatial_dims), axis=(-2, -1))
        return pooled.reshape(x.shape[0], *node.output_shape)
    return pool


_EXECUTORS = {
    "linear": _linear, "conv1d": _conv, "conv2d": _conv,
    "relu": lambda node, x: np.maximum(x, 0.0),
    "flatten": lambda node, x: x.reshape(x.shape[0], -1),
    "maxpool1d": _pool(np.max), "maxpool2d": _pool(np.max),
    "avgpool1d": _pool(np.mean), "avgpool2d": _pool(np.mean),
    "add": lambda node, a, b: a + b,
}
