"""Evaluation and training data with fixed, documented splits.

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn).
  Split: ``numpy.random.default_rng(0).permutation(1797)``; the first 1,437 indices are the
  training set, the last 360 the test set. Inputs are pixel values / 16, i.e. in [0, 1]
  (unsigned, like an 8-bit PWM input of one polarity).
- ``mnist1d``: MNIST-1D (Greydanus 2020, PyPI ``mnist1d``) generated offline with the package's
  default arguments (``make_dataset(get_dataset_args())``: 5,000 sequences of length 40, seed 42)
  and its own split: the first 4,000 are the training set, the last 1,000 the test set. Inputs
  are used as generated: signed, roughly unit variance, within about [-6, 6]. Generation takes a
  few seconds (most of it importing matplotlib through the package), so the arrays are cached
  in ``<cache>/datasets/mnist1d-<version>.npz`` (cache = $PCMHIL_CACHE_DIR or ~/.cache/pcmhil).

``x`` arrays are float64 [N, *input_shape] shaped as the model expects; ``y`` are int64 labels.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from pcmhil.errors import ConfigError

DATASETS = ("digits", "mnist1d")
DIGITS_TRAIN = 1437
DIGITS_SPLIT_SEED = 0
DIGITS_SPLIT = (f"scikit-learn digits, numpy default_rng({DIGITS_SPLIT_SEED}).permutation(1797): first "
                f"{DIGITS_TRAIN} train, last {1797 - DIGITS_TRAIN} test; x = pixels / 16")
MNIST1D_SPLIT = ("mnist1d make_dataset(get_dataset_args()) defaults (5000 samples, seed 42): first 4000 "
                 "train, last 1000 test; x as generated (signed)")


@dataclass(frozen=True)
class Dataset:
    name: str
    split: str  # how the split was made, for training records
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_dataset(name: str, input_shape: tuple[int, ...] | None = None) -> Dataset:
    """A dataset by name with its fixed split, x reshaped to [N, *input_shape] when given."""
    if name not in DATASETS:
        raise ConfigError(f"dataset must be one of {DATASETS}, not {name!r}")
    x_train, y_train, x_test, y_test = _digits() if name == "digits" else _mnist1d()
    split = DIGITS_SPLIT if name == "digits" else MNIST1D_SPLIT
    if input_shape is not None:
        x_train, x_test = (_reshape(x, input_shape, name) for x in (x_train, x_test))
    return Dataset(name, split, x_train, y_train, x_test, y_test)


def _reshape(x: np.ndarray, input_shape: tuple[int, ...], name: str) -> np.ndarray:
    if int(np.prod(input_shape)) != int(np.prod(x.shape[1:])):
        raise ConfigError(f"input shape of a model for {name} must hold {int(np.prod(x.shape[1:]))} values, "
                          f"not {tuple(input_shape)}")
    return x.reshape(len(x), *input_shape)


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(digits.target))
    x = digits.data[order].astype(np.float64) / 16.0
    y = digits.target[order].astype(np.int64)
    return x[:DIGITS_TRAIN], y[:DIGITS_TRAIN], x[DIGITS_TRAIN:], y[DIGITS_TRAIN:]


def _mnist1d():
    path = _cache_dir() / f"mnist1d-{metadata.version('mnist1d')}.npz"
    if not path.exists():
        _write_atomically(path, _generate_mnist1d())
    with np.load(path) as data:
        return data["x"], data["y"], data["x_test"], data["y_test"]


def _generate_mnist1d() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # never get_dataset: it downloads

    # make_dataset seeds Python's and numpy's global RNGs; give the caller's states back.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {"x": data["x"].astype(np.float64), "y": data["y"].astype(np.int64),
            "x_test": data["x_test"].astype(np.float64), "y_test": data["y_test"].astype(np.int64)}


def _cache_dir() -> Path:
    from pcmhil.cosim.toolchain import cache_root  # stdlib only; the one definition of the cache

    return cache_root() / "datasets"


def _write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Parallel test workers may generate at once: each writes its own file, then renames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
        np.savez(handle, **arrays)
    os.replace(handle.name, path)


def load_npz_data(path: str | Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) from an .npz holding `x` (inputs exactly as the model expects, [N, *input_shape])
    and `y` (N integer labels)."""
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in ("x", "y") if key not in data]
        if missing:
            raise ConfigError(f"data file {str(path)!r} must have arrays 'x' (inputs) and 'y' (integer "
                              f"labels), not be missing {', '.join(map(repr, missing))}")
        x, y = data["x"], data["y"]
    if x.shape[1:] != tuple(input_shape):
        raise ConfigError(f"x in {str(path)!r} must have shape (N, {', '.join(map(str, input_shape))}) as "
                          f"the model expects, not {x.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),) or (y < 0).any():
        raise ConfigError(f"y in {str(path)!r} must be {len(x)} non-negative integer labels, not "
                          f"{y.dtype} {y.shape}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ConfigError(f"x in {str(path)!r} must be finite, not contain NaN or inf")
    return x, y.astype(np.int64)
