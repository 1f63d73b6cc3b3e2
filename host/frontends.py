"""Frontends: a PyTorch module or an ONNX file -> the layer graph (host/graph.py).

Both translate into graph.py's numpy layer-list format and hand it to `from_numpy`, which folds
BatchNorm, drops identities and validates shapes and weights; so the three frontends cannot
disagree about what a model means. Every op outside a frontend's supported set is rejected
before anything is built, naming the op, the node and the set. torch and onnx are imported
lazily: loading a shipped .npz model needs neither.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pcmhil.errors import ConfigError
from pcmhil.host.graph import INPUT, Graph, from_npz, from_numpy, unsupported_op

#: Shipped models: <name>.npz (loads with numpy alone), .onnx, .pt and the .json record.
MODELS_DIR = Path(__file__).parent / "models"


def shipped_models() -> list[str]:
    return sorted(path.stem for path in MODELS_DIR.glob("*.json"))


def load_model(model: str | Path) -> Graph:
    """A shipped model by name, or a file: .npz (graph.py's format), .onnx, or .pt (as `train`
    writes it; needs torch)."""
    path = Path(model)
    if path.suffix not in (".npz", ".onnx", ".pt"):
        if str(model) not in shipped_models():
            raise ConfigError(f"model must be a shipped model ({', '.join(shipped_models())}) or an .npz, "
                              f".onnx or .pt file, not {str(model)!r}")
        path = MODELS_DIR / f"{model}.npz"
    if not path.is_file():
        raise ConfigError(f"model file must exist, not {str(path)!r}")
    if path.suffix == ".onnx":
        return from_onnx(path)
    if path.suffix == ".pt":
        from pcmhil.host.training import load_pt

        return load_pt(path)
    return from_npz(path)


def shipped_record(name: str) -> dict:
    """How a shipped model was made (dataset, split, noise, float accuracy, ...)."""
    if name not in shipped_models():
        raise ConfigError(f"model must be one of the shipped {', '.join(shipped_models())}, not {name!r}")
    return json.loads((MODELS_DIR / f"{name}.json").read_text())


# ----------------------------------------------------------------------------------------------
# PyTorch (torch.fx symbolic trace)


def from_torch(module, input_shape: Sequence[int]) -> Graph:
    """The graph of `module` (traced with torch.fx) for inputs of `input_shape` (without batch).

    Supported: nn.Linear, nn.Conv1d/2d (zero padding), nn.ReLU, nn.Flatten (start_dim 1),
    nn.MaxPool1d/2d, nn.AvgPool1d/2d, nn.BatchNorm1d/2d (folded, running statistics),
    nn.Dropout/nn.Identity (removed), and the functions `+`, torch.add, torch.relu, F.relu,
    torch.flatten(x, 1) and the methods .relu(), .flatten(1), .add() -- enough for
    Sequential-like models and residual blocks.
    """
    import torch.fx

    traced = torch.fx.symbolic_trace(module)
    modules = dict(traced.named_modules())
    tables = _torch_tables()
    supported = [*(t.__name__ for t in tables["call_module"]),
                 *(_function_name(f) for f in tables["call_function"]),
                 *(f".{m}()" for m in tables["call_method"])]
    for node in traced.graph.nodes:  # reject unsupported ops before converting anything
        if node.op in tables and _torch_key(node, modules) not in tables[node.op]:
            raise unsupported_op(_torch_op_name(node, modules), node.name, supported)
        if node.op == "get_attr":
            raise unsupported_op(f"tensor attribute {node.target}", node.name, supported)
    return from_numpy({"input_shape": tuple(input_shape), "layers": _torch_layers(traced, modules, tables)})


def _torch_layers(traced, modules, tables) -> list[dict]:
    import torch.fx

    names: dict = {}
    layers: list[dict] = []
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            if INPUT in names.values():
                raise ConfigError(f"a torch model must have one input, not a second one {node.name!r}")
            names[node] = INPUT
        elif node.op == "output":
            output = node.args[0]  # a Node, or a tuple/dict of them for several outputs
            _expect_last(names.get(output) if isinstance(output, torch.fx.Node) else output, layers,
                         "torch model")
        else:
            layer = tables[node.op][_torch_key(node, modules)](node, modules)
            data_inputs = [a for a in node.args if isinstance(a, torch.fx.Node)]
            if layer["op"] == "add" and len(data_inputs) != 2:
                raise ConfigError(f"add {node.name!r} must add two tensors of the model, not {node.args!r}")
            name = str(node.target) if node.op == "call_module" else node.name
            name = node.name if name in names.values() else name  # a module called twice
            names[node] = name
            layers.append({**layer, "name": name, "inputs": [names[a] for a in data_inputs]})
    return layers


def _expect_last(output, layers: list[dict], what: str) -> None:
    last = layers[-1]["name"] if layers else None
    if last is None or output != last:
        raise ConfigError(f"the output of a {what} must be its last layer {last!r}, not {output!r}")


def _torch_key(node, modules):
    return type(modules[node.target]) if node.op == "call_module" else node.target


def _torch_op_name(node, modules) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    return _function_name(node.target) if node.op == "call_function" else f".{node.target}()"


def _function_name(function) -> str:
    return f"{getattr(function, '__module__', None) or ''}.{function.__name__}".lstrip(".")


def _torch_tables() -> dict:
    """fx node kind -> {module type | function | method name: converter(node, modules) -> layer}."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def module_layer(convert):
        return lambda node, modules: convert(modules[node.target], node.target)

    def fixed(op):
        return lambda node, modules: {"op": op}

    return {
        "call_module": {
            nn.Linear: module_layer(_torch_linear), nn.Conv1d: module_layer(_torch_conv),
            nn.Conv2d: module_layer(_torch_conv), nn.ReLU: fixed("relu"),
            nn.Flatten: module_layer(_torch_flatten),
            nn.MaxPool1d: module_layer(_torch_pool), nn.MaxPool2d: module_layer(_torch_pool),
            nn.AvgPool1d: module_layer(_torch_pool), nn.AvgPool2d: module_layer(_torch_pool),
            nn.BatchNorm1d: module_layer(_torch_batchnorm), nn.BatchNorm2d: module_layer(_torch_batchnorm),
            nn.Dropout: fixed("dropout"), nn.Identity: fixed("identity"),
        },
        "call_function": {
            operator.add: _torch_add, torch.add: _torch_add, torch.relu: fixed("relu"), F.relu: fixed("relu"),
            torch.flatten: _torch_flatten_call,
        },
        "call_method": {"relu": fixed("relu"), "flatten": _torch_flatten_call, "add": _torch_add},
    }


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _torch_linear(module, name: str) -> dict:
    return {"op": "linear", "weight": _numpy(module.weight),
            **({"bias": _numpy(module.bias)} if module.bias is not None else {})}


