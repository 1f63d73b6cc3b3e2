"""Column CCOs (current-controlled oscillators): current -> pulses, per cycle or per window.

The integer contract that makes the two cosim fidelity modes give identical counts:

Phase is an int64 in units of 2**-32 pulse. Per cycle c of a window, column j advances by
    dphi_c[j] = clip(offset_j + gain_j * I_c[j], 0, fmax)
(gain_j, offset_j: integers drawn once per array with per-column mismatch; fmax = max pulses per
cycle * 2**32; the clip is the CCO's saturation at 0 and at its maximum frequency). The window
starts at phi_0[j] = rint((0.5 + sigma_out * z) * 2**32), z ~ N(0, 1) keyed by (seed, tile,
operation index, column), capped below one pulse. After cycle c the phase is
phi_c = phi_0 + sum_{k <= c} dphi_k and the CCO has emitted
    E_c = max(0, floor(Nl(max(phi_c, 0)) / 2**32))
pulses in total, with Nl a static monotone compression (below). Pulses of cycle c:
E_c - E_{c-1} (E_{-1} = 0); window count: E at the last cycle.

Because E depends on the final phase only, the window count needs sum_c dphi_c, not the cycles:
- if no cycle can clip (offset + gain * upper <= fmax and offset + gain * lower >= 0 for bounds
  lower <= I_c <= upper on the drive's currents), sum_c dphi_c = n * offset + gain * Q exactly.
  The bounds (drive.current_bounds) come from matmuls: first the sums of the positive and of
  the negative terms over all conducting rows (2 matmuls; exact for 4-phase windows, whose
  currents only shrink during the window), then, for windows where that fails (typical for
  1-phase windows, whose signed terms cancel), the same per duration band (4 bands, 8 matmuls);
- otherwise (flagged columns only) the exact sum over the piecewise-constant currents: sort the
  rows by duration, prefix sums give the current of each segment between distinct durations
  (O(rows) per column and window: fast when saturation is rare, as it should be).

Nl(u) = u - u^2 / (2 knee) for u <= knee = phi_ref / beta, constant beyond (slope in [0, 1]).
It is evaluated as S0 * (C - K * (knee - u)^2), K = 1 / (2 knee), C = K * knee^2, with only
IEEE-exact elementwise operations (no exp/log, whose SIMD versions may differ with array length),
each monotone in u, so the rounded result is monotone too; S0 = 1 - 2**-20 keeps the slope below
1 by far more than the rounding error, so one cycle never emits more than fmax / 2**32 pulses.
With beta = 0, Nl is the identity and no float rounding is involved at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pcmhil.errors import ConfigError

from .checks import check_array, check_int
from .drive import (
    EXACT_FLOAT_LIMIT,
    SelectedConductance,
    check_drive,
    check_select,
    check_window_cycles,
    current_bounds,
    integrated_charge,
)
from .keyed_rng import KeyedRng, Stream
from .presets import CcoPreset

#: Phase units per pulse.
PHASE_PER_PULSE = 2**32
_SLOPE_MARGIN = 1.0 - 2.0**-20
#: Pairs (window, column) evaluated at once on the exact path: bounds its memory to ~32 MB.
_EXACT_CHUNK_ELEMENTS = 2**22
#: Bands of the second, tighter clip test (drive.current_bounds) and windows per chunk of it.
_REFINED_BANDS = 4
_REFINE_CHUNK_WINDOWS = 1024


class ConductanceSource(Protocol):
    """What the CCO needs from the crossbar: the current integer conductance matrix."""

    def selected(self, select: str) -> SelectedConductance: ...


@dataclass(frozen=True)
class CcoTransfer:
    """Per-column integer transfer of the CCOs of one array (phase units, see module doc)."""

    gain: np.ndarray
    offset: np.ndarray
    fmax: int
    knee: float
    output_noise_pulses: float

    @classmethod
    def draw(cls, preset: CcoPreset, cols: int, full_scale_lsb: float, rng: KeyedRng) -> CcoTransfer:
        """Draw the per-column mismatch once per array (keyed, stream CCO_MISMATCH).

        gain: a column current of full_scale_lsb conductance LSBs moves the rate by
        (max_pulses_per_cycle - offset) pulses per cycle, times (1 + mismatch).
        """
        fmax = preset.max_pulses_per_cycle * PHASE_PER_PULSE
        z_gain, z_offset = rng.generator(Stream.CCO_MISMATCH, 0).standard_normal((2, cols))
        swing = preset.max_pulses_per_cycle - preset.offset_pulses_per_cycle
        gain = np.rint(swing * PHASE_PER_PULSE / full_scale_lsb * (1 + preset.gain_mismatch_rel * z_gain))
        offset = np.rint((preset.offset_pulses_per_cycle
                          + preset.offset_mismatch_pulses_per_cycle * z_offset) * PHASE_PER_PULSE)
        beta = preset.nonlinearity_beta
        knee = preset.nonlinearity_ref_pulses * PHASE_PER_PULSE / beta if beta > 0 else 0.0
        return cls(np.maximum(gain, 0).astype(np.int64), np.clip(offset, 0, fmax).astype(np.int64),
                   fmax, knee, preset.output_noise_pulses)

    @property
    def max_window_cycles(self) -> int:
        """Longest window whose phase stays an exact float64 integer."""
        return (EXACT_FLOAT_LIMIT - 2 * PHASE_PER_PULSE) // self.fmax

    @property
    def max_current_lsb(self) -> int:
        """Largest |current| whose phase increment cannot overflow int64."""
        return 2**62 // max(int(self.gain.max(initial=0)), 1)

    def increment(self, currents: np.ndarray) -> np.ndarray:
        """dphi = clip(offset + gain * I, 0, fmax) for currents (..., cols)."""
        return self._saturated_rate(self.offset, self.gain, currents)

    def _saturated_rate(self, offset: np.ndarray, gain: np.ndarray, currents: np.ndarray) -> np.ndarray:
        """clip(offset + gain * currents, 0, fmax), in place (np.clip is several times slower)."""
        rate = gain * currents
        rate += offset
        np.maximum(rate, 0, out=rate)
        return np.minimum(rate, self.fmax, out=rate)

    def cumulative_pulses(self, phase: np.ndarray) -> np.ndarray:
        """E = max(0, floor(Nl(max(phase, 0)) / 2**32)), int64."""
        u = np.maximum(phase, 0).astype(np.float64)
        if self.knee > 0:
            k = 0.5 / self.knee
            v = self.knee - np.minimum(u, self.knee)
            u = _SLOPE_MARGIN * (k * (self.knee * self.knee) - k * (v * v))
        return np.floor(u * (1.0 / PHASE_PER_PULSE)).astype(np.int64)

    def initial_phase(self, rng: KeyedRng, op_indices: np.ndarray) -> np.ndarray:
        """phi_0 (len(op_indices), cols): half a pulse plus keyed output noise, below one pulse."""
        shape = (len(op_indices), len(self.gain))
        if self.output_noise_pulses == 0:
            return np.full(shape, PHASE_PER_PULSE // 2, dtype=np.int64)
        z = rng.normal(Stream.CCO_OUTPUT, op_indices, shape[1])
        phase = np.rint((0.5 + self.output_noise_pulses * z) * PHASE_PER_PULSE)
        return np.minimum(phase, PHASE_PER_PULSE - 1).astype(np.int64)

    def clip_free(self, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """True where no cycle's current within [lower, upper] can reach a saturation."""
        return (self.offset + self.gain * upper <= self.fmax) & (self.offset + self.gain * lower >= 0)

    def exact_advance(self, w_int: np.ndarray, d: np.ndarray, s: np.ndarray, n_window_cycles: int,
                      window: np.ndarray, column: np.ndarray) -> np.ndarray:
        """sum_c dphi_c for the (window, column) pairs given, cycle-exact with saturation.

        Rows sorted by decreasing duration (once per window): during cycles [d_(p+1), d_(p))
        exactly the rows 0..p conduct, so the current there is the prefix sum C_p; after the
        longest duration no row conducts and the rate is the offset. Cost: O(rows) per pair.
        """
        windows, pair_window = np.unique(window, return_inverse=True)
        order = np.argsort(-d[windows], axis=1, kind="stable")
        d_sorted = np.take_along_axis(d[windows], order, axis=1)
        conducting = int((d_sorted > 0).sum(axis=1).max(initial=0))  # rows never on add nothing
        order, d_sorted = order[:, :conducting], d_sorted[:, :conducting]
        s_sorted = np.take_along_axis(s[windows], order, axis=1)
        lengths = d_sorted - np.pad(d_sorted[:, 1:], ((0, 0), (0, 1)))
        idle = n_window_cycles - d[windows].max(axis=1)
        w_columns = np.ascontiguousarray(w_int.T).ravel()  # a column's conductances contiguous
        rows = w_int.shape[0]
        total = np.empty(len(window), dtype=np.int64)
        step = max(1, _EXACT_CHUNK_ELEMENTS // max(conducting, 1))
        for start in range(0, len(window), step):
            k, j = pair_window[start:start + step], column[start:start + step]
            terms = np.take(w_columns, j[:, None] * rows + order[k])
            terms *= s_sorted[k]
            rate = self._saturated_rate(self.offset[j, None], self.gain[j, None], np.cumsum(terms, axis=1))
            total[start:start + step] = np.einsum("pr,pr->p", lengths[k], rate) + idle[k] * self.offset[j]
        return total


class CCO:
    """The column CCOs of one crossbar, in cycle mode (`start_window`/`step`) or window mode.

    Both modes implement the module-level contract and give identical counts.
    """

    def __init__(self, transfer: CcoTransfer, source: ConductanceSource, rng: KeyedRng):
        self.transfer = transfer
        self.cols = len(transfer.gain)
        self._source = source
        self._rng = rng
        self._phase: np.ndarray | None = None
        self._emitted: np.ndarray | None = None

    # ---- cycle mode -------------------------------------------------------------------------

    def start_window(self, op_index: int) -> None:
        """Begin a window: draw phi_0 for operation op_index, nothing emitted yet."""
        op_index = check_int("op_index", op_index, 0, 2**64 - 1)
        self._phase = self.transfer.initial_phase(self._rng, np.array([op_index], np.uint64))[0]
        self._emitted = np.zeros(self.cols, dtype=np.int64)

    def step(self, currents) -> np.ndarray:
        """One clock cycle with integer column currents (cols,) -> pulses (cols,) uint8."""
        currents = check_array("currents", currents, (self.cols,), "int")
        if self._phase is None:
            raise ConfigError("start_window must be called before step, not step alone")
        limit = self.transfer.max_current_lsb
        if np.abs(currents).max(initial=0) > limit:
            raise ConfigError(f"currents must be within [-{limit}, {limit}] LSB, "
                              f"not {int(np.abs(currents).max())!r}")
        self._phase = self._phase + self.transfer.increment(currents)
        emitted = self.transfer.cumulative_pulses(self._phase)
        pulses = emitted - self._emitted
        self._emitted = emitted
        return pulses.astype(np.uint8)

    # ---- window mode -------------------------------------------------------------------------

    def window_counts(self, durations, polarity, select: str, n_window_cycles: int,
                      op_index: int) -> np.ndarray:
        """Pulse counts (cols,) int64 of one window: durations, polarity int (rows,)."""
        w = self._source.selected(check_select(select))
        n = check_window_cycles(n_window_cycles, self.transfer.max_window_cycles)
        d, s = check_drive(durations, polarity, w.rows, n, batched=False)
        op = check_int("op_index", op_index, 0, 2**64 - 1)
        return self._counts(w, d, s, n, np.array([op], dtype=np.uint64))[0]

    def window_counts_batch(self, durations, polarity, select: str, n_window_cycles: int,
                            op_indices) -> np.ndarray:
        """Counts (B, cols) of B windows: durations, polarity int (B, rows), op_indices (B,)."""
        w = self._source.selected(check_select(select))
        n = check_window_cycles(n_window_cycles, self.transfer.max_window_cycles)
        d, s = check_drive(durations, polarity, w.rows, n, batched=True)
        ops = check_array("op_indices", op_indices, (len(d),), "int")
        if (ops < 0).any():
            raise ConfigError(f"op_indices must be >= 0, not {int(ops.min())!r}")
        return self._counts(w, d, s, n, ops.astype(np.uint64))

    def _counts(self, w: SelectedConductance, d: np.ndarray, s: np.ndarray, n: int,
                ops: np.ndarray) -> np.ndarray:
        if w.abs_max * w.rows > self.transfer.max_current_lsb:
            raise ConfigError(f"rows x max conductance must be <= {self.transfer.max_current_lsb} "
                              f"LSB for an exact CCO phase, not {w.abs_max * w.rows!r}")
        t = self.transfer
        charge = integrated_charge(w, d, s)
        may_clip = self._may_clip(w, d, s, n)
        advance = n * t.offset + t.gain * np.where(may_clip, 0, charge)
        window, column = np.nonzero(may_clip)
        if len(window):
            advance[window, column] = t.exact_advance(w.w_int, d, s, n, window, column)
        return t.cumulative_pulses(t.initial_phase(self._rng, ops) + advance)

    def _may_clip(self, w: SelectedConductance, d: np.ndarray, s: np.ndarray, n: int) -> np.ndarray:
        """(B, cols) True where some cycle may saturate: a cheap one-band test on every window,
        then a tighter multi-band test on the windows that failed it (drive.current_bounds)."""
        may_clip = ~self.transfer.clip_free(*current_bounds(w, d, s, n, 1))
        suspects = np.flatnonzero(may_clip.any(axis=1))
        for start in range(0, len(suspects), _REFINE_CHUNK_WINDOWS):
            b = suspects[start:start + _REFINE_CHUNK_WINDOWS]
            may_clip[b] &= ~self.transfer.clip_free(*current_bounds(w, d[b], s[b], n, _REFINED_BANDS))
        return may_clip
