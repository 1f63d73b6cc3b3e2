"""PCM devices: program-and-verify, pulses, time, faults, keyed determinism, argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.model import Crossbar, CrossbarConfig, DeviceArray, FaultRates, get_preset, weights_to_conductance

ROWS, COLS = 16, 256


def dnn_weights(seed: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Gaussian weights clipped at 3 sigma: the distribution the '< 3 % mean weight error'
    anchor of closed-loop programming refers to (trained DNN layers)."""
    return np.clip(np.random.default_rng(seed).standard_normal((rows, cols)), -3, 3)


def weight_error(array: DeviceArray, targets: np.ndarray, row_errors: list[np.ndarray]) -> np.ndarray:
    """(G+ - G-) error relative to g_max, i.e. weight error relative to the column's w_max."""
    per_polarity = np.array(row_errors).sum(axis=-1)
    return (per_polarity[..., 0] - per_polarity[..., 1]) / array.preset.g_max_us


# ---- program-and-verify ------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["pcm", "hermes-2dev", "hermes-1dev"])
def test_program_and_verify_reaches_the_published_anchor(preset):
    """REFERENCE.md: closed-loop tuning to < 3 % mean weight error; iteration counts reported."""
    p = get_preset(preset)
    array = DeviceArray(p, ROWS, COLS, seed=5)
    w = dnn_weights(5)
    targets = weights_to_conductance(w, p.g_max_us)
    results = [array.program_row_verify(r, targets[r], op_index=r, tolerance_us=0.01 * p.g_max_device_us,
                                        max_iterations=20) for r in range(ROWS)]
    error = weight_error(array, targets, [r.error_us for r in results])
    iterations = np.array([r.iterations for r in results])
    assert np.abs(error).mean() < 0.03
    assert 1.0 < iterations.mean() < 10 and iterations.max() <= 20 and iterations.min() == 0
    assert np.mean([r.converged for r in results]) > 0.95
    # closed loop beats one-shot programming with the same statistics
    one_shot = DeviceArray(p, ROWS, COLS, seed=5)
    one_shot.program_array(targets, op_index=0)
    g = one_shot.g_prog_us.sum(axis=-1)
    one_shot_error = ((g[..., 0] - g[..., 1]) - (targets[..., 0] - targets[..., 1])) / p.g_max_us
    assert np.abs(error).mean() < 0.8 * np.abs(one_shot_error).mean()


def test_verify_error_is_what_the_array_holds():
    p = get_preset("hermes-2dev")
    array = DeviceArray(p, 2, 64, seed=1)
    targets = weights_to_conductance(dnn_weights(1, 2, 64), p.g_max_us)
    result = array.program_row_verify(1, targets[1], op_index=3, tolerance_us=0.1, max_iterations=15)
    assert result.error_us.shape == result.iterations.shape == result.converged.shape == (64, 2, 2)
    assert np.allclose(result.error_us, array.g_prog_us[1] - targets[1][..., None] / 2)
    assert not array.g_prog_us[0].any()  # other rows untouched


def test_ideal_pulses_converge_within_a_few_iterations():
    p = get_preset("ideal")
    array = DeviceArray(p, 1, 128, seed=0)
    targets = weights_to_conductance(dnn_weights(2, 1, 128), p.g_max_us)[0]
    result = array.program_row_verify(0, targets, op_index=0, tolerance_us=0.005 * p.g_max_us)
    assert result.converged.all() and result.iterations.max() <= 8
    assert np.abs(result.error_us).max() <= 0.005 * p.g_max_us


