"""Datasets: the documented splits, their determinism, and the .npz data file checks."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.host.datasets import load_dataset, load_npz_data


def test_digits_split_is_fixed_and_covers_the_dataset_once():
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    assert (data.x_train.shape, data.x_test.shape) == ((1437, 64), (360, 64))
    assert data.y_train.dtype == np.int64 and 0.0 <= data.x_train.min() and data.x_train.max() == 1.0
    everything = np.concatenate([data.x_train, data.x_test]) * 16
    np.testing.assert_array_equal(np.sort(everything, axis=0), np.sort(load_digits().data, axis=0))
    again = load_dataset("digits", (1, 8, 8))
    np.testing.assert_array_equal(again.x_test.reshape(360, 64), data.x_test)
    np.testing.assert_array_equal(again.y_test, data.y_test)
    # The documented definition: default_rng(0).permutation(1797), first 1437 train, last 360 test.
    order = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(data.y_test, load_digits().target[order[1437:]])
    np.testing.assert_array_equal(data.x_train, load_digits().data[order[:1437]] / 16)


def test_mnist1d_is_generated_offline_with_its_own_split_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PCMHIL_CACHE_DIR", str(tmp_path))
    random.seed(5)
    np.random.seed(5)
    expected_python, expected_numpy = random.random(), np.random.random()
    random.seed(5)
    np.random.seed(5)
    data = load_dataset("mnist1d", (1, 40))
    # make_dataset reseeds the global RNGs; the caller's streams must continue undisturbed.
    assert (random.random(), np.random.random()) == (expected_python, expected_numpy)
    assert (data.x_train.shape, data.x_test.shape) == ((4000, 1, 40), (1000, 1, 40))
    assert data.x_train.min() < -1 and data.x_train.max() > 1  # signed inputs
    assert sorted(np.unique(data.y_test)) == list(range(10))
    assert [path.name for path in (tmp_path / "datasets").iterdir()][0].startswith("mnist1d-")
    cached = load_dataset("mnist1d", (1, 40))
    np.testing.assert_array_equal(cached.x_test, data.x_test)
    np.testing.assert_array_equal(cached.y_train, data.y_train)


def test_unknown_dataset_and_impossible_shape():
    with pytest.raises(ConfigError, match=r"dataset must be one of \('digits', 'mnist1d'\), not 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match=r"input shape of a model for digits must hold 64 values, "
                                          r"not \(1, 40\)"):
        load_dataset("digits", (1, 40))


def test_npz_data_is_loaded_as_float64_inputs_and_int64_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([1, 2, 3], np.int32))
    x, y = load_npz_data(tmp_path / "d.npz", (1, 8, 8))
    assert (x.dtype, x.shape, y.dtype, y.tolist()) == (np.float64, (3, 1, 8, 8), np.int64, [1, 2, 3])


@pytest.mark.parametrize("arrays, message", [
    ({"y": np.arange(3)}, r"must have arrays 'x' \(inputs\) and 'y' \(integer labels\), not be missing 'x'"),
    ({"x": np.zeros((3, 64))}, r"not be missing 'y'"),
    ({"inputs": np.zeros(3)}, r"not be missing 'x', 'y'"),
    ({"x": np.zeros((3, 64)), "y": np.arange(3)},
     r"x in '.*d.npz' must have shape \(N, 1, 8, 8\) as the model expects, not \(3, 64\)"),
    ({"x": np.zeros((3, 1, 8, 8)), "y": np.ones(3)},
     r"y in '.*' must be 3 non-negative integer labels, not float64"),
    ({"x": np.zeros((3, 1, 8, 8)), "y": np.arange(4)},
     r"must be 3 non-negative integer labels, not int64 \(4,\)"),
    ({"x": np.full((3, 1, 8, 8), np.nan), "y": np.arange(3)}, r"x in '.*' must be finite"),
])
def test_bad_npz_data_gives_one_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ConfigError, match=message):
        load_npz_data(tmp_path / "d.npz", (1, 8, 8))
