"""Hardware-aware training: a real (short) retraining, determinism, and the noise it injects."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.host.datasets import load_dataset
from pcmhil.host.frontends import load_model
from pcmhil.host.graph import run_float

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # torch's ONNX exporter needs it

from pcmhil.host.training import (  # noqa: E402
    HwaRecipe,
    fit_model,
    noisy_forward,
    quantisation_noise,
    train,
)


def test_retraining_a_small_model_writes_consistent_files_and_beats_chance(tmp_path):
    record = train("digits-mlp", None, 2, 0, tmp_path, name="small")
    assert record["float_test_accuracy"] > 0.6  # chance is 0.1; two epochs reach ~0.88
    assert json.loads((tmp_path / "small.json").read_text()) == record
    assert record["hwa"]["weight_noise_rel"] == 0.05 and record["epochs"] == 2 and record["seed"] == 0
    assert record["dataset"] == "digits" and record["split"].startswith("scikit-learn digits")
    assert record["torch_version"] == torch.__version__
    x = load_dataset("digits").x_test
    outputs = [run_float(load_model(tmp_path / f"small.{ext}"), x) for ext in ("npz", "pt", "onnx")]
    np.testing.assert_array_equal(outputs[1], outputs[0])
    np.testing.assert_allclose(outputs[2], outputs[0], rtol=0, atol=1e-12 * np.abs(outputs[0]).max())
    accuracy = (outputs[0].argmax(axis=1) == load_dataset("digits").y_test).mean()
    assert accuracy == record["float_test_accuracy"]


def state(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_training_is_deterministic_given_the_seed():
    recipe = HwaRecipe(0.05, input_levels=254, output_levels=254)
    first, again, other = (state(fit_model("digits-mlp", recipe, 1, seed)) for seed in (3, 3, 4))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["0.weight"], other["0.weight"])


def test_weight_noise_is_relative_to_the_layers_max_weight():
    """Joshi 2020: std = weight_noise_rel * max|w|, fresh every forward, biases untouched."""
    layer = torch.nn.Linear(200, 300)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    identity = torch.eye(200)
    generator = torch.Generator().manual_seed(0)
    clean = layer(identity)
    first = noisy_forward(layer, identity, HwaRecipe(0.04), generator) - clean
    second = noisy_forward(layer, identity, HwaRecipe(0.04), generator) - clean
    expected_std = 0.04 * layer.weight.abs().max().item()
    assert first.std().item() == pytest.approx(expected_std, rel=0.02)
    assert first.mean().item() == pytest.approx(0.0, abs=0.01 * expected_std)
    assert not torch.equal(first, second)
    assert torch.equal(noisy_forward(layer, identity, HwaRecipe(0.0), generator), clean)


def test_gradient_flows_through_the_noisy_weights_to_the_clean_ones():
    layer = torch.nn.Linear(3, 1, bias=False)
    x = torch.ones(1, 3)
    noisy_forward(layer, x, HwaRecipe(0.05), torch.Generator().manual_seed(0)).sum().backward()
    assert torch.equal(layer.weight.grad, x)  # d(sum((w + noise) x))/dw = x


def identity_layer(size):
    layer = torch.nn.Linear(size, size, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(size))
    return layer


def test_inputs_are_fake_quantised_while_training():
    layer = identity_layer(4)
    x = torch.tensor([[1.0, 0.4, -0.2, -1.0]])
    with quantisation_noise(layer, HwaRecipe(0.0, input_levels=3), torch.Generator()):
        assert layer(x).tolist() == [[1.0, 0.0, 0.0, -1.0]]  # 3 levels over |x| <= 1: -1, 0, 1
    assert torch.equal(layer(x), x)  # the hooks are gone afterwards


def test_output_noise_is_uniform_within_half_an_adc_step():
    layer = identity_layer(1000)
    y = torch.linspace(-2, 2, 1000)[None, :]
    with quantisation_noise(layer, HwaRecipe(0.0, output_levels=5), torch.Generator().manual_seed(0)):
        noise = layer(y) - y
    # 5 levels over [-2, 2]: a step of 1, so noise uniform in [-0.5, 0.5], std 1/sqrt(12).
    assert noise.abs().max().item() <= 0.5
    assert noise.std().item() == pytest.approx(12 ** -0.5, rel=0.1)


@pytest.mark.parametrize("call, message", [
    (lambda tmp: train("digits-resnet", None, 1, 0, tmp),
     r"model must be one of digits-mlp, .*, not 'digits-resnet'"),
    (lambda tmp: train("digits-mlp", 1.5, 1, 0, tmp), r"weight_noise_rel must be in \[0, 1\), not 1.5"),
    (lambda tmp: train("digits-mlp", None, 0, 0, tmp), r"epochs must be a positive integer, not 0"),
    (lambda tmp: HwaRecipe(0.03, input_levels=2), r"input_levels must be an integer >= 3 or None, not 2"),
])
def test_bad_training_arguments(tmp_path, call, message):
    with pytest.raises(ConfigError, match=message):
        call(tmp_path)


def test_a_foreign_pt_file_is_rejected(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match=r"a .pt model must be a dict with 'model' and 'state_dict'"):
        load_model(tmp_path / "weights.pt")


@pytest.mark.slow
def test_shipped_mlp_is_reproduced_by_its_record(tmp_path):
    from pcmhil.host.frontends import shipped_record

    record = shipped_record("digits-mlp")
    retrained = train(record["model"], record["hwa"]["weight_noise_rel"], record["epochs"], record["seed"],
                      tmp_path)
    assert retrained["float_test_accuracy"] == record["float_test_accuracy"]
    x = load_dataset("digits").x_test
    shipped = run_float(load_model("digits-mlp"), x)
    # Same seed, one thread: equal up to what a different CPU's float32 kernels may change.
    np.testing.assert_allclose(run_float(load_model(tmp_path / "digits-mlp.npz"), x), shipped,
                               rtol=0, atol=1e-4 * np.abs(shipped).max())