def test_pulse_response_is_state_dependent_stochastic_and_bounded():
    p = get_preset("pcm")
    array = DeviceArray(p, 1, 2000, seed=4)
    set_all = np.tile([127, 0], (2000, 1))
    steps = []
    for op in range(12):
        before = array.g_prog_us[0, :, 0, 0].copy()
        array.apply_pulses(0, set_all, op_index=op)
        steps.append(array.g_prog_us[0, :, 0, 0] - before)
    steps = np.array(steps)
    assert (steps >= 0).all() and (array.g_prog_us <= p.g_max_device_us).all()
    assert steps[0].mean() > 3 * steps[5].mean() > 0  # steps shrink as the device fills
    assert steps[0].std() / steps[0].mean() == pytest.approx(p.pulse.step_sigma_rel, rel=0.1)
    assert not array.g_prog_us[0, :, 1].any()  # code 0: no pulse
    array.apply_pulses(0, -set_all, op_index=99)
    assert (array.g_prog_us >= 0).all()
    assert array.g_prog_us[0, :, 0].mean() < 0.2 * p.g_max_device_us
    half = DeviceArray(p, 1, 2000, seed=4)
    half.apply_pulses(0, set_all // 2, op_index=0)  # amplitude 63/127
    assert half.g_prog_us[0, :, 0, 0].mean() == pytest.approx(steps[0].mean() * 63 / 127, rel=0.02)


# ---- time ------------------------------------------------------------------------------------


def test_each_device_remembers_its_programming_time_and_drifts_from_it():
    p = get_preset("pcm")
    array = DeviceArray(p, 2, 500, seed=0)
    target = np.tile([12.5, 0.0], (500, 1))
    array.program_row(0, target, op_index=0)
    array.advance_time(1000.0)
    array.program_row(1, target, op_index=1)
    assert (array.t_prog_s[0] == 0).all() and (array.t_prog_s[1] == 1000).all()
    array.set_time(1000.0 + 86400.0)
    ratio = array.g_drift_us[..., 0, 0] / array.g_prog_us[..., 0, 0]
    nu = array.nu[..., 0]
    assert np.allclose(ratio[0], ((87400 + p.t0_s) / p.t0_s) ** -nu[0])
    assert np.allclose(ratio[1], ((86400 + p.t0_s) / p.t0_s) ** -nu[1])
    with pytest.raises(ConfigError, match=r"t_s must be finite and >= 1000.0 s \(the last programming time"):
        array.set_time(500.0)


def test_read_state_is_drawn_once_per_time_event():
    bar = Crossbar(CrossbarConfig(preset="hermes-2dev", rows=8, cols=8, seed=2))
    bar.program_weights(dnn_weights(0, 8, 8), op_index=0)
    bar.devices.set_time(60.0)
    first = bar.read_int()
    assert np.array_equal(bar.read_int(), first)  # reads at the same time see the same state
    bar.devices.set_time(60.0)
    assert np.array_equal(bar.read_int(), first)  # the realisation is keyed by the time
    bar.devices.advance_time(0.0)
    assert np.array_equal(bar.read_int(), first)
    bar.devices.set_time(61.0)
    assert not np.array_equal(bar.read_int(), first)  # a new time: a new 1/f realisation


@pytest.mark.parametrize("call, message", [
    (lambda a: a.set_time(-1.0), r"t_s must be finite and >= 0.0 s"),
    (lambda a: a.set_time(float("nan")), r"t_s must be finite and >= 0.0 s"),
    (lambda a: a.advance_time(-5), r"dt_s must be finite and >= 0.0 s, not -5.0"),
    (lambda a: a.program_row(4, np.zeros((8, 2)), 0), r"row must be an integer within \[0, 3\], not 4"),
    (lambda a: a.program_row(0, np.zeros((8, 3)), 0), r"g_target_us must have shape \(8, 2\), not \(8, 3\)"),
    (lambda a: a.program_row(0, np.full((8, 2), 26.0), 0),
     r"g_target_us must be within \[0.0, 25.0\] uS, not 26.0 at index \(0, 0\)"),
    (lambda a: a.program_row(0, np.full((8, 2), -1.0), 0),
     r"g_target_us must be within \[0.0, 25.0\] uS, not -1.0"),
    (lambda a: a.program_row(0, np.full((8, 2), np.nan), 0), r"g_target_us must be finite, not nan"),
    (lambda a: a.program_row(0, np.zeros((8, 2)), -1),
     r"op_index must be an integer within \[0, 18446744073709551615\]"),
    (lambda a: a.program_array(np.zeros((3, 8, 2)), 0), r"g_target_us must have shape \(4, 8, 2\)"),
    (lambda a: a.program_row_verify(0, np.zeros((8, 2)), 0, tolerance_us=-1.0),
     r"tolerance_us must be finite and >= 0.0 uS, not -1.0"),
    (lambda a: a.program_row_verify(0, np.zeros((8, 2)), 0, tolerance_us=1.0, max_iterations=-1),
     r"max_iterations must be an integer within \[0, 10000\], not -1"),
    (lambda a: a.apply_pulses(0, np.full((8, 2), 200), 0),
     r"pulse_codes must be within \[-128, 127\], not 200"),
    (lambda a: a.apply_pulses(0, np.full((8, 2), 1.5), 0),
     r"pulse_codes must be an integer array, not dtype 'float64'"),
])
def test_bad_device_arguments_are_named(call, message):
    with pytest.raises(ConfigError, match=message):
        call(DeviceArray(get_preset("pcm"), 4, 8))


def test_bad_fault_rates_are_named():
    with pytest.raises(ConfigError, match=r"stuck_set must be within \[0.0, 1.0\], not 1.5"):
        FaultRates(stuck_set=1.5)
    with pytest.raises(ConfigError, match=r"stuck_set \+ stuck_reset must be within \[0.0, 1.0\], not 1.2"):
        FaultRates(stuck_set=0.6, stuck_reset=0.6)


# ---- determinism -------------------------------------------------------------------------------


def test_whole_array_programming_equals_row_by_row_replay():
    p = get_preset("hermes-2dev")
    targets = weights_to_conductance(dnn_weights(3, 6, 32), p.g_max_us)
    bulk, rows = DeviceArray(p, 6, 32, seed=9), DeviceArray(p, 6, 32, seed=9)
    bulk.program_array(targets, op_index=4)
    for r in reversed(range(6)):  # order does not matter: keys are (op, row)
        rows.program_row(r, targets[r], op_index=4)
    for array in (bulk, rows):
        array.set_time(3600.0)
    assert np.array_equal(bulk.g_prog_us, rows.g_prog_us) and np.array_equal(bulk.nu, rows.nu)
    assert np.array_equal(bulk.g_read_us, rows.g_read_us)
    other = DeviceArray(p, 6, 32, seed=10)
    other.program_array(targets, op_index=4)
    assert not np.array_equal(other.g_prog_us, bulk.g_prog_us)


# ---- faults ----------------------------------------------------------------------------------


def test_faults_at_their_rates_read_their_fixed_values_and_ignore_programming():
    p = get_preset("hermes-2dev")
    rates = FaultRates(stuck_set=0.05, stuck_reset=0.1, dead_column=0.1)
    array = DeviceArray(p, 32, 400, seed=1, faults=rates)
    faults = array.faults
    n = faults["stuck_set"].size
    assert faults["stuck_set"].mean() == pytest.approx(0.05, abs=4 * np.sqrt(0.05 / n))
    assert faults["stuck_reset"].mean() == pytest.approx(0.1, abs=4 * np.sqrt(0.1 / n))
    assert not (faults["stuck_set"] & faults["stuck_reset"]).any()
    assert faults["dead_column"].mean() == pytest.approx(0.1, abs=0.05)
    array.program_array(np.full((32, 400, 2), p.g_max_us / 2), op_index=0)
    array.advance_time(3600.0)
    live = ~faults["dead_column"][None, :, None, None]
    g = array.g_read_us
    assert (g[faults["stuck_set"] & live] == p.g_max_device_us).all()
    assert (g[faults["stuck_reset"]] == 0).all() and (g[:, faults["dead_column"]] == 0).all()
    healthy = ~faults["stuck_set"] & ~faults["stuck_reset"] & live
    assert 0 < g[healthy].min() and g[healthy].max() < p.g_max_device_us * 1.5
    again = DeviceArray(p, 32, 400, seed=1, faults=rates)
    assert all(np.array_equal(again.faults[k], faults[k]) for k in faults)


def test_stuck_devices_defeat_program_and_verify():
    p = get_preset("pcm")
    array = DeviceArray(p, 1, 300, seed=2, faults=FaultRates(stuck_set=0.2))
    result = array.program_row_verify(0, np.full((300, 2), 5.0), op_index=0, tolerance_us=0.25,
                                      max_iterations=12)
    stuck = array.faults["stuck_set"][0]
    assert (result.iterations[stuck] == 12).all() and not result.converged[stuck].any()
    assert np.allclose(result.error_us[stuck], p.g_max_device_us - 5.0)
    assert result.converged[~stuck].mean() > 0.95
