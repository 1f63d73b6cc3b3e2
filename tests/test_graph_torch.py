"""The PyTorch frontend against PyTorch itself, and the three frontends against each other for
the same weights: torch module, its ONNX export (torch's default exporter), its numpy layer list."""

from __future__ import annotations

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.host.frontends import from_onnx, from_torch
from pcmhil.host.graph import from_numpy, run_float, to_numpy

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # torch's ONNX exporter needs it
nn = torch.nn


class ResidualCnn(nn.Module):
    """Conv + BatchNorm + residual add + both poolings, the op set of the issue in one block."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(16, 10)
        self.bn_fc = nn.BatchNorm1d(10)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y + nn.functional.relu(self.conv2(y))
        y = torch.flatten(self.avg(self.pool(y)), 1)
        return self.dropout(self.bn_fc(self.fc(y)))


def mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def cnn1d():
    return nn.Sequential(nn.Conv1d(1, 4, 5, padding=2, stride=2), nn.BatchNorm1d(4), nn.ReLU(),
                         nn.AvgPool1d(2), nn.Conv1d(4, 4, 3), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Flatten(), nn.Linear(16, 3))


def with_random_statistics(model):
    """Untrained BatchNorms are identities; give them statistics so folding is really tested."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -1, 1), (module.running_var, 0.5, 2),
                                          (module.weight, 0.5, 2), (module.bias, -1, 1)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


MODELS = {"mlp": (mlp, (64,)), "residual-cnn": (ResidualCnn, (1, 8, 8)), "cnn1d": (cnn1d, (1, 40))}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.13's exporter, about its own pytree use
@pytest.mark.parametrize("name", MODELS)
def test_torch_onnx_and_numpy_frontends_agree_with_pytorch(tmp_path, name):
    build, shape = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = with_random_statistics(build())
    x = np.random.default_rng(2).normal(size=(6, *shape))
    graph = from_torch(model, shape)
    float32_out = model(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    float64_out = model.double()(torch.tensor(x)).detach().numpy()
    model.float()
    out = run_float(graph, x)
    scale = np.abs(float64_out).max()
    # The same float64 arithmetic as torch's (BatchNorm folded), and torch's own float32 output.
    np.testing.assert_allclose(out, float64_out, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(out, float32_out, rtol=0, atol=1e-6 * scale)
    np.testing.assert_array_equal(run_float(from_numpy(to_numpy(graph)), x), out)
    torch.onnx.export(model, (torch.zeros(1, *shape),), str(tmp_path / "m.onnx"), external_data=False)
    # The ONNX file holds float32 weights (BatchNorm folded by torch's exporter in float32).
    np.testing.assert_allclose(run_float(from_onnx(tmp_path / "m.onnx"), x), out, rtol=0, atol=1e-6 * scale)


def test_batchnorm_folding_is_exact():
    model = with_random_statistics(nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, eps=1e-3)))
    graph = from_torch(model, (2, 5, 5))
    assert [node.op for node in graph.nodes] == ["conv2d"]
    x = np.random.default_rng(3).normal(size=(4, 2, 5, 5))
    np.testing.assert_allclose(run_float(graph, x), model.double()(torch.tensor(x)).detach().numpy(),
                               rtol=1e-13, atol=1e-13)


def test_node_names_follow_the_module_names():
    graph = from_torch(ResidualCnn().eval(), (1, 8, 8))
    assert [(node.name, node.op) for node in graph.nodes] == [
        ("conv", "conv2d"), ("relu", "relu"), ("conv2", "conv2d"), ("relu_1", "relu"), ("add", "add"),
        ("pool", "maxpool2d"), ("avg", "avgpool2d"), ("flatten", "flatten"), ("fc", "linear")]
    assert graph.node("add").inputs == ("relu", "relu_1")


class ViewModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(x.view(x.shape[0], -1))


@pytest.mark.parametrize("model, shape, message", [
    (nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()), (4,),
     r"op of node '_1' must be one of the supported Linear, Conv1d, Conv2d, ReLU, .*; not 'Sigmoid'"),
    (ViewModel(), (4, 4), r"op of node '.*' must be one of the supported .*\.relu\(\), .*; not '.*getattr'"),
    (nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 2)), (4,),
     r"linear layer '1' with weight \(2, 5\) must get input of shape \(5,\), not \(4,\)"),
    (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), (2, 5, 5), r"groups of conv2d layer '0' must be 1, not 2"),
    (nn.Sequential(nn.Conv2d(2, 2, 3, padding="same")), (2, 5, 5),
     r"padding of Conv2d '0' must be integer zero padding, not 'same'"),
    (nn.Sequential(nn.Flatten(0)), (2, 5), r"flatten must keep the batch dimension .* not start_dim=0"),
    (nn.Sequential(nn.MaxPool2d(2, dilation=2)), (1, 6, 6), r"dilation of MaxPool2d '0' must be 1, not 2"),
    (nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False)), (4,),
     r"BatchNorm1d '0' must track running statistics to be folded"),
    (nn.Sequential(nn.ReLU(), nn.BatchNorm1d(4)), (4,),
     r"batchnorm '1' must directly follow a linear or conv layer used by nothing else, not relu '0'"),
    (nn.Sequential(nn.Linear(4, 4)), (5,), r"linear layer '0' with weight \(4, 4\) must get input of shape"),
])
def test_bad_torch_models_are_rejected(model, shape, message):
    with pytest.raises(ConfigError, match=message):
        from_torch(model.eval(), shape)


def test_nan_weights_name_the_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[1, 3] = float("nan")
    with pytest.raises(ConfigError, match=r"weight of layer '2' must be finite, not np.float64\(nan\) at "
                                          r"index \(1, 3\)"):
        from_torch(model, (4,))
