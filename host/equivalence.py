"""Random workloads run on any backend, and their traces compared code for code.

A workload is pure data (a list of operations, valid and invalid), generated from a seed, so
the same one runs on the twin and on the co-simulation. Running it records, after every
operation, every output code and the chip's whole visible state (status, error info, counters,
router status); two backends are equivalent on a workload when the records are identical.
LAST_MVM_CYCLES is informational (docs/numerics.md 6) and not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pcmhil.host import packets as pk
from pcmhil.host.chip import Chip
from pcmhil.interface import (
    CALIBRATE_MAX_LOG2,
    PWM_MAX_CYCLES,
    Activation,
    Command,
    Geometry,
    PacketType,
    ProgramMode,
    ReadMode,
    command_word,
)

#: Registers recorded after every operation (chip-level and per tile).
CHIP_STATE = ("IRQ_STATUS", "STREAM_STATUS", "STREAM_ERRORS")
TILE_STATE = ("STATUS", "CONFIG", "WINDOW", "LDPU_SHIFT", "ERROR_INFO", "MVM_COUNT",
              "ERROR_COUNT", "SATURATION_COUNT")


@dataclass
class Op:
    kind: str
    tile: int = 0
    args: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # short, for mismatch reports
        shapes = {k: (v.shape if isinstance(v, np.ndarray) else v) for k, v in self.args.items()}
        return f"{self.kind}(tile={self.tile}, {shapes})"


@dataclass
class Workload:
    geometry: Geometry
    seed: int
    ops: list[Op]


def random_workload(geometry: Geometry, seed: int, n_ops: int = 24, invalid: bool = True) -> Workload:
    """A random workload: programming, LDPU parameters, calibration, verify, MVM batches in both
    read modes, time steps, and (with `invalid`) every kind of rejected command and bad packet."""
    rng = np.random.default_rng(seed)
    rows, cols = geometry.rows, geometry.cols
    ops = [Op("program", t, {"plus": rng.integers(0, 256, (rows, cols)),
                             "minus": rng.integers(0, 256, (rows, cols))})
           for t in range(geometry.tiles)]
    kinds = ["configure", "load_ldpu", "calibrate", "verify", "mvm", "mvm", "mvm", "program_pulse",
             "program_row", "advance_time"]
    if invalid:
        kinds += ["bad_command", "bad_packet", "busy_abort", "bad_window"]
    for _ in range(n_ops):
        kind = kinds[rng.integers(len(kinds))]
        tile = int(rng.integers(geometry.tiles))
        ops.append(Op(kind, tile, _random_args(kind, rng, geometry)))
    return Workload(geometry, seed, ops)


def _random_inputs(rng, n: int, rows: int) -> np.ndarray:
    x = rng.integers(-128, 128, (n, rows))
    extremes = rng.random((n, rows)) < 0.1
    x[extremes] = rng.choice([-128, -127, -1, 0, 1, 127], size=int(extremes.sum()))
    return x


def _random_args(kind: str, rng, geometry: Geometry) -> dict:
    rows, cols = geometry.rows, geometry.cols
    if kind == "configure":
        return {"read_mode": ReadMode(int(rng.integers(2))),
                "activation": Activation(int(rng.integers(2))),
                "window": int(rng.integers(PWM_MAX_CYCLES, PWM_MAX_CYCLES + 160)),
                "shift": int(rng.integers(0, 13))}
    if kind == "load_ldpu":
        gain = rng.integers(-600, 600, cols)
        gain[rng.random(cols) < 0.05] = rng.choice([-(2**15), 2**15 - 1])
        bias = rng.integers(-(2**18), 2**18, cols)
        bias[rng.random(cols) < 0.05] = rng.choice([-(2**31), 2**31 - 1])
        return {"gain": gain, "bias": bias}
    if kind == "calibrate":
        return {"k": int(rng.integers(0, 4))}
    if kind == "verify":
        return {"row": int(rng.integers(rows))}
    if kind == "mvm":
        return {"x": _random_inputs(rng, int(rng.integers(1, 9)), rows)}
    if kind == "program_pulse":
        return {"row": int(rng.integers(rows)), "plus": rng.integers(-128, 128, cols),
                "minus": rng.integers(-128, 128, cols)}
    if kind == "program_row":
        return {"row": int(rng.integers(rows)), "plus": rng.integers(0, 256, cols),
                "minus": rng.integers(0, 256, cols)}
    if kind == "advance_time":
        return {"seconds": float(10 ** rng.uniform(0, 7))}
    if kind == "bad_command":
        choices = [(0x00, 0), (0x7F, 0), (Command.MVM.value, 0), (Command.VERIFY_ROW.value, rows),
                   (Command.PROGRAM_ROW.value, 1 << 17), (Command.CALIBRATE.value, CALIBRATE_MAX_LOG2 + 1),
                   (Command.LOAD_LDPU.value, 0), (Command.PROGRAM_ROW.value, 0), (Command.ABORT.value, 0),
                   (Command.LOAD_LDPU.value, 5)]
        opcode, arg = choices[rng.integers(len(choices))]
        return {"opcode": opcode, "arg": arg}
    if kind == "bad_packet":
        flaws = ["short", "long", "header_only", "type", "output_type", "tile"]
        kinds = [PacketType.ACTIVATIONS, PacketType.PROGRAM_DATA, PacketType.LDPU_PARAMS]
        return {"flaw": flaws[rng.integers(len(flaws))], "kind": kinds[rng.integers(len(kinds))]}
    if kind == "busy_abort":
        return {"x": _random_inputs(rng, int(rng.integers(0, 3)), rows),
                "intruder": [Command.CALIBRATE, Command.VERIFY_ROW, Command.MVM, 0x7F][rng.integers(4)]}
    if kind == "bad_window":
        return {"window": int(rng.integers(0, PWM_MAX_CYCLES)),
                "command": [Command.MVM, Command.VERIFY_ROW, Command.CALIBRATE][rng.integers(3)]}
    raise ValueError(kind)


def _bad_packet(geometry: Geometry, tile: int, flaw: str, kind: PacketType) -> np.ndarray:
    good_len = pk.expected_length(kind.value, geometry)
    header = pk.header_word(kind, tile)
    if flaw == "short":
        return np.array([header] + [0x5A5A5A5A] * (good_len - 2), np.uint32)
    if flaw == "long":
        return np.array([header] + [0xA5A5A5A5] * good_len, np.uint32)
    if flaw == "header_only":
        return np.array([header], np.uint32)
    if flaw == "type":
        return np.array([pk.header_word(0x7E, tile), 1, 2], np.uint32)
    if flaw == "output_type":
        return np.array([pk.header_word(PacketType.RESULT, tile), 1, 2], np.uint32)
    return np.array([pk.header_word(kind, geometry.tiles + 1)] + [0] * (good_len - 1), np.uint32)


def snapshot(chip: Chip) -> tuple:
    state = [("chip", name, chip.read(name)) for name in CHIP_STATE]
    for t in range(chip.geometry.tiles):
        state += [(t, name, chip.read(name, t)) for name in TILE_STATE]
    return tuple(state)


def _wait(chip: Chip, tile: int) -> None:
    busy = chip.map.register("STATUS", True).field("busy").mask
    chip.transport.poll(chip.map.address("STATUS", tile), busy, 0)


def run_op(chip: Chip, op: Op) -> list:
    """Execute one operation without raising on chip errors; returns its output codes."""
    t, a, g = op.tile, op.args, chip.geometry
    send, out = chip.transport.send, []
    if op.kind == "program":
        for row in range(g.rows):
            send(pk.pack_program_data(a["plus"][row], a["minus"][row], g, t))
            chip.command(t, Command.PROGRAM_ROW, row, wait=False)
            _wait(chip, t)
    elif op.kind in ("program_row", "program_pulse"):
        pulse = op.kind == "program_pulse"
        send(pk.pack_program_data(a["plus"], a["minus"], g, t, signed=pulse))
        mode = ProgramMode.PULSE if pulse else ProgramMode.TARGET
        chip.command(t, Command.PROGRAM_ROW, a["row"] | (mode.value << 16), wait=False)
        _wait(chip, t)
    elif op.kind == "configure":
        chip.configure(t, read_mode=a["read_mode"], activation=a["activation"], window=a["window"],
                       shift=a["shift"], irq_done=True, irq_error=True)
    elif op.kind == "load_ldpu":
        send(pk.pack_ldpu_params(a["gain"], a["bias"], g, t))
        chip.command(t, Command.LOAD_LDPU, wait=False)
        _wait(chip, t)
    elif op.kind in ("calibrate", "verify"):
        if op.kind == "calibrate":
            command, arg = Command.CALIBRATE, a["k"]
        else:
            command, arg = Command.VERIFY_ROW, a["row"]
        chip.command(t, command, arg, wait=False)
        _wait(chip, t)
        if not chip.status(t).error:
            out = chip.transport.receive(1)
    elif op.kind == "mvm":
        chip.command(t, Command.MVM, len(a["x"]), wait=False)
        send(pk.pack_activations(a["x"], g, t))
        out = chip.transport.receive(len(a["x"]))
        _wait(chip, t)
    elif op.kind == "advance_time":
        chip.advance_time(a["seconds"])
    elif op.kind == "bad_command":
        chip.write("CMD", command_word(a["opcode"], a["arg"]), t)
        _wait(chip, t)
    elif op.kind == "bad_packet":
        send(_bad_packet(g, t, a["flaw"], a["kind"]))
    elif op.kind == "busy_abort":
        n = len(a["x"])
        chip.command(t, Command.MVM, n + 1, wait=False)
        if n:
            send(pk.pack_activations(a["x"], g, t))
            out = chip.transport.receive(n)
        chip.write("CMD", command_word(a["intruder"]), t)
        out.append(snapshot(chip))
        chip.command(t, Command.ABORT, wait=False)
        _wait(chip, t)
    elif op.kind == "bad_window":
        chip.write("WINDOW", a["window"], t)
        chip.command(t, a["command"], 1, wait=False)
        _wait(chip, t)
        chip.write("WINDOW", PWM_MAX_CYCLES, t)
    else:
        raise ValueError(f"unknown operation {op.kind!r}")
    return out


def run_workload(chip: Chip, workload: Workload) -> list[tuple]:
    """Run every operation; after each, record its outputs and the chip state, then clear the
    tile's flags so the next record shows only the next operation's effects."""
    records = []
    for op in workload.ops:
        outputs = run_op(chip, op)
        records.append((repr(op), [np.asarray(o).tolist() for o in outputs], snapshot(chip)))
        for t in range(chip.geometry.tiles):
            chip.clear_flags(t)
        chip.write("STREAM_STATUS", 1)
    return records


def compare(a: list[tuple], b: list[tuple]) -> list[str]:
    """Human-readable mismatches between two traces of the same workload (empty = equivalent)."""
    problems = []
    for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
        if ra[1] != rb[1]:
            problems.append(f"op {i} {ra[0]}: output codes differ")
        for sa, sb in zip(ra[2], rb[2], strict=True):
            if sa != sb:
                problems.append(f"op {i} {ra[0]}: {sa[0]} {sa[1]} = {sa[2]:#x} vs {sb[2]:#x}")
    return problems
