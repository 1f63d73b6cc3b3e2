"""Presets and the weight <-> conductance mapping: values, round trips, bounds, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.model import (
    PRESET_NAMES,
    Crossbar,
    CrossbarConfig,
    column_scales,
    conductance_to_weights,
    get_preset,
    weights_to_conductance,
)
from pcmhil.model.mapping import combine_devices, split_devices

# ---- presets ---------------------------------------------------------------------------------


def test_preset_names_and_published_constants():
    assert PRESET_NAMES == ("pcm", "hermes-2dev", "hermes-1dev", "projected", "ideal")
    pcm, two, one = get_preset("pcm"), get_preset("hermes-2dev"), get_preset("hermes-1dev")
    assert (pcm.g_max_us, pcm.t0_s, pcm.t_read_s, pcm.devices_per_polarity) == (25.0, 20.0, 250e-9, 1)
    assert (two.g_max_us, two.t0_s, two.t_read_s, two.devices_per_polarity) == (20.7, 300.0, 512e-9, 2)
    assert (one.g_max_us, one.t0_s, one.devices_per_polarity) == (10.35, 200.0, 1)
    assert two.g_max_device_us == one.g_max_us


@pytest.mark.parametrize("x", [0.0, 0.05, 0.3, 0.5, 1.0])
def test_fits_evaluate_the_reference_formulas(x):
    """REFERENCE.md formulas written out independently; coefficients lowest power first."""
    pcm, two, one = get_preset("pcm"), get_preset("hermes-2dev"), get_preset("hermes-1dev")
    xs, lx = np.array([x]), np.log(max(x, 1e-7))
    assert pcm.prog_sigma_us(xs)[0] == pytest.approx(max(-1.1731 * x**2 + 1.9650 * x + 0.26348, 0))
    mu, sd = pcm.nu_mean_std(xs)
    assert mu[0] == pytest.approx(np.clip(-0.0155 * lx + 0.0244, 0.049, 0.1))
    assert sd[0] == pytest.approx(np.clip(-0.0125 * lx - 0.0059, 0.008, 0.045))
    assert pcm.read_noise_q(xs)[0] == pytest.approx(min(0.0088 / max(x, 1e-7) ** 0.65, 0.2))
    assert two.prog_sigma_us(xs)[0] == pytest.approx(
        0.16603222 + 4.71806468 * x - 8.48101252 * x**2 + 4.68961419 * x**3)
    assert one.prog_sigma_us(xs)[0] == pytest.approx(
        0.15781817 + 2.32443916 * x - 2.16310839 * x**2 + 0.68841818 * x**3)
    mu2, sd2 = two.nu_mean_std(xs)
    assert mu2[0] == pytest.approx(np.clip(-0.0387 * lx - 0.0182, 0.072, 0.13) if x < 0.0945
                                   else -0.0436 * x**2 - 0.0126 * x + 0.0736)
    assert sd2[0] == pytest.approx(np.clip(-0.0117 * lx - 0.0057, 0.0091, 0.04) if x < 0.3055
                                   else -0.0118 * x**2 + 0.0093 * x + 0.0073)
    assert one.nu_mean_std(xs)[1][0] == pytest.approx(
        np.clip(-0.0120 * lx - 0.0023, 0.0124, 0.04) if x < 0.3039 else -0.0165 * x**2 + 0.0116 * x + 0.0104)
    assert two.read_noise_q(xs)[0] == pytest.approx(np.clip(-0.0117 * lx - 0.0069, 0.015, 0.04) if x < 0.16
                                                    else 0.0069 * x**3 - 0.0280 * x**2 + 0.0211 * x + 0.0123)
    assert one.read_noise_q(xs)[0] == pytest.approx(np.clip(-0.0078 * lx + 0.0038, 0.0179, 0.04) if x < 0.1591
                                                    else 0.0664 * x**3 - 0.1352 * x**2 + 0.0768 * x + 0.0088)


def test_derived_presets_scale_only_what_they_claim():
    pcm, projected, ideal = get_preset("pcm"), get_preset("projected"), get_preset("ideal")
    x = np.linspace(0, 1, 11)
    assert np.array_equal(projected.prog_sigma_us(x), pcm.prog_sigma_us(x))
    assert np.allclose(projected.read_noise_q(x), pcm.read_noise_q(x) / 10)
    assert projected.drift_scale == 0.1
    assert not ideal.prog_sigma_us(x).any() and not ideal.read_noise_q(x).any() and ideal.drift_scale == 0
    assert ideal.cco.output_noise_pulses == ideal.cco.nonlinearity_beta == 0


@pytest.mark.parametrize("call, message", [
    (lambda: get_preset("hermes"), r"preset must be one of 'pcm', 'hermes-2dev', 'hermes-1dev', "
                                   r"'projected', 'ideal', not 'hermes'"),
    (lambda: get_preset("pcm").prog_sigma_us([0.5, 1.2]),
     r"x must be within \[0.0, 1.0\], not 1.2 at index \(1,\)"),
    (lambda: get_preset("pcm").nu_mean_std(-0.1), r"x must be within \[0.0, 1.0\], not -0.1"),
    (lambda: get_preset("pcm").read_noise_q([np.nan]), r"x must be finite, not nan at index \(0,\)"),
    (lambda: dataclasses.replace(get_preset("pcm"), devices_per_polarity=3),
     r"devices_per_polarity must be an integer within \[1, 2\], not 3"),
    (lambda: dataclasses.replace(get_preset("pcm").cco, nonlinearity_beta=1e-9),
     r"nonlinearity_ref_pulses / nonlinearity_beta must be finite and <= 536870912.0 pulses, "
     r"not 384000000000.0"),
])
def test_bad_preset_arguments_are_named(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


# ---- mapping ---------------------------------------------------------------------------------


def test_differential_pair_and_column_scale():
    w = np.array([[0.5, -2.0], [-1.0, 4.0]])
    g = weights_to_conductance(w, 20.0)
    assert np.array_equal(column_scales(w), [1.0, 4.0])
    assert np.allclose(g[..., 0], [[10.0, 0.0], [0.0, 20.0]])
    assert np.allclose(g[..., 1], [[0.0, 10.0], [20.0, 0.0]])
    assert (g.min(axis=-1) == 0).all()  # one side of every pair at 0
    assert np.allclose(conductance_to_weights(g, 20.0, column_scales(w)), w)


def test_weights_beyond_the_scale_are_clipped():
    g = weights_to_conductance(np.array([[3.0, -3.0, 0.5]]), 10.0, column_scale=np.ones(3))
    assert np.allclose(g[0], [[10.0, 0.0], [0.0, 10.0], [5.0, 0.0]])
    assert g.min() >= 0 and g.max() <= 10.0


def test_round_trip_random_weights_and_all_zero_column():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 8))
    w[:, 3] = 0
    scale = column_scales(w)
    assert scale[3] == 1.0
    g = weights_to_conductance(w, 25.0, scale)
    assert np.all((0 <= g) & (g <= 25.0))
    assert np.allclose(conductance_to_weights(g, 25.0, scale), w, atol=1e-12)


@pytest.mark.parametrize("devices", [1, 2])
def test_devices_share_a_polarity_equally(devices):
    g = np.array([[[7.0, 0.0], [2.0, 3.0]]])
    split = split_devices(g, devices)
    assert split.shape == (1, 2, 2, devices)
    assert np.allclose(split, g[..., None] / devices)
    assert np.array_equal(combine_devices(split), g)


@pytest.mark.parametrize("devices", [1, 2])
def test_ideal_crossbar_round_trip_is_exact_within_quantisation(devices):
    """`ideal`: weights -> program -> read state (a day later) -> weights within the integer
    quantisation (half an LSB per device), and the integers are exactly the rounded targets."""
    rng = np.random.default_rng(1)
    w = rng.uniform(-1, 1, (16, 8))
    ideal = dataclasses.replace(get_preset("ideal"), devices_per_polarity=devices)
    bar = Crossbar(CrossbarConfig(preset=ideal, rows=16, cols=8))
    scale = bar.program_weights(w, op_index=0)
    bar.devices.advance_time(86400.0)
    lsb_weight = bar.conductance_lsb_us / bar.preset.g_max_us * scale
    assert np.all(np.abs(bar.read_weights(scale) - w) <= devices * 0.5 * lsb_weight + 1e-12)
    exact_int = np.rint(weights_to_conductance(w, bar.preset.g_max_us, scale) / devices
                        / bar.conductance_lsb_us) * devices
    assert np.array_equal(bar.read_int(), exact_int.astype(np.int64))


@pytest.mark.parametrize("call, message", [
    (lambda: weights_to_conductance(np.array([[1.0, np.nan]]), 25.0),
     r"weights must be finite, not nan at index \(0, 1\)"),
    (lambda: weights_to_conductance(np.ones(3), 25.0), r"weights must have shape \(any, any\), not \(3,\)"),
    (lambda: weights_to_conductance(np.ones((2, 3)), 25.0, column_scale=np.ones(2)),
     r"column_scale must have shape \(3\), not \(2,\)"),
    (lambda: weights_to_conductance(np.ones((2, 2)), 25.0, column_scale=[1.0, 0.0]),
     r"column_scale must be > 0, not 0.0 at index \(1,\)"),
    (lambda: weights_to_conductance(np.array([["a"]]), 25.0), r"weights must be a real array, not dtype"),
    (lambda: conductance_to_weights(np.ones((2, 2)), 25.0, np.ones(2)),
     r"g_us must have shape \(any, any, 2\)"),
    (lambda: split_devices(np.ones(2), 3), r"devices must be an integer within \[1, 2\], not 3"),
])
def test_bad_mapping_arguments_are_named(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
