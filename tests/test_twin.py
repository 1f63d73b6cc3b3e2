"""The twin against docs/numerics.md, with a deterministic fake analog side."""

from __future__ import annotations

import numpy as np
import pytest
from fake_analog import FakeAnalogTile

from pcmhil.errors import ConfigError, SimulationError
from pcmhil.host import packets as pk
from pcmhil.host.chip import Chip, ChipError
from pcmhil.host.twin import TwinTransport, ldpu, ldpu_of_counts
from pcmhil.interface import (
    CHIP_ID_VALUE,
    COMMAND_ARG_MAX,
    COUNTER_MAX,
    TILE_ID_VALUE,
    WINDOW_RESET,
    Activation,
    Command,
    CommandWord,
    ErrorCode,
    Geometry,
    PacketType,
    ProgramMode,
    ReadMode,
    command_fields,
    command_word,
)
from pcmhil.model.analog_tile import AnalogSpec
from pcmhil.transport import BusError, Transport


def make(rows=8, cols=12, tiles=1, seed=0):
    geometry = Geometry(rows, cols, tiles)
    analog = [FakeAnalogTile(geometry, seed + t) for t in range(tiles)]
    return Chip(TwinTransport(geometry, analog), geometry), analog


def reference_mvm(analog, x, mode, window, offset, gain, bias, shift, relu):
    """numerics.md 1-5 written out independently of the twin."""
    out = []
    for v in x.astype(np.int64):
        if mode is ReadMode.ONE_PHASE:
            counts = np.minimum(v @ analog.weights(0) + 2 * window, COUNTER_MAX)
            raw = counts - offset
        else:
            pos, neg = np.where(v > 0, v, 0), np.where(v < 0, -v, 0)
            c = [np.minimum(d @ analog.weights(s) + 2 * window, COUNTER_MAX)
                 for d, s in ((pos, 1), (pos, 2), (neg, 1), (neg, 2))]
            raw = c[0] - c[1] - c[2] + c[3]
        acc = raw * gain + bias
        if shift:
            acc = (acc + 2 ** (shift - 1)) // 2**shift
        if relu:
            acc = np.maximum(acc, 0)
        out.append(np.clip(acc, -128, 127))
    return np.array(out)


def test_reset_values_and_bus_errors():
    chip, _ = make()
    assert chip.read("CHIP_ID") == CHIP_ID_VALUE
    assert chip.read("TILE_ID", 0) == TILE_ID_VALUE
    assert chip.read("GEOMETRY", 0) == (12 << 16) | 8
    assert chip.read("WINDOW", 0) == WINDOW_RESET
    with pytest.raises(BusError, match=r"read of address 0x0ffc answered SLVERR"):
        chip.transport.read(0x0FFC)
    with pytest.raises(BusError, match=r"write of address 0x1000"):
        chip.transport.write(chip.map.address("TILE_ID", 0), 1)
    with pytest.raises(BusError):
        chip.transport.write(chip.map.address("WINDOW", 0), 200, strobe=0b0011)
    with pytest.raises(BusError):  # tile 1 does not exist on a 1-tile chip
        chip.transport.read(0x2000)


@pytest.mark.parametrize("mode", [ReadMode.ONE_PHASE, ReadMode.FOUR_PHASE])
@pytest.mark.parametrize("relu", [False, True])
def test_mvm_matches_numerics(mode, relu):
    chip, (analog,) = make(rows=16, cols=8, seed=3)
    rng = np.random.default_rng(7)
    gain = rng.integers(-300, 300, 8)
    bias = rng.integers(-5000, 5000, 8)
    chip.configure(0, read_mode=mode, activation=Activation.RELU if relu else Activation.IDENTITY,
                   window=200, shift=6)
    chip.load_ldpu(0, gain, bias)
    offsets = chip.calibrate(0, 3)
    assert np.array_equal(offsets, np.full(8, 2 * 200))
    x = rng.integers(-128, 128, size=(20, 16))
    x[0] = -128
    y = chip.mvm(0, x)
    expected = reference_mvm(analog, x, mode, 200, offsets, gain, bias, 6, relu)
    assert np.array_equal(y, expected)
    assert chip.counters(0)["mvm_count"] == 20
    assert analog.operations == 8 + 20 * (1 if mode is ReadMode.ONE_PHASE else 4)