def _torch_conv(module, name: str) -> dict:
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        raise ConfigError(f"padding of {type(module).__name__} {name!r} must be integer zero padding, "
                          f"not {module.padding!r} ({module.padding_mode})")
    return {"op": f"conv{module.weight.ndim - 2}d", "weight": _numpy(module.weight),
            **({"bias": _numpy(module.bias)} if module.bias is not None else {}),
            "stride": module.stride, "padding": module.padding, "dilation": module.dilation,
            "groups": module.groups}


def _torch_pool(module, name: str) -> dict:
    kind = type(module).__name__  # MaxPool2d, AvgPool1d, ...
    unsupported = {"dilation": 1, "return_indices": False, "divisor_override": None}
    for key, expected in unsupported.items():
        if getattr(module, key, expected) not in (expected, (expected,) * 2):
            raise ConfigError(f"{key} of {kind} {name!r} must be {expected!r}, not {getattr(module, key)!r}")
    return {"op": kind.lower(), "kernel_size": module.kernel_size,
            "stride": module.stride, "padding": module.padding, "ceil_mode": module.ceil_mode}


def _torch_batchnorm(module, name: str) -> dict:
    if module.running_mean is None:
        raise ConfigError(f"{type(module).__name__} {name!r} must track running statistics to be folded, not "
                          f"track_running_stats=False")
    channels = module.num_features
    return {"op": "batchnorm",
            "weight": _numpy(module.weight) if module.affine else np.ones(channels),
            "bias": _numpy(module.bias) if module.affine else np.zeros(channels),
            "running_mean": _numpy(module.running_mean), "running_var": _numpy(module.running_var),
            "eps": module.eps}


def _torch_flatten(module, name: str) -> dict:
    return _flatten_dims(module.start_dim, module.end_dim)


def _torch_flatten_call(node, modules) -> dict:
    dims = dict(zip(("start_dim", "end_dim"), node.args[1:], strict=False)) | dict(node.kwargs)
    return _flatten_dims(dims.get("start_dim", 0), dims.get("end_dim", -1))  # torch.flatten's defaults


def _flatten_dims(start_dim: int, end_dim: int) -> dict:
    if (start_dim, end_dim) != (1, -1):
        raise ConfigError(f"flatten must keep the batch dimension and flatten the rest (start_dim=1, "
                          f"end_dim=-1), not start_dim={start_dim!r}, end_dim={end_dim!r}")
    return {"op": "flatten"}


