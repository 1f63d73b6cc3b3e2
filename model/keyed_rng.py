"""Keyed randomness: every draw of the model is a pure function of (seed, tile, stream, indices).

A caller that replays the same operations gets the same numbers whatever its batching or call
order (DESIGN.md, "Noise draws are keyed"). Two mechanisms:

- `KeyedRng.generator(stream, *indices)`: a numpy Generator on a Philox counter-based bit
  generator whose 128-bit key is (seed, tile/stream) and whose counter starts at
  (0, *indices): the draws of different index tuples are 2**64 draws or more apart, i.e.
  disjoint. For device-level draws (programming noise, nu, 1/f, faults, pulses, CCO mismatch).
- `KeyedRng.normal(stream, ops, lanes)`: one N(0, 1) value per (operation, lane) from a
  splitmix64 hash -> uniform in (0, 1] -> scipy.special.ndtri. Each value depends on its own
  (op, lane) only, and ndtri is a scalar C routine, so a window drawn alone and the same window
  inside a batch get bit-identical values. For the per-window CCO output noise.

No global RNG is used anywhere in the model.
"""

from __future__ import annotations

import enum

import numpy as np
from scipy.special import ndtri

from .checks import UINT64_MAX, check_int


class Stream(enum.IntEnum):
    """What a draw is for; part of every key so that purposes never share numbers."""

    FAULTS = 1
    PROGRAMMING = 2
    DRIFT_NU = 3
    READ_NOISE = 4
    PULSE = 5
    CCO_MISMATCH = 6
    CCO_OUTPUT = 7


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: splitmix64's (shift, multiplier) rounds, then its final shift.
_MIX_ROUNDS = ((np.uint64(30), np.uint64(0xBF58476D1CE4E5B9)), (np.uint64(27), np.uint64(0x94D049BB133111EB)))
_MIX_FINAL_SHIFT = np.uint64(31)
_UINT64_MASK = 2**64 - 1
#: `splitmix64` hashes arrays of up to this many values as Python integers.
_FEW_VALUES = 4


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele/Lea/Flood splitmix64 finaliser on uint64 arrays of at least one dimension
    (wrapping arithmetic: numpy checks no overflow in array loops, only on 0-d arrays and
    scalars), as a new array: 9 uint64 operations per element, in place on it and one scratch
    array; up to _FEW_VALUES values as Python integers (`_splitmix64_int`, the same function),
    where numpy's ~1 us per call would be most of the time (one window's operation index)."""
    x = np.asarray(x, dtype=np.uint64)
    assert x.ndim, "splitmix64 of a 0-d array would warn on the wrapping multiplications"
    if x.size <= _FEW_VALUES:
        return np.array([_splitmix64_int(int(v)) for v in x.flat], dtype=np.uint64).reshape(x.shape)
    z = np.add(x, _GOLDEN)
    shifted = np.empty_like(z)
    for shift, multiplier in _MIX_ROUNDS:
        z ^= np.right_shift(z, shift, out=shifted)
        z *= multiplier
    z ^= np.right_shift(z, _MIX_FINAL_SHIFT, out=shifted)
    return z


def _splitmix64_int(z: int) -> int:
    """`splitmix64` of one value in Python integer arithmetic (the wrapping made explicit)."""
    z = (z + int(_GOLDEN)) & _UINT64_MASK
    for shift, multiplier in _MIX_ROUNDS:
        z = ((z ^ (z >> int(shift))) * int(multiplier)) & _UINT64_MASK
    return z ^ (z >> int(_MIX_FINAL_SHIFT))


class KeyedRng:
    """The random source of one tile: (seed, tile) fixed, everything else given per draw."""

    def __init__(self, seed: int, tile: int = 0):
        self.seed = check_int("seed", seed, 0, UINT64_MAX)
        self.tile = check_int("tile", tile, 0, 2**32 - 1)
        self._hash_base = splitmix64(splitmix64(np.array([self.seed], np.uint64)) ^ np.uint64(self.tile))
        self._keys: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def generator(self, stream: Stream, *indices: int) -> np.random.Generator:
        """A Generator keyed by (seed, tile, stream, *indices); up to 3 indices, each < 2**64."""
        assert len(indices) <= 3, indices
        key = np.array([self.seed, (self.tile << 32) | int(stream)], dtype=np.uint64)
        counter = np.zeros(4, dtype=np.uint64)
        counter[1:1 + len(indices)] = [check_int("index", i, 0, UINT64_MAX) for i in indices]
        return np.random.Generator(np.random.Philox(key=key, counter=counter))

    def normal(self, stream: Stream, ops: np.ndarray, lanes: int) -> np.ndarray:
        """N(0, 1) of shape (len(ops), lanes); element [b, j] depends only on (ops[b], j):
        `normal_of_bits` of `bits`."""
        return normal_of_bits(self.bits(stream, ops, lanes))

    def bits(self, stream: Stream, ops: np.ndarray, lanes: int) -> np.ndarray:
        """The uint64 hashes behind `normal`, (len(ops), lanes): splitmix64(per_op[b] ^
        per_lane[j]), 10 uint64 operations per element (a caller that needs only where a
        value lies, not the value, can skip `normal_of_bits`)."""
        per_op, per_lane = self.keys(stream, ops, lanes)
        return splitmix64(per_op[:, None] ^ per_lane[None, :])

    def keys(self, stream: Stream, ops: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
        """(per_op, per_lane) uint64 of `bits` (len(ops),) and (lanes,), for a caller that
        hashes their combinations itself."""
        base, per_lane = self._stream_keys(stream, lanes)
        return splitmix64(base ^ np.asarray(ops, dtype=np.uint64)), per_lane

    def _stream_keys(self, stream: Stream, lanes: int) -> tuple[np.ndarray, np.ndarray]:
        """The per-stream key and per-lane hashes of `normal`, computed once per (stream, lanes)."""
        key = (int(stream), lanes)
        if key not in self._keys:
            self._keys[key] = (splitmix64(self._hash_base ^ np.uint64(int(stream))),
                               splitmix64(np.arange(lanes, dtype=np.uint64) ^ _GOLDEN))
        return self._keys[key]


def normal_of_bits(bits: np.ndarray) -> np.ndarray:
    """z = ndtri(uniform_of_bits(bits)), float64, in place on the uniform."""
    uniform = uniform_of_bits(bits)
    return ndtri(uniform, out=uniform)


def uniform_of_bits(bits: np.ndarray) -> np.ndarray:
    """((bits >> 11) + 0.5) 2**-53, in (0, 1], float64 (a new array; bits unchanged; the 2**11
    largest hashes round to 1.0, whose ndtri, +inf, caps phi_0 at its maximum): monotone
    in bits (each step rounds monotonically)."""
    uniform = np.right_shift(bits, np.uint64(11)).astype(np.float64)
    uniform += 0.5
    uniform *= 2.0**-53
    return uniform
