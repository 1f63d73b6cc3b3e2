"""The boundary word packers (cosim/boundary.py) against a bit-by-bit reference.

Every analog boundary vector crosses VPI as 64-bit words (pcmhil.interface.BoundaryLayout: lane k
of a vector is bits [k*L, (k+1)*L) of the flat vector, word i holds bits [64 i, 64 i + 64)); the
packers take fast paths for byte-sized and sub-byte lanes, so every lane width is checked.
"""

import numpy as np
import pytest

from pcmhil.cosim.boundary import lanes_to_words, words_to_bits, words_to_lanes


def reference_words(lanes, lane_bits: int, n_words: int) -> list[int]:
    flat = 0
    for k, lane in enumerate(lanes):
        flat |= int(lane) << (k * lane_bits)
    return [(flat >> (64 * i)) & (2**64 - 1) for i in range(n_words)]


@pytest.mark.parametrize("lane_bits", [1, 2, 3, 4, 5, 8, 16, 32, 64])
@pytest.mark.parametrize("count", [1, 7, 64, 255, 256, 300])
def test_lanes_round_trip_bit_exactly(lane_bits, count):
    rng = np.random.default_rng(lane_bits * 1000 + count)
    per_word = 64 // lane_bits
    n_words = -(-count // per_word)
    lanes = rng.integers(0, 2**lane_bits, count, dtype=np.uint64)
    if lane_bits == 64:  # the top lane values as well
        lanes[0] = 2**64 - 1
    words = lanes_to_words(lanes, lane_bits, n_words)
    if lane_bits not in (3, 5):  # lanes that tile a word leave no gap bits
        assert words == reference_words(lanes, lane_bits, n_words)
    assert all(type(w) is int and 0 <= w < 2**64 for w in words)
    back = words_to_lanes(words, lane_bits, count)
    assert back.dtype == np.int64 or lane_bits == 64
    assert np.array_equal(back.astype(np.uint64), lanes)


def test_gapped_lanes_keep_the_top_bits_zero():
    # 3-bit lanes: 21 per word, bit 63 unused and zero
    words = lanes_to_words(np.full(42, 7), 3, 2)
    assert words == [2**63 - 1, 2**63 - 1]


def test_bits_of_words():
    words = [1 | (1 << 63), 0b101]
    bits = words_to_bits(words, 67)
    assert np.flatnonzero(bits).tolist() == [0, 63, 64, 66]
