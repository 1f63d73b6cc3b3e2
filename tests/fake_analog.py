"""A tiny deterministic analog tile for tests of the digital side (not a physics model).

Counts are an exact integer function of the drive: per column an offset rate times the window
plus the signed charge through integer weights, so a test can compute what the chip must answer.
"""

from __future__ import annotations

import numpy as np

from pcmhil.interface import DeviceSelect, Geometry, ProgramMode


class FakeAnalogTile:
    def __init__(self, geometry: Geometry, seed: int = 0, offset_per_cycle: int = 2):
        rng = np.random.default_rng(seed)
        self.geometry = geometry
        self.g_plus = rng.integers(0, 4, size=(geometry.rows, geometry.cols))
        self.g_minus = rng.integers(0, 4, size=(geometry.rows, geometry.cols))
        self.offset_per_cycle = offset_per_cycle
        self.operations = 0
        self.programmed: list[tuple[int, np.ndarray, np.ndarray, ProgramMode]] = []
        self.time_s = 0.0

    def weights(self, select: int) -> np.ndarray:
        return {DeviceSelect.DIFFERENTIAL.value: self.g_plus - self.g_minus,
                DeviceSelect.PLUS.value: self.g_plus,
                DeviceSelect.MINUS.value: self.g_minus}[int(select)]

    def windows(self, durations, negative, select, n_cycles):
        durations = np.asarray(durations, dtype=np.int64)
        signed = np.where(negative, -durations, durations)
        counts = np.stack([signed[b] @ self.weights(select[b]) for b in range(len(durations))])
        self.operations += len(durations)
        # a CCO never counts below zero
        return np.maximum(counts + self.offset_per_cycle * n_cycles, 0)

    def program_row(self, row, plus, minus, mode):
        self.programmed.append((row, np.array(plus), np.array(minus), ProgramMode(mode)))

    def advance_time(self, seconds):
        self.time_s += seconds


def make_fake_tiles(rows: int, cols: int, tiles: int, seed: int = 0, offset_per_cycle: int = 2):
    """AnalogSpec factory for FakeAnalogTile (importable from the simulation via python_path)."""
    geometry = Geometry(rows, cols, tiles)
    return [FakeAnalogTile(geometry, seed + t, offset_per_cycle) for t in range(tiles)]