def _torch_add(node, modules) -> dict:
    if node.kwargs.get("alpha", 1) != 1:
        raise ConfigError(f"alpha of add {node.name!r} must be 1, not {node.kwargs['alpha']!r}")
    return {"op": "add"}


# ----------------------------------------------------------------------------------------------
# ONNX (parsed with the `onnx` package)

ONNX_OPS = ("Gemm", "MatMul", "Add", "Conv", "Relu", "Flatten", "Reshape", "MaxPool", "AveragePool",
            "BatchNormalization", "Identity", "Dropout", "Constant")


def from_onnx(path: str | Path) -> Graph:
    """The graph of an ONNX file with one input [batch, *shape] and the op set ONNX_OPS.

    MatMul followed by Add of a constant is a linear layer with bias; Reshape is accepted where it
    flattens (output [batch, features], checked with ONNX shape inference); the batch dimension
    of the input may be fixed (torch exports 1) or symbolic.
    """
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:  # reject unsupported ops before converting anything
        if node.op_type not in ONNX_OPS:
            raise unsupported_op(node.op_type, node.name or node.output[0], ONNX_OPS)
    return _OnnxReader(onnx.shape_inference.infer_shapes(model).graph).graph()


class _OnnxReader:
    """One pass over an ONNX graph's nodes (topologically sorted, as ONNX requires)."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.onnx_graph = graph
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                                for d in v.type.tensor_type.shape.dim]
                       for v in [*graph.input, *graph.value_info, *graph.output]}
        self.consumers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1
        self.names: dict[str, str] = {}  # ONNX value -> layer name
        self.layers: list[dict] = []

    def graph(self) -> Graph:
        data_inputs = [v.name for v in self.onnx_graph.input if v.name not in self.constants]
        if len(data_inputs) != 1:
            raise ConfigError(f"an ONNX model must have exactly one data input, not {data_inputs!r}")
        input_shape = self.shapes[data_inputs[0]][1:]
        if None in input_shape:
            raise ConfigError(f"the input of an ONNX model must have static dimensions after the batch, "
                              f"not {self.shapes[data_inputs[0]]!r}")
        self.names[data_inputs[0]] = INPUT
        for node in self.onnx_graph.node:
            self._read(node)
        outputs = [v.name for v in self.onnx_graph.output]
        if len(outputs) != 1:
            raise ConfigError(f"an ONNX model must have exactly one output, not {outputs!r}")
        _expect_last(self.names.get(outputs[0]), self.layers, "ONNX model")
        return from_numpy({"input_shape": tuple(input_shape), "layers": self.layers})

    def _read(self, node) -> None:
        import onnx

        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        name = node.name or node.output[0]
        if node.op_type == "Constant":
            self.constants[node.output[0]] = self._constant_attribute(attrs, name)
            return
        if node.op_type == "Add" and any(i in self.constants for i in node.input):
            self._add_bias(node, name)
            return
        reader = getattr(self, f"_{node.op_type.lower()}")
        layer = reader(node, attrs, name)
        data_inputs = [i for i in node.input if i and i not in self.constants]
        self.layers.append({**layer, "name": name, "inputs": [self._layer_of(i, name) for i in data_inputs]})
        self.names[node.output[0]] = name

    def _layer_of(self, value: str, node: str) -> str:
        if value not in self.names:
            raise ConfigError(f"input {value!r} of ONNX node {node!r} must come from an earlier node, not be "
                              f"undefined")
        return self.names[value]

    def _constant(self, value: str, node: str) -> np.ndarray:
        if value not in self.constants:
            raise ConfigError(f"input {value!r} of ONNX node {node!r} must be a constant (initializer), "
                              f"not computed")
        return self.constants[value]

    @staticmethod
    def _constant_attribute(attrs: dict, node: str) -> np.ndarray:
        from onnx import numpy_helper

        if "value" not in attrs:
            raise ConfigError(f"Constant {node!r} must hold a tensor 'value', not {sorted(attrs)!r}")
        return numpy_helper.to_array(attrs["value"])

    def _add_bias(self, node, name: str) -> None:
        """Add of a constant: accepted as the bias of the bias-less MVM layer right before it
        (MatMul + Add is how exporters write a linear layer)."""
        source, constant = (node.input[0], node.input[1]) if node.input[1] in self.constants else node.input
        previous = self.layers[-1] if self.layers else None
        if (previous is None or self.names.get(source) != previous["name"] or "bias" in previous
                or previous["op"] not in ("linear", "conv1d", "conv2d") or self.consumers[source] != 1):
            raise ConfigError(f"Add {name!r} of a constant must be the bias of the MatMul/Gemm/Conv right "
                              f"before it, not added to {source!r}")
        channels = previous["weight"].shape[0]
        bias = self.constants[constant]
        if bias.size != channels:
            raise ConfigError(f"bias {constant!r} of Add {name!r} must have {channels} values, "
                              f"not {bias.shape}")
        previous["bias"] = bias.reshape(channels)
        self.names[node.output[0]] = previous["name"]

    def _gemm(self, node, attrs, name) -> dict:
        if attrs.get("transA", 0):
            raise ConfigError(f"transA of Gemm {name!r} must be 0, not {attrs['transA']!r}")
        weight = self._constant(node.input[1], name) * attrs.get("alpha", 1.0)
        weight = weight if attrs.get("transB", 0) else weight.T
        layer = {"op": "linear", "weight": weight}
        if len(node.input) > 2 and node.input[2]:
            bias = self._constant(node.input[2], name) * attrs.get("beta", 1.0)
            # C may be a scalar, [n] or [1, n]
            layer["bias"] = np.broadcast_to(bias, (1, weight.shape[0])).reshape(-1)
        return layer

    def _matmul(self, node, attrs, name) -> dict:
        return {"op": "linear", "weight": self._constant(node.input[1], name).T}

    def _conv(self, node, attrs, name) -> dict:
        weight = self._constant(node.input[1], name)
        dims = weight.ndim - 2
        layer = {"op": f"conv{dims}d", "weight": weight, "stride": attrs.get("strides", 1),
                 "padding": self._symmetric_pads(attrs, name, dims), "dilation": attrs.get("dilations", 1),
                 "groups": attrs.get("group", 1)}
        if len(node.input) > 2 and node.input[2]:
            layer["bias"] = self._constant(node.input[2], name)
        return layer

    def _pool(self, node, attrs, name, kind: str) -> dict:
        kernel = attrs["kernel_shape"]
        if any(d != 1 for d in attrs.get("dilations", [])) or len(node.output) > 1:
            raise ConfigError(f"{node.op_type} {name!r} must have dilation 1 and one output, not "
                              f"dilations={attrs.get('dilations')!r}, outputs={list(node.output)!r}")
        return {"op": f"{kind}{len(kernel)}d", "kernel_size": kernel,
                "stride": attrs.get("strides", 1),  # ONNX's default stride is 1, not the kernel
                "padding": self._symmetric_pads(attrs, name, len(kernel)),
                "ceil_mode": bool(attrs.get("ceil_mode", 0))}

    def _maxpool(self, node, attrs, name) -> dict:
        return self._pool(node, attrs, name, "maxpool")

    def _averagepool(self, node, attrs, name) -> dict:
        return self._pool(node, attrs, name, "avgpool")

    @staticmethod
    def _symmetric_pads(attrs: dict, name: str, dims: int) -> list[int]:
        pads = list(attrs.get("pads", [0] * 2 * dims))
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") or pads[:dims] != pads[dims:]:
            raise ConfigError(f"padding of ONNX node {name!r} must be explicit and symmetric, not "
                              f"auto_pad={attrs.get('auto_pad')!r}, pads={pads!r}")
        return pads[:dims]

    def _relu(self, node, attrs, name) -> dict:
        return {"op": "relu"}

    def _add(self, node, attrs, name) -> dict:
        return {"op": "add"}

    def _flatten(self, node, attrs, name) -> dict:
        if attrs.get("axis", 1) != 1:
            raise ConfigError(f"axis of Flatten {name!r} must be 1, not {attrs['axis']!r}")
        return {"op": "flatten"}

    def _reshape(self, node, attrs, name) -> dict:
        in_shape, out_shape = self.shapes.get(node.input[0]), self.shapes.get(node.output[0])
        if (in_shape is None or out_shape is None or None in in_shape[1:] or len(out_shape) != 2
                or out_shape[1] != int(np.prod(in_shape[1:]))):
            raise ConfigError(f"Reshape {name!r} must flatten [batch, ...] to [batch, features], not "
                              f"{in_shape!r} -> {out_shape!r}")
        return {"op": "flatten"}

    def _batchnormalization(self, node, attrs, name) -> dict:
        if attrs.get("training_mode", 0) or len(node.output) > 1:
            raise ConfigError(f"BatchNormalization {name!r} must be in inference mode, not training_mode="
                              f"{attrs.get('training_mode')!r}")
        gamma, beta, mean, var = (self._constant(i, name) for i in node.input[1:5])
        return {"op": "batchnorm", "weight": gamma, "bias": beta, "running_mean": mean, "running_var": var,
                "eps": attrs.get("epsilon", 1e-5)}

    def _identity(self, node, attrs, name) -> dict:
        return {"op": "identity"}

    def _dropout(self, node, attrs, name) -> dict:
        return {"op": "dropout"}