def test_ldpu_rounds_half_up_and_saturates():
    raw = np.array([3, -3, 5, -5, 1000, -1000, 0])
    assert list(ldpu(raw, np.ones(7, np.int64), np.zeros(7, np.int64), 1, False)) == \
        [2, -1, 3, -2, 127, -128, 0]
    assert list(ldpu(raw, np.ones(7, np.int64), np.zeros(7, np.int64), 1, True)) == \
        [2, 0, 3, 0, 127, 0, 0]


@pytest.mark.parametrize("relu", [False, True])
def test_compiled_ldpu_of_a_batch_equals_numpy(monkeypatch, relu):
    """The compiled LDPU loop of a batch (with the analog model's kernels loaded) against numpy's
    passes: raw over the 12-bit counter and past it both ways, gains and biases at their
    widths' extremes, every shift (0 = none, 31 = the widest)."""
    from pcmhil.model import kernels

    assert kernels.warm_up(), "numba is a dependency (pyproject.toml): the compiled kernels must load"
    rng = np.random.default_rng(31 + relu)
    raw = rng.integers(-8190, 8191, (64, 40))
    gain = rng.integers(-2**15, 2**15, 40)
    bias = rng.integers(-2**31, 2**31, 40)
    gain[:2], bias[:2] = [-2**15, 2**15 - 1], [-2**31, 2**31 - 1]
    gain[20:], bias[20:] = rng.integers(-8, 9, 20), rng.integers(-1000, 1001, 20)  # codes off the rails
    raw[0, :2] = [8190, -8190]
    between = 0
    for shift in range(32):
        compiled = ldpu(raw.copy(), gain, bias, shift, relu)
        with monkeypatch.context() as patch:
            patch.setattr(kernels, "module", lambda: None)
            expected = ldpu(raw.copy(), gain, bias, shift, relu)
        assert compiled.dtype == np.int8 and np.array_equal(compiled, expected), shift
        between += int(((expected > -128) & (expected < 127) & (expected != 0)).sum())
    assert between > 1000  # codes between the rails were compared, not only saturated ones


@pytest.mark.parametrize("relu", [False, True])
def test_compiled_ldpu_of_counts_clamps_and_counts_like_numpy(monkeypatch, relu):
    """The 1-phase MVM's one pass (`ldpu_of_counts`): counts past the 12-bit counter and below
    0 clamped, the column-windows past it counted, then the LDPU, against numpy's steps (the
    clamp, then `ldpu` with the kernels off) at the gain and bias widths' extremes and every
    shift; and the twin's 1-phase batch takes it, with the same saturation count."""
    from pcmhil.host import twin
    from pcmhil.model import kernels

    assert kernels.warm_up(), "numba is a dependency (pyproject.toml): the compiled kernels must load"
    rng = np.random.default_rng(7 + relu)
    counts = rng.integers(-50, 6000, (64, 40))
    gain, bias = rng.integers(-2**15, 2**15, 40), rng.integers(-2**31, 2**31, 40)
    gain[:2], bias[:2] = [-2**15, 2**15 - 1], [-2**31, 2**31 - 1]
    gain[20:], bias[20:] = rng.integers(-8, 9, 20), rng.integers(-1000, 1001, 20)  # codes off the rails
    between = 0
    for shift in range(32):
        codes, saturated = ldpu_of_counts(counts.copy(), gain, bias, shift, relu)
        with monkeypatch.context() as patch:
            patch.setattr(kernels, "module", lambda: None)
            expected = ldpu(np.clip(counts, 0, COUNTER_MAX), gain, bias, shift, relu)
            assert ldpu_of_counts(counts, gain, bias, shift, relu) is None  # numpy's steps then
        assert saturated == int((counts > COUNTER_MAX).sum()) > 0
        assert codes.dtype == np.int8 and np.array_equal(codes, expected), shift
        between += int(((expected > -128) & (expected < 127) & (expected != 0)).sum())
    assert between > 500  # codes between the rails were compared, not only saturated ones
    calls = []
    monkeypatch.setattr(twin, "ldpu_of_counts", lambda *a: calls.append(1) or ldpu_of_counts(*a))
    chip, (analog,) = make(rows=8, cols=12)
    analog.offset_per_cycle = 40  # 40 * 128 cycles > COUNTER_MAX in every column
    chip.mvm(0, np.zeros((3, 8), dtype=np.int8))
    assert calls == [1] and chip.counters(0)["saturation_count"] == 3 * 12


