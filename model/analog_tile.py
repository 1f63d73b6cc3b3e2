"""One tile's analog side as the chip sees it: the facade that the twin and the co-simulation
bind to the digital periphery.

`AnalogSpec` names what to build (a factory and its keyword arguments, all JSON-serialisable) so
that the twin, in the host process, and the co-simulation, in the simulator process, build
identical analog tiles from the same spec and seed.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field

import numpy as np

from pcmhil.errors import ConfigError

from . import kernels
from .checks import check_array, check_within
from .crossbar import Crossbar, CrossbarConfig
from .device import FaultRates
from .drive import SELECTS


@dataclass(frozen=True)
class AnalogSpec:
    """`factory(rows=, cols=, tiles=, **kwargs)` returns one analog tile object per chip tile."""

    factory: str = "pcmhil.model.analog_tile:make_analog_tiles"
    kwargs: dict = field(default_factory=dict)

    def build(self, rows: int, cols: int, tiles: int) -> list:
        module_name, _, attr = self.factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return list(factory(rows=rows, cols=cols, tiles=tiles, **self.kwargs))


class CycleWindow:
    """A window in cycle mode: one `step` per clock with the row drive of that clock.

    The column currents are kept up to date incrementally: between two cycles of a PWM window
    only the rows whose duration ends (and, at a window's start, the rows that begin) change
    their drive, so a step adds (new - old drive) x W over the changed rows only. Every current
    is an integer held exactly in float64 (|I| <= rows x max|W| < 2**53, drive.check_exact), so
    the sum is the same integer as Crossbar.column_currents' full product, in any order.
    """

    #: Above this fraction of rows changed, one full product is cheaper than the update.
    FULL_UPDATE_FRACTION = 0.25

    def __init__(self, tile: AnalogTile, select: str):
        self._tile = tile
        self._w = tile.crossbar.selected(select)  # fixed for the window: no program/drift inside
        self._drive = np.zeros(self._w.rows, dtype=np.int64)
        # With the kernels loaded, each step is one compiled loop over int64 currents (the same
        # integers): `kernels.cycle_step`.
        self._compiled = kernels.module()
        self._currents = np.zeros(self._w.cols, dtype=np.int64 if self._compiled is not None else np.float64)

    def step(self, active: np.ndarray) -> np.ndarray:
        """active[rows] in {-1, 0, +1} (conducting, with read polarity) -> pulses[cols] uint8."""
        tile = self._tile
        start = time.perf_counter()
        drive = check_array("active", active, (self._w.rows,), "int")
        if self._compiled is not None:
            pulses = tile.crossbar.cco.step_rows(self._compiled, drive, self._drive, self._w.w_int,
                                                 self._currents)
            tile.busy_s += time.perf_counter() - start
            return pulses
        changed = np.flatnonzero(drive != self._drive)
        if len(changed):
            check_within("active", drive[changed], -1, 1)
            if len(changed) > self.FULL_UPDATE_FRACTION * len(drive):
                self._currents = drive.astype(np.float64) @ self._w.w
            else:
                delta = (drive[changed] - self._drive[changed]).astype(np.float64)
                self._currents += delta @ self._w.w[changed]
            self._drive = drive.copy()
        pulses = tile.crossbar.cco.step(self._currents.astype(np.int64))
        tile.busy_s += time.perf_counter() - start
        return pulses


class AnalogTile:
    """One chip tile's analog side (crossbar + CCOs) as the digital periphery drives it.

    It numbers the operations the chip performs, exactly as docs/numerics.md section 2 says:
    every window is the next *window operation* (keying the CCO noise), every PROGRAM_ROW the
    next *programming operation* (keying programming noise). Selects and program modes arrive as
    the integer codes of pcmhil.interface (DeviceSelect: index into drive.SELECTS; ProgramMode:
    0 = target codes, 1 = pulse codes), so this package needs nothing of the interface.
    """

    def __init__(self, crossbar: Crossbar):
        self.crossbar = crossbar
        self.window_index = 0
        self.program_index = 0
        self.busy_s = 0.0  # wall time spent in the model (co-simulation benchmark breakdown)

    @property
    def cols(self) -> int:
        return self.crossbar.cols

    def _next_windows(self, count: int) -> np.ndarray:
        ops = np.arange(self.window_index, self.window_index + count, dtype=np.int64)
        self.window_index += count
        return ops

    def windows(self, durations, negative, select, n_cycles: int) -> np.ndarray:
        """Counts [B, cols] of B windows in order (durations [B, rows], negative [B, rows],
        select [B] DeviceSelect codes, window length n_cycles)."""
        start = time.perf_counter()
        durations = np.asarray(durations)
        select = np.asarray(select).reshape(-1)
        # 1 - 2 negative: +1 / -1 as int8 (np.where with scalars has no vector loop: ~50x slower)
        twice = np.multiply(np.asarray(negative, dtype=bool), 2, dtype=np.int8)
        polarity = np.subtract(1, twice, out=twice)
        ops = self._next_windows(len(durations))
        cco = self.crossbar.cco
        codes = select[:1] if len(select) < 2 or (select == select[0]).all() else np.unique(select)  # 10 us
        if len(codes) == 1:  # one batch, no copies of the drive (1-phase MVMs)
            counts = cco.window_counts_batch(durations, polarity, SELECTS[int(codes[0])], n_cycles, ops)
        else:
            counts = np.empty((len(durations), self.cols), dtype=np.int64)
            for code in codes:
                picked = select == code
                counts[picked] = cco.window_counts_batch(
                    durations[picked], polarity[picked], SELECTS[int(code)], n_cycles, ops[picked])
        self.busy_s += time.perf_counter() - start
        return counts

    def begin_window(self, select: int) -> CycleWindow:
        """Start the next window in cycle mode with DeviceSelect code `select`."""
        kernels.for_cycle_window()
        self.crossbar.cco.start_window(int(self._next_windows(1)[0]))
        return CycleWindow(self, SELECTS[int(select)])

    def program_row(self, row: int, plus, minus, mode) -> None:
        """PROGRAM_ROW with the staged bytes of each polarity (docs/numerics.md section 8):
        target mode: g = code / 255 * g_max of the polarity; pulse mode: signed int8 codes."""
        start = time.perf_counter()
        mode = int(getattr(mode, "value", mode))
        op = self.program_index
        self.program_index += 1
        codes = np.stack([np.asarray(plus), np.asarray(minus)], axis=1).astype(np.int64)
        devices = self.crossbar.devices
        if mode == PROGRAM_TARGET:
            devices.program_row(int(row), codes / TARGET_CODE_MAX * self.crossbar.preset.g_max_us, op)
        elif mode == PROGRAM_PULSE:
            devices.apply_pulses(int(row), np.where(codes >= 128, codes - 256, codes), op)
        else:
            raise ConfigError(f"program mode must be {PROGRAM_TARGET} or {PROGRAM_PULSE}, not {mode!r}")
        self.busy_s += time.perf_counter() - start

    def advance_time(self, seconds: float) -> None:
        self.crossbar.devices.advance_time(seconds)


#: Program modes and the largest target code (docs/numerics.md section 8).
PROGRAM_TARGET, PROGRAM_PULSE = 0, 1
TARGET_CODE_MAX = 255


def make_analog_tiles(rows: int, cols: int, tiles: int, *, preset: str = "hermes-2dev",
                      seed: int = 0, **crossbar_options) -> list[AnalogTile]:
    """The default AnalogSpec factory: one Crossbar per tile, seeded by (seed, tile)."""
    options = dict(crossbar_options)
    if "faults" in options and isinstance(options["faults"], dict):
        options["faults"] = FaultRates(**options["faults"])
    return [AnalogTile(Crossbar(CrossbarConfig(preset=preset, rows=rows, cols=cols, seed=seed,
                                               tile=t, **options)))
            for t in range(tiles)]
