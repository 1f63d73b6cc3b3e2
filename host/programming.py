"""Programming a tile through the chip: one-shot, and program-and-verify.

Program-and-verify is the host's closed loop over the chip's own commands, as on HERMES-class
chips (REFERENCE.md: iterative program-and-verify, < 3 % mean weight error): PROGRAM_ROW with
target codes, then repeatedly VERIFY_ROW (the row's G+ and G- read through the column ADCs)
and PROGRAM_ROW in pulse mode with partial SET/RESET pulses aimed at the target.

The verify read integrates over a long window (VERIFY_WINDOW cycles, the selected row conducting
throughout): a single device is a small current for an ADC sized for a whole column, and the
count resolution grows with the integration time. The window is as long as the 12-bit counters
allow with the CCO's offset rate (1.5 pulses/cycle) plus a full-scale device current.
Counts are converted to target-code units with the column's zero-input
offset (CALIBRATE) and a per-column gain estimated from the first read (the median of
count / target over the column's programmed devices: the one-shot programming error is zero
mean, and gain mismatch between columns is what the estimate removes).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from pcmhil.errors import ConfigError
from pcmhil.host.chip import Chip
from pcmhil.interface import ProgramMode

CODE_MAX = 255
PULSE_MAX = 127
#: Verify integration window (cycles); see the module docstring.
VERIFY_WINDOW = 2048
#: Devices with targets at least this large set a column's gain estimate.
GAIN_REFERENCE_MIN_CODE = 64


@dataclass(frozen=True)
class PulseAim:
    """Nominal partial-pulse response the controller aims with (the device's datasheet): a SET
    of relative amplitude a moves g by a * set_step_frac * (g_max - g), a RESET by
    -a * reset_step_frac * g. The devices respond stochastically around it."""

    set_step_frac: float = 0.5
    reset_step_frac: float = 0.9

    def codes(self, read: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Signed pulse codes that would move `read` to `target` (both in code units)."""
        read = np.clip(read, 0.0, CODE_MAX)
        up = target > read
        full = np.where(up, self.set_step_frac * (CODE_MAX - read), self.reset_step_frac * read)
        with np.errstate(divide="ignore", invalid="ignore"):
            amplitude = np.where(full > 0, np.abs(target - read) / full, 1.0)
        magnitude = np.clip(np.rint(amplitude * PULSE_MAX), 1, PULSE_MAX).astype(np.int64)
        return np.where(up, magnitude, -magnitude)


@dataclass
class ProgramReport:
    """Result of programming one tile (errors in target-code units, 255 = full scale)."""

    error_codes: np.ndarray  # [rows, cols, 2] last verified estimate minus target
    iterations: np.ndarray  # [rows, cols, 2] pulses each device received
    converged: np.ndarray  # [rows, cols, 2]
    verify_passes: int

    @property
    def mean_abs_error_rel(self) -> float:
        """Mean |error| relative to full scale over devices (what the < 3 % anchor measures)."""
        return float(np.abs(self.error_codes).mean() / CODE_MAX)

    def summary(self) -> dict:
        return {"mean_abs_error_rel": round(self.mean_abs_error_rel, 5),
                "converged_fraction": round(float(self.converged.mean()), 5),
                "mean_pulses": round(float(self.iterations.mean()), 3),
                "max_pulses": int(self.iterations.max(initial=0)),
                "verify_passes": self.verify_passes}


def program_one_shot(chip: Chip, tile: int, plus: np.ndarray, minus: np.ndarray, progress=None) -> None:
    rows = chip.geometry.rows
    for row in range(rows):
        chip.program_row(tile, row, plus[row], minus[row])
        if progress and (row + 1) % 64 == 0:
            progress(f"tile {tile}: programmed {row + 1}/{rows} rows")


def _verify(chip: Chip, tile: int, offsets: np.ndarray, rows) -> np.ndarray:
    """Offset-corrected counts [len(rows), cols, 2] of the given rows."""
    out = []
    for row in rows:
        plus, minus = chip.verify_row(tile, int(row))
        out.append(np.stack([plus, minus], axis=-1) - offsets[:, None])
    return np.array(out, dtype=np.float64)


def column_gains(counts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Counts per target code for each column: median over the column's well-programmed
    devices, the global median for a column without any."""
    ratio = np.where(targets >= GAIN_REFERENCE_MIN_CODE, counts / np.maximum(targets, 1), np.nan)
    per_column = ratio.transpose(1, 0, 2).reshape(targets.shape[1], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns fall back below
        gains = np.nanmedian(per_column, axis=1)
        fallback = np.nanmedian(ratio)
    if not np.isfinite(fallback) or fallback <= 0:
        raise ConfigError("the tile must hold some targets >= "
                          f"{GAIN_REFERENCE_MIN_CODE} to calibrate verify reads, not none")
    return np.where(np.isfinite(gains) & (gains > 0), gains, fallback)


def program_and_verify(chip: Chip, tile: int, plus: np.ndarray, minus: np.ndarray, *,
                       tolerance_codes: float = 2.5, max_iterations: int = 4,
                       aim: PulseAim = PulseAim(), progress=None) -> ProgramReport:
    """Program the tile to target codes [rows, cols] (per polarity) with closed-loop tuning."""
    g = chip.geometry
    targets = np.stack([np.asarray(plus), np.asarray(minus)], axis=-1).astype(np.float64)
    if targets.shape != (g.rows, g.cols, 2):
        raise ConfigError(f"target codes must have shape {(g.rows, g.cols)}, not {targets.shape[:2]}")
    window = chip.read("WINDOW", tile)
    program_one_shot(chip, tile, plus, minus, progress)
    chip.write("WINDOW", VERIFY_WINDOW, tile)
    try:
        offsets = chip.calibrate(tile, 2).astype(np.float64)
        # Rows whose every target is 0 hold no weight (mapper padding): one-shot is enough.
        used = np.flatnonzero(targets.any(axis=(1, 2)))
        counts = np.zeros(targets.shape)
        counts[used] = _verify(chip, tile, offsets, used)
        gains = column_gains(counts[used], targets[used])
        estimate = np.where(targets.any(axis=(1, 2))[:, None, None], counts / gains[None, :, None], targets)
        # A verify read cannot resolve less than a count: never aim tighter than 1.5 counts.
        tolerance_codes = max(tolerance_codes, 1.5 / float(np.median(gains)))
        iterations = np.zeros(targets.shape, dtype=np.int64)
        passes = 1
        for _ in range(max_iterations):
            error = estimate - targets
            todo = np.abs(error) > tolerance_codes
            rows = np.flatnonzero(todo.any(axis=(1, 2)))
            if not len(rows):
                break
            for row in rows:
                codes = np.where(todo[row], aim.codes(estimate[row], targets[row]), 0)
                chip.program_row(tile, int(row), codes[:, 0], codes[:, 1], ProgramMode.PULSE)
                iterations[row] += codes != 0
            estimate[rows] = _verify(chip, tile, offsets, rows) / gains[None, :, None]
            passes += 1
            if progress:
                progress(f"tile {tile}: verify pass {passes}, {int(todo.sum())} devices were off target")
        error = estimate - targets
    finally:
        chip.write("WINDOW", window, tile)
    return ProgramReport(error, iterations, np.abs(error) <= tolerance_codes, passes)