def test_saturation_is_counted_per_column_window():
    chip, (analog,) = make(rows=8, cols=12)
    analog.offset_per_cycle = 40  # 40 * 128 cycles > COUNTER_MAX in every column
    chip.mvm(0, np.zeros((3, 8), dtype=np.int8))
    assert chip.counters(0)["saturation_count"] == 3 * 12
    assert chip.status(0).saturated


def test_verify_calibrate_program_packets():
    chip, (analog,) = make(rows=8, cols=12)
    plus, minus = chip.verify_row(0, 5)
    assert np.array_equal(plus, 128 * analog.g_plus[5] + 2 * 128)
    assert np.array_equal(minus, 128 * analog.g_minus[5] + 2 * 128)
    codes = np.arange(12)
    chip.program_row(0, 3, codes, 255 - codes)
    chip.program_row(0, 4, codes - 6, 6 - codes, ProgramMode.PULSE)
    (row, p, m, mode), (row2, p2, m2, mode2) = analog.programmed
    assert (row, mode, row2, mode2) == (3, ProgramMode.TARGET, 4, ProgramMode.PULSE)
    assert np.array_equal(p, codes) and np.array_equal(m, 255 - codes)
    assert np.array_equal(p2.view(np.int8), codes - 6)
    assert not chip.status(0).prog_staged


def _error(chip, code):
    with pytest.raises(ChipError, match=code.name):
        chip.raise_for_error(0)


def test_every_error_code_through_the_bus():
    chip, _ = make(rows=8, cols=12, tiles=2)
    cmd = lambda op, arg=0: chip.command(0, op, arg, wait=False)  # noqa: E731
    cmd(Command.MVM, 0)
    _error(chip, ErrorCode.BAD_ARGUMENT)
    cmd(Command.VERIFY_ROW, 8)
    _error(chip, ErrorCode.BAD_ARGUMENT)
    cmd(Command.PROGRAM_ROW, 1 << 17)
    _error(chip, ErrorCode.BAD_ARGUMENT)
    cmd(Command.CALIBRATE, 9)
    _error(chip, ErrorCode.BAD_ARGUMENT)
    chip.write("CMD", 0x7F, 0)
    _error(chip, ErrorCode.UNKNOWN_COMMAND)
    cmd(Command.PROGRAM_ROW, 0)
    _error(chip, ErrorCode.NO_DATA)
    cmd(Command.LOAD_LDPU)
    _error(chip, ErrorCode.NO_DATA)
    chip.write("WINDOW", 127, 0)
    cmd(Command.CALIBRATE, 0)
    _error(chip, ErrorCode.BAD_CONFIG)
    chip.write("WINDOW", 128, 0)
    cmd(Command.MVM, 2)
    cmd(Command.CALIBRATE, 0)
    _error(chip, ErrorCode.BUSY)
    assert chip.status(0).busy
    cmd(Command.ABORT)
    _error(chip, ErrorCode.ABORTED)
    assert not chip.status(0).busy
    chip.transport.send(pk.pack_activations(np.zeros((1, 8)), chip.geometry)[:, :-1])
    _error(chip, ErrorCode.PACKET_LENGTH)
    assert chip.counters(0)["error_count"] == 11
    chip.transport.send(np.array([pk.header_word(PacketType.RESULT, 0), 0], np.uint32))
    assert chip.read_field("STREAM_STATUS", "code") == ErrorCode.PACKET_TYPE.value
    chip.transport.send(np.array([pk.header_word(PacketType.ACTIVATIONS, 5), 0, 0], np.uint32))
    assert chip.read_field("STREAM_STATUS", "code") == ErrorCode.PACKET_TILE.value
    assert chip.read("STREAM_ERRORS") == 2
    assert chip.counters(1)["error_count"] == 0


def test_stalled_stream_is_reported_not_hung():
    chip, _ = make()
    chip.transport.send(pk.pack_activations(np.zeros((1, 8)), chip.geometry))
    assert chip.status(0).act_ready
    with pytest.raises(Exception, match=r"input stream stalled"):
        chip.transport.send(pk.pack_activations(np.zeros((1, 8)), chip.geometry))


