"""The boundary word packers (cosim/boundary.py) against a bit-by-bit reference.

Every analog boundary vector is packed as 64-bit words (pcmhil.interface.BoundaryLayout: lane k
of a vector is bits [k*L, (k+1)*L) of the flat vector, word i holds bits [64 i, 64 i + 64)); the
packers take fast paths for byte-sized and sub-byte lanes, so every lane width is checked. The
words cross VPI as one binary string per signal (cosim/vpi.py: Vector), joined by the testbench
(cosim/harness.py: testbench_verilog).
"""

import re

import numpy as np
import pytest

from pcmhil.cosim.boundary import lanes_to_array, words_to_bits, words_to_lanes


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
    array = lanes_to_array(lanes, lane_bits, n_words)
    assert array.dtype == np.dtype("<u8") and array.shape == (n_words,)
    words = array.tolist()
    if lane_bits not in (3, 5):  # lanes that tile a word leave no gap bits
        assert words == reference_words(lanes, lane_bits, n_words)
    back = words_to_lanes(words, lane_bits, count)
    assert back.dtype == np.int64 or lane_bits == 64
    assert np.array_equal(back.astype(np.uint64), lanes)


def test_gapped_lanes_keep_the_top_bits_zero():
    # 3-bit lanes: 21 per word, bit 63 unused and zero
    words = lanes_to_array(np.full(42, 7), 3, 2).tolist()
    assert words == [2**63 - 1, 2**63 - 1]


def test_bits_of_words():
    words = [1 | (1 << 63), 0b101]
    bits = words_to_bits(words, 67)
    assert np.flatnonzero(bits).tolist() == [0, 63, 64, 66]


class _BinstrSignal:
    """A stand-in for a cocotb handle: a signal of `bits` bits held as a VPI binary string."""

    def __init__(self, bits: int):
        self.bits, self.value = bits, "0" * bits
        self._handle = self

    def __len__(self):
        return self.bits

    def get_signal_val_binstr(self):
        return self.value

    def set_signal_val_binstr(self, action, value):
        assert action == 0 and len(value) == self.bits and set(value) <= {"0", "1"}
        self.value = value


@pytest.mark.parametrize("bits", [1, 12, 64, 100, 2048, 4096])
def test_vectors_cross_as_one_binary_string_msb_first(bits):
    from pcmhil.cosim.vpi import Vector

    signal = _BinstrSignal(bits)
    vector = Vector(signal)
    assert vector.n_words == -(-bits // 64)
    rng = np.random.default_rng(bits)
    value = int(rng.integers(0, 2, bits).dot(1 << np.arange(bits, dtype=object))) | 1
    words = np.array([(value >> (64 * i)) & (2**64 - 1) for i in range(vector.n_words)], dtype="<u8")
    vector.write(words)
    assert signal.value == format(value, f"0{bits}b")  # bit 0 last, as VPI writes it
    assert np.array_equal(vector.read(), words)
    if bits % 64:  # a bit above the signal in its last word
        too_wide = words.copy()
        too_wide[-1] |= np.uint64(1 << (bits % 64))
        with pytest.raises(ValueError, match=f"for a {bits}-bit signal"):
            vector.write(too_wide)


def test_the_testbench_joins_each_boundary_vector_into_one_signal():
    from pcmhil.cosim.harness import testbench_verilog
    from pcmhil.cosim.transport import harness_verilog
    from pcmhil.interface import CCO_COUNT_LANE_BITS, BoundaryLayout, Geometry

    geometry = Geometry(100, 68, 2)
    layout = BoundaryLayout(geometry)
    text = testbench_verilog(harness_verilog(geometry), "transaction")
    for t in range(geometry.tiles):
        bits = geometry.cols * CCO_COUNT_LANE_BITS
        assert f"reg [{bits - 1}:0] t{t}__cco_count = 0;" in text
        for k in range(layout.count_words):
            assert f".t{t}__cco_count__{k}(t{t}__cco_count[{64 * k + 63}:{64 * k}])" in text
        for name, words in (("drive_mag", layout.mag_words), ("drive_neg", layout.drive_words)):
            assert re.search(rf"wire \[{64 * words - 1}:0\] t{t}__{name};", text), name
        assert ".t0__cco_pulses__0(64'd0)" in text  # the other mode's input stays tied off
        assert f"t{t}__cco_pulses;" not in text