def test_irq_summary_follows_config():
    chip, _ = make(tiles=2)
    chip.configure(1, irq_done=True)
    chip.calibrate(1, 0)
    assert chip.read("IRQ_STATUS") == 0b10
    chip.clear_flags(1)
    assert chip.read("IRQ_STATUS") == 0


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("bad", ["type", "tile"])
def test_a_result_packet_of_the_wrong_kind_or_tile_is_named(bad, batched, monkeypatch):
    chip, _ = make(rows=8, cols=12, tiles=2)
    x = np.arange(-8, 8).reshape(2, 8)
    real_receive_batches = chip.transport.receive_batches

    def receive_batches(count, timeout_s=10.0):
        packets = np.concatenate(real_receive_batches(count))
        wrong = (PacketType.VERIFY_DATA, 0) if bad == "type" else (PacketType.RESULT, 1)
        packets[1, 0] = pk.header_word(wrong[0], wrong[1])
        return [packets] if batched else [packet[None, :] for packet in packets]

    monkeypatch.setattr(chip.transport, "receive_batches", receive_batches)
    got = f"{PacketType.VERIFY_DATA.value:#04x} from tile 0" if bad == "type" else "0x81 from tile 1"
    expected = f"expected a RESULT packet from tile 0, got type {got}"
    with pytest.raises(SimulationError, match=expected):
        chip.mvm(0, x)


class PacketAtATimeTwin(TwinTransport):
    """The twin handing its output over as the co-simulation does: Transport's default
    receive_batches, a batch of one per packet of receive()."""

    receive_batches = Transport.receive_batches


def test_whole_batches_and_packets_one_at_a_time_give_the_same_answers():
    geometry = Geometry(16, 8, 2)
    answers = []
    for transport in (TwinTransport, PacketAtATimeTwin):
        chip = Chip(transport(geometry, [FakeAnalogTile(geometry, 5 + t) for t in range(2)]), geometry)
        x = np.random.default_rng(4).integers(-128, 128, size=(30, 16))
        got = [chip.calibrate(1, 2)]
        for mode in (ReadMode.ONE_PHASE, ReadMode.FOUR_PHASE):
            chip.configure(1, read_mode=mode, activation=Activation.RELU, window=200, shift=5)
            got += [chip.mvm(1, x), chip.mvm(1, x[3]), *chip.verify_row(1, 7)]
        answers.append((got, chip.counters(1)))
    (batched, batched_counters), (one_by_one, one_by_one_counters) = answers
    assert batched_counters == one_by_one_counters
    for a, b in zip(batched, one_by_one, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_receive_takes_queued_packets_in_order_across_and_inside_batches():
    """Output of three kinds from two tiles, left queued, comes out in the order it was made
    whether taken one by one, by receive or by receive_batches (splitting a batch of results)."""

    def queued() -> TwinTransport:
        chip, _ = make(rows=8, cols=12, tiles=2)
        x = np.arange(-48, 48).reshape(12, 8)
        chip.command(0, Command.VERIFY_ROW, 2, wait=False)
        chip.command(1, Command.MVM, 8, wait=False)  # fed in three sends of 5, 2 and 1 vectors
        chip.transport.send(pk.pack_activations(x[:5], chip.geometry, 1))
        chip.command(0, Command.CALIBRATE, 1, wait=False)
        chip.transport.send(pk.pack_activations(x[5:7], chip.geometry, 1))
        chip.transport.send(pk.pack_activations(x[7], chip.geometry, 1))
        chip.command(0, Command.MVM, 4, wait=False)
        chip.transport.send(pk.pack_activations(x[8:], chip.geometry, 0))
        return chip.transport

    reference = queued()
    expected = [reference.receive(1)[0] for _ in range(reference.pending())]
    kinds = [PacketType(int(pk.header_fields(int(p[0]))["type"])) for p in expected]
    assert kinds == [PacketType.VERIFY_DATA] + [PacketType.RESULT] * 5 + [PacketType.CALIB_DATA] + \
        [PacketType.RESULT] * 7
    twin = queued()
    got = twin.receive(3)
    assert twin.pending() == 11
    batches = twin.receive_batches(4)
    assert [len(b) for b in batches] == [3, 1]  # the rest of the batch of five, the CALIB_DATA packet
    got += [packet for batch in batches for packet in batch]
    batches = twin.receive_batches(4)
    assert [len(b) for b in batches] == [2, 1, 1]
    got += [packet for batch in batches for packet in batch] + twin.receive(3)
    assert twin.pending() == 0
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    with pytest.raises(SimulationError, match="asked for 1 output packets but the twin has produced 0"):
        twin.receive_batches(1)


@pytest.mark.parametrize("shape", [(0, 8), (2, 7), (1, 2, 8), ()])
def test_mvm_input_shapes(shape):
    """An empty batch gives an empty result (no MVM command: its count must be >= 1); any
    other shape than (rows,) or (N, rows) is one clear error naming both."""
    geometry = Geometry(8, 8, 1)
    chip = Chip(TwinTransport(geometry, AnalogSpec(kwargs={"preset": "ideal", "seed": 0})), geometry)
    x = np.zeros(shape, dtype=np.int8)
    if shape == (0, 8):
        y = chip.mvm(0, x)
        assert y.shape == (0, 8) and y.dtype == np.int8
        assert chip.mvm(0, np.ones(8, dtype=np.int8)).shape == (8,)  # and the chip still works
    else:
        with pytest.raises(ConfigError, match=r"x must have shape \(8,\) or \(N, 8\), not "):
            chip.mvm(0, x)


@pytest.mark.parametrize("kwargs, message", [
    ({"shift": 32}, r"shift must be an integer in \[0, 31\], not 32"),
    ({"shift": -1}, r"shift must be an integer in \[0, 31\], not -1"),
    ({"window": 4096}, r"window must be an integer in \[0, 4095\] cycles, not 4096"),
    ({"window": 1.5}, r"window must be an integer in \[0, 4095\] cycles, not 1.5"),
])
def test_configure_refuses_what_the_registers_cannot_hold(kwargs, message):
    """Rather than the register keeping the low bits (shift 40 would act as 8)."""
    geometry = Geometry(8, 8, 1)
    chip = Chip(TwinTransport(geometry, AnalogSpec(kwargs={"preset": "ideal", "seed": 0})), geometry)
    with pytest.raises(ConfigError, match=message):
        chip.configure(0, **kwargs)
    chip.configure(0, window=100, shift=31)  # a short window is written: MVMs then fail BAD_CONFIG


def test_command_words_follow_the_layout_and_refuse_what_it_cannot_hold():
    """The host's command encoding (`command_word`, without amaranth's const per command) is
    the CMD layout's, field for field; an argument the 24-bit field cannot hold is refused
    rather than cut to its low bits (an MVM of 2**24 + 5 vectors would count 5)."""
    rng = np.random.default_rng(0)
    for opcode, arg in [(0, 0), (255, COMMAND_ARG_MAX), *zip(rng.integers(0, 256, 50),
                                                               rng.integers(0, 2**24, 50), strict=True)]:
        word = command_word(int(opcode), int(arg))
        assert word == CommandWord.const({"opcode": int(opcode), "arg": int(arg)}).as_bits()
        assert command_fields(word) == (opcode, arg)
    with pytest.raises(ValueError, match=r"command arg must be in \[0, 16777215\], not 16777216"):
        command_word(Command.MVM.value, 2**24)
    chip, _ = make()
    refused = r"MVM command's argument must be an integer in \[0, 16777215\]"
    for arg in (2**24, -1, 1.0):
        with pytest.raises(ConfigError, match=refused):
            chip.command(0, Command.MVM, arg, wait=False)
    assert not chip.status(0).busy  # nothing was written


def test_a_batch_beyond_one_commands_count_runs_as_several_commands(monkeypatch):
    """Chip.mvm splits a batch longer than a command's argument can count into several MVM
    commands: the same codes as one command, and the tile's MVM count covers them all."""
    chip, analog = make(rows=8, cols=12)
    chip.configure(0, window=WINDOW_RESET)
    chip.load_ldpu(0, np.full(12, 3), np.zeros(12, dtype=np.int64))
    x = np.random.default_rng(1).integers(-128, 128, (11, 8)).astype(np.int8)
    whole = chip.mvm(0, x)
    monkeypatch.setattr("pcmhil.host.chip.COMMAND_ARG_MAX", 4)
    before = chip.read("MVM_COUNT", 0)
    assert np.array_equal(chip.mvm(0, x), whole)
    assert chip.read("MVM_COUNT", 0) - before == 11
