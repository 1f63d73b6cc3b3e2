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
- if no cycle can clip (every I_c within the column's current limits [lower, upper], the
  integers where offset + gain * I lies in [0, fmax]), sum_c dphi_c = n * offset + gain * Q
  exactly. drive.currents_may_leave proves that with float32 matmuls over the rows the batch
  drives (one for 4-phase windows, whose currents only shrink during the window; per duration
  band for 1-phase windows) and a proven rounding margin, then, for the 1-phase pairs those
  bounds leave open in a batch, by an exact integer scan of their currents in the bands they
  failed; it may flag a pair that does not clip, never miss one that does;
- otherwise (flagged pairs only) the exact sum over the piecewise-constant currents: sort the
  rows by duration, prefix sums give the current of each segment between distinct durations
  (O(rows) per column and window: fast when saturation is rare, as it should be).
Window mode carries charges and phases as float64 holding exact integers: every one stays below
2**53 (drive.check_exact, max_window_cycles), so each operation on them is exact, and it saves
the conversions to and from int64 (cycle mode keeps int64).

Nl(u) = u - u^2 / (2 knee) for u <= knee = phi_ref / beta, constant beyond (slope in [0, 1]).
It is evaluated as S0 * (C - K * (knee - u)^2), K = 1 / (2 knee), C = K * knee^2, with only
IEEE-exact elementwise operations (no exp/log, whose SIMD versions may differ with array length),
each monotone in u, so the rounded result is monotone too; S0 = 1 - 2**-20 keeps the slope below
1 by far more than the rounding error, so one cycle never emits more than fmax / 2**32 pulses.
With beta = 0, Nl is the identity and no float rounding is involved at all.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import cache, cached_property
from typing import NoReturn, Protocol

import numpy as np

from pcmhil.errors import ConfigError

from . import int_gemm, kernels, window_worker
from .checks import check_array, check_int, check_within
from .drive import (
    EXACT_FLOAT_LIMIT,
    SelectedConductance,
    charge_digits,
    check_drive,
    check_exact,
    check_select,
    check_window_cycles,
    currents_may_leave,
    integrated_charge,
    rows_by_duration,
    signed_terms,
    single_threaded_blas,
    terms_sign,
)
from .keyed_rng import KeyedRng, Stream, normal_of_bits, splitmix64
from .presets import CcoPreset

#: Phase units per pulse.
PHASE_PER_PULSE = 2**32
_SLOPE_MARGIN = 1.0 - 2.0**-20
#: Pairs (window, column) evaluated at once on the exact path: bounds its memory to ~32 MB.
_EXACT_CHUNK_ELEMENTS = 2**22
#: Windows per chunk of the elementwise tail (noise, phase, pulses): its ~30 passes then work on
#: arrays that stay in the CPU cache (64 windows x 256 columns x 8 bytes = 128 kB; measured
#: ~2.5 ms faster per 1,000 windows than one chunk). In the two threads of a large batch
#: (`CCO._counts`), 256: every numpy call lets the other thread take the GIL, and each hand-over
#: costs a context switch (~300 per 1,000 windows with 64, ~150 with 256 and the scan's coarser
#: blocks; measured at 256 x 256: 22.0 -> 19.9 ms per 1,000 windows, while one thread alone
#: is 27.5 ms with the fine chunks and 31.5 ms with the coarse ones).
_TAIL_CHUNK_WINDOWS = {False: 64, True: 256}
#: `CcoTransfer.counts_after` brackets phi_0 by the top this many bits of its hash (two tables of
#: 4,096 float64, in the CPU cache).
_NOISE_BIN_BITS = 12
#: ... for chunks of at least this many windows: for fewer, the bracket's extra numpy calls cost
#: more than ndtri on their few values (one window at 256 columns: ~65 us with, ~50 us without).
#: The compiled bracket (`kernels`) is faster for any number (one window: ~30 us less).
_BRACKET_MIN_WINDOWS = 8
#: With the compiled kernels, calls of up to this many windows sum every pair exactly
#: (`kernels.exact_windows`, ~45 us a window at 256 x 256) instead of the band test, the
#: charge's matmul and the exact sums of the pairs that may clip (~300 us for one window).
_EXACT_ALL_MAX_WINDOWS = 32
#: `_driven_rows` restricts the matrix to the driven rows for batches of at least this many
#: windows.
_RESTRICT_MIN_WINDOWS = 64
#: Batches of at least window_worker.MIN_WINDOWS windows run in two halves at once
#: (`CCO._halves`): with the per-pair loops compiled (`kernels`), in two threads of this
#: process; else in the worker process, or in two threads from _PARALLEL_MIN_WINDOWS (each of
#: the numpy path's many calls hands the GIL over, which costs more).
_PARALLEL_MIN_WINDOWS = 512
#: ... the caller's half this fraction of the windows when the other half goes to the worker
#: process, whose half also moves through pipes (~1 ms of ~14 at 256 x 256, measured).
_CALLER_SHARE = 0.52


class _ThreadShare:
    """The caller's share of a large batch split between two threads (`CCO._halves`), adapted
    to their speeds: after each batch, halfway towards the share that would have made both
    halves take the same time, within [LOW, HIGH]. The two cores of a virtual machine can run
    at different speeds for seconds at a time (measured on this project's 2-core machine: one
    thread's half of a 1,000-window batch 8.4-9.4 ms, the other's 6.3 ms, over consecutive
    batches, each thread's CPU time equal to its wall time), and equal halves wait for the
    slower one. Counts never depend on the split: each window's count depends on that window
    alone. Measured at 256 x 256 with the twin benchmark's workload, alternating blocks of 8
    batches in one process: 10.6 -> 9.6 and 10.4 -> 8.6 ms per batch (medians)."""

    LOW, HIGH = 0.25, 0.75

    def __init__(self):
        self.share = 0.5

    def split(self, windows: int) -> int:
        """The caller's window count of a batch of `windows` (>= 2): at least one each."""
        return min(max(round(windows * self.share), 1), windows - 1)

    def update(self, caller_windows: int, caller_s: float, other_windows: int, other_s: float) -> None:
        caller_rate, other_rate = caller_s / caller_windows, other_s / other_windows
        if caller_rate > 0 and other_rate > 0:
            balanced = other_rate / (caller_rate + other_rate)
            self.share = min(max(0.5 * (self.share + balanced), self.LOW), self.HIGH)


_thread_share = _ThreadShare()


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

    @cached_property
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
        """E = max(0, floor(Nl(max(phase, 0)) / 2**32)), int64, for int64 phases or float64 ones
        holding exact integers (the same float64 u either way): `_pulses_real` truncated (it is
        >= 0: floor = truncation)."""
        return self._pulses_real(phase).astype(np.int64)

    def _pulses_real(self, phase: np.ndarray) -> np.ndarray:
        """S0 Nl(max(phase, 0)) / 2**32 as a new float64 array (>= 0), with the same IEEE
        operations as S0 * (C - K * v * v), v = knee - min(u, knee)."""
        u = np.maximum(phase, 0, dtype=np.float64)
        if self.knee > 0:
            k = 0.5 / self.knee
            v = np.subtract(self.knee, np.minimum(u, self.knee, out=u), out=u)
            kv2 = np.multiply(v, v, out=u)
            kv2 *= k
            u = np.subtract(k * (self.knee * self.knee), kv2, out=u)
        u *= self._pulse_scale
        return u  # C >= K v v and rounding is monotone: u >= 0

    @property
    def _pulse_scale(self) -> float:
        """The last factor of `_pulses_real`: 2**-32, times S0 with the nonlinearity (in one
        product: scaling by 2**-32 is exact)."""
        return (_SLOPE_MARGIN if self.knee > 0 else 1.0) / PHASE_PER_PULSE

    def initial_phase(self, rng: KeyedRng, op_indices: np.ndarray) -> np.ndarray:
        """phi_0 (len(op_indices), cols) as float64 holding integers: half a pulse plus keyed
        output noise, below one pulse (rint((0.5 + sigma_out z) 2**32))."""
        shape = (len(op_indices), len(self.gain))
        if self.output_noise_pulses == 0:
            return np.full(shape, PHASE_PER_PULSE // 2, dtype=np.float64)
        return self._phase_of(rng.normal(Stream.CCO_OUTPUT, op_indices, shape[1]))

    def _phase_of(self, z: np.ndarray) -> np.ndarray:
        """phi_0 of standard normal values z, in place: monotone in z (every step rounds
        monotonically)."""
        # (sigma z + 0.5) 2**32 as sigma 2**32 z + 2**31: scaling by 2**32 is exact, so both
        # round alike
        z *= self.output_noise_pulses * PHASE_PER_PULSE
        z += PHASE_PER_PULSE // 2
        np.rint(z, out=z)
        return np.minimum(z, PHASE_PER_PULSE - 1, out=z)

    def counts_after(self, rng: KeyedRng, op_indices: np.ndarray, advance: np.ndarray) -> np.ndarray:
        """Window counts cumulative_pulses(phi_0 + advance), int64 (len(op_indices), cols), for
        float64 advances holding exact integers, without phi_0 for nearly every element.

        The count is monotone in phi_0, which is monotone in the hash behind it (`_phase_of`,
        `keyed_rng.uniform_of_bits`, and ndtri up to its rounding): the hash's top
        _NOISE_BIN_BITS bits give a bin whose phi_0 lies within (`_phase_brackets`), and where
        the counts at both ends of the bracket agree, that is the count. Only the rest (about
        sigma_out times a bin's width in z, ~0.1 % of them at sigma_out = 0.1) take ndtri,
        whose scalar loop costs 25 elementwise passes' worth (`initial_phase`)."""
        compiled = kernels.module()
        if self.output_noise_pulses == 0 or (len(op_indices) < _BRACKET_MIN_WINDOWS and compiled is None):
            phase = self.initial_phase(rng, op_indices)
            phase += advance
            return self.cumulative_pulses(phase)
        if compiled is not None:  # the same steps compiled, an element at a time (any number of windows)
            per_op, per_lane = rng.keys(Stream.CCO_OUTPUT, op_indices, len(self.gain))
            counts = np.empty(advance.shape, dtype=np.int64)
            open_ = np.empty(advance.shape, dtype=np.bool_)
            compiled.bracketed_counts(per_op, per_lane, 64 - _NOISE_BIN_BITS, self._bracket_table, advance,
                                      *self._pulse_constants, counts, open_)
            self._open_counts(per_op, per_lane, open_, advance, counts)
            return counts
        lowest, reach = self._phase_brackets
        bits = rng.bits(Stream.CCO_OUTPUT, op_indices, len(self.gain))
        bins = np.right_shift(bits, np.uint64(64 - _NOISE_BIN_BITS)).view(np.int64)
        low = np.take(lowest, bins, mode="clip")
        low += advance
        real = self._pulses_real(low)
        counts = real.astype(np.int64)
        real += np.take(reach, bins, mode="clip")
        open_ = real >= counts + 1  # the count at the bracket's high end may be higher
        if open_.any():
            open_ = np.flatnonzero(open_)  # flat: np.nonzero of a 2-D array is ~10x slower
            counts.ravel()[open_] = self._counts_of_bits(bits.ravel()[open_], advance.ravel()[open_])
        return counts

    def counts_of_charge(self, rng: KeyedRng, op_indices: np.ndarray, charge: np.ndarray, negated: bool,
                         n_window_cycles: int, pairs: np.ndarray, pair_advance: np.ndarray, compiled,
                         out: np.ndarray | None = None) -> np.ndarray:
        """`counts_after` of the advances n offset + gain Q, with Q from the charge's int8
        products (`drive.charge_digits`: (digits, windows, cols), negated) and the same float64
        operations as `window_counts`, except the pairs of the flat indices `pairs` (window
        cols + column, ascending), whose advance is pair_advance: one compiled loop (`kernels`)
        for what otherwise takes a float64 charge and a dozen passes over it. For sigma_out > 0
        (the bracket). Into `out` (int64 (windows, cols)) if given."""
        per_op, per_lane = rng.keys(Stream.CCO_OUTPUT, op_indices, len(self.gain))
        shape = charge.shape[1:]
        counts = np.empty(shape, dtype=np.int64) if out is None else out
        open_ = np.empty(shape, dtype=np.bool_)
        open_advance = np.empty(shape)
        n_offset = (n_window_cycles * self.offset).astype(np.float64)
        compiled.charged_counts(charge, negated, self._gain_float, n_offset, pairs, pair_advance, per_op,
                                per_lane, 64 - _NOISE_BIN_BITS, self._bracket_table, *self._pulse_constants,
                                counts, open_, open_advance)
        self._open_counts(per_op, per_lane, open_, open_advance, counts)
        return counts

    def _open_counts(self, per_op: np.ndarray, per_lane: np.ndarray, open_: np.ndarray, advance: np.ndarray,
                     counts: np.ndarray) -> None:
        """The counts where the bracket left them open (bool (windows, cols)), from phi_0
        itself (ndtri), into counts: as `counts_after`, the windows' hashes from their keys
        (`keyed_rng.KeyedRng.keys`)."""
        if not open_.any():
            return
        flat = np.flatnonzero(open_)
        window, column = np.divmod(flat, open_.shape[1])
        counts.ravel()[flat] = self._counts_of_bits(splitmix64(per_op[window] ^ per_lane[column]),
                                                    advance.ravel()[flat])

    def _counts_of_bits(self, bits: np.ndarray, advance: np.ndarray) -> np.ndarray:
        """cumulative_pulses(phi_0 + advance) of elements given by their noise hashes (phi_0
        from ndtri: `_phase_of`, `normal_of_bits`), where the bracket left the count open."""
        phase = self._phase_of(normal_of_bits(bits))
        phase += advance
        return self.cumulative_pulses(phase)

    @cached_property
    def _gain_float(self) -> np.ndarray:
        """gain as float64 (exact: gain < 2**53), as numpy converts it in Q * gain."""
        return self.gain.astype(np.float64)

    @property
    def _pulse_constants(self) -> tuple[float, float, float, float]:
        """(knee, k, k knee**2, scale) of `_pulses_real`, for the compiled kernels."""
        k = 0.5 / self.knee if self.knee > 0 else 0.0
        return self.knee, k, k * (self.knee * self.knee), self._pulse_scale

    @cached_property
    def _phase_brackets(self) -> tuple[np.ndarray, np.ndarray]:
        """(lowest, reach) float64 (2**_NOISE_BIN_BITS,) per bin of the hashes' top bits: the
        lowest phi_0 of the bin's hashes, and how far above the pulses of lowest + advance
        (`_pulses_real`) those of any phi_0 of the bin can be.

        The uniform is monotone in the hash, so a bin's uniforms lie between those of its first
        and last hash; ndtri is within 1e-15 of the (monotone) inverse normal CDF relatively
        (cephes ndtri.c: peak relative error 7.2e-16), so widening its values by
        2**-40 (1 + |z|) brackets every z of the bin, and `_phase_of` is monotone: phi_0 lies
        in [lowest, highest]. Nl has slope <= 1 and S0 < 1, so the exact pulses grow by at most
        (highest - lowest) 2**-32 over the bracket. Each float64 evaluation differs from the
        exact value by at most ~5 knee 2**-53 phase units (C and K v v lie below knee; knee <=
        2**61, presets.CcoPreset) plus a few units in the last place of the result (< 2**21
        pulses: max_window_cycles), and adding reach to it rounds by no more: reach adds
        2**-20 + knee 2**-80 pulse, more than twice all of these. So where
        real(lowest + advance) + reach stays below the next integer, every phi_0 of the bin
        gives the same count."""
        first = np.arange(2**_NOISE_BIN_BITS, dtype=np.uint64) << np.uint64(64 - _NOISE_BIN_BITS)
        last = first | np.uint64(2**(64 - _NOISE_BIN_BITS) - 1)
        low, high = normal_of_bits(first), normal_of_bits(last)
        low -= 2.0**-40 * (1 + np.abs(low))
        high += 2.0**-40 * (1 + np.abs(high))
        lowest, highest = self._phase_of(low), self._phase_of(high)
        return lowest, (highest - lowest) / PHASE_PER_PULSE + (2.0**-20 + self.knee * 2.0**-80)

    @cached_property
    def _bracket_table(self) -> np.ndarray:
        """`_phase_brackets` as one float64 (2**_NOISE_BIN_BITS, 2) table, a bin's (lowest,
        reach) side by side: the compiled counts read both from one cache line (the two
        tables, 64 KB, do not fit the L1 cache; ~9 % off `charged_counts`, measured)."""
        return np.ascontiguousarray(np.stack(self._phase_brackets, axis=1))

    @cached_property
    def current_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) int64 (cols,): the integer currents I with offset + gain * I within
        [0, fmax], i.e. that do not saturate (floor divisions: exact). A column without gain
        never saturates: its limits are the int64 range."""
        gain = np.maximum(self.gain, 1)
        unbounded = self.gain == 0
        int64 = np.iinfo(np.int64)
        return (np.where(unbounded, int64.min, -(self.offset // gain)),
                np.where(unbounded, int64.max, (self.fmax - self.offset) // gain))

    def monotone_clipping(self, w: SelectedConductance, d: np.ndarray, s: np.ndarray, window: np.ndarray,
                          column: np.ndarray, sign: int) -> np.ndarray:
        """n offset + gain Q - sum_c dphi_c (float64, exact integers) for the pairs (window,
        column) of a drive whose terms s_i W[i, j] all have the sign `sign` (4-phase windows).

        Rows only switch off, so sign * I_c falls monotonically from its cycle-0 value C to 0,
        and the cycles that clip (I_c > upper for sign +1, I_c < lower for -1; never the other
        limit: 0 is inside) are a first run [0, c*). With the conducting rows by decreasing
        duration, those cycles are the segments with the most rows: a walk from C backwards,
        removing the rows of the shortest durations first, stops at the first segment inside.
        Over the clipped cycles the contract's rate is fmax (sign +1) or 0 (sign -1) instead of
        offset + gain I_c, so the difference to the unclipped sum is c* (offset - fmax) + gain A
        (+1) or c* offset + gain A (-1), A = sum_{c < c*} I_c. Integers throughout (int64); the
        cost is the clipped rows per pair, not all rows (`exact_advance`)."""
        windows, pair_window = np.unique(window, return_inverse=True)
        dw, sw = d[windows], s[windows]
        signed, d_sorted = rows_by_duration(dw, sw)
        # C: exact (|C| <= reach < 2**53, check_exact), one float64 matmul row per window
        current = (np.multiply(dw > 0, sw, dtype=np.float64) @ w.w)[pair_window, column].astype(np.int64)
        lower, upper = self.current_limits  # sign * I > limit: outside (-lower: the int64 range's end)
        limit = (upper if sign > 0 else -np.maximum(lower, -np.iinfo(np.int64).max))[column]
        ends = np.zeros((len(d_sorted), d_sorted.shape[1] + 1), dtype=np.int64)
        ends[:, :-1] = d_sorted  # ends[p + 1] = 0 after the last row
        terms, stride = w.terms, 2 * w.rows + 1
        pair = np.arange(len(window))
        area = np.zeros(len(window), dtype=np.int64)  # sum of I_c over the clipped cycles
        clipped_until = np.zeros(len(window), dtype=np.int64)  # c*
        for p in range(signed.shape[1] - 1, -1, -1):  # segment p: rows 0..p, cycles [ends p+1, ends p)
            going = sign * current > limit[pair]
            if not going.all():
                pair, current = pair[going], current[going]
                if not len(pair):
                    break
            k = pair_window[pair]
            area[pair] += current * (ends[k, p] - ends[k, p + 1])
            clipped_until[pair] = ends[k, p]
            current = current - terms[signed[k, p] + column[pair] * stride]
        rate = self.offset[column] - (self.fmax if sign > 0 else 0)
        return (clipped_until * rate + self.gain[column] * area).astype(np.float64)

    def exact_advance(self, w_int: np.ndarray, d: np.ndarray, s: np.ndarray, n_window_cycles: int,
                      window: np.ndarray, column: np.ndarray, terms: np.ndarray | None = None) -> np.ndarray:
        """sum_c dphi_c for the (window, column) pairs given, cycle-exact with saturation
        (terms: `signed_terms(w_int)` if the caller has it, `SelectedConductance.terms`).

        Rows sorted by decreasing duration (once per window with pairs, `rows_by_duration`):
        during cycles [d_(p+1), d_(p)) exactly the rows 0..p conduct, so the current there is
        the prefix sum C_p; after the longest duration no row conducts and the rate is the
        offset. Cost: O(rows) per pair.
        """
        terms = signed_terms(w_int) if terms is None else terms
        if (compiled := kernels.module()) is not None:  # the same sums compiled, a pair at a time
            total = np.empty(len(window), dtype=np.int64)
            compiled.exact_pairs(terms.reshape(w_int.shape[1], -1), d, s, window, column, n_window_cycles,
                                 self.offset, self.gain, self.fmax, total)
            return total
        if len(d) > 1:  # the windows with pairs (np.unique: ~10 us, a third of one window's sums)
            windows, window = np.unique(window, return_inverse=True)
            d, s = d[windows], s[windows]
        signed, d_sorted = rows_by_duration(d, s)
        conducting = d_sorted.shape[1]
        lengths = d_sorted.copy()
        lengths[:, :-1] -= d_sorted[:, 1:]  # d_(p) - d_(p+1), the last row's down to 0
        idle = n_window_cycles - d_sorted.max(axis=1, initial=0)  # cycles after the longest duration
        stride = 2 * w_int.shape[0] + 1
        total = np.empty(len(window), dtype=np.int64)
        step = max(1, _EXACT_CHUNK_ELEMENTS // max(conducting, 1))
        for start in range(0, len(window), step):
            k, j = window[start:start + step], column[start:start + step]
            # (positions, pairs): numpy's cumsum is ~2x faster along the first axis
            index = np.add(signed[k].T, j * stride, order="C")
            currents = np.cumsum(np.take(terms, index), axis=0)
            rate = self._saturated_rate(self.offset[j], self.gain[j], currents)
            total[start:start + step] = np.einsum("pk,kp->k", rate, lengths[k]) + idle[k] * self.offset[j]
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
        phase = self.transfer.initial_phase(self._rng, np.array([op_index], np.uint64))[0]
        self._phase = phase.astype(np.int64)
        self._emitted = np.zeros(self.cols, dtype=np.int64)

    def step(self, currents) -> np.ndarray:
        """One clock cycle with integer column currents (cols,) -> pulses (cols,) uint8."""
        currents = check_array("currents", currents, (self.cols,), "int")
        self._check_started()
        if np.abs(currents).max(initial=0) > self.transfer.max_current_lsb:
            self._currents_beyond_limit(currents)
        self._phase = self._phase + self.transfer.increment(currents)
        emitted = self.transfer.cumulative_pulses(self._phase)
        pulses = emitted - self._emitted
        self._emitted = emitted
        return pulses.astype(np.uint8)

    def step_rows(self, compiled, active: np.ndarray, drive: np.ndarray, w_int: np.ndarray,
                  currents: np.ndarray) -> np.ndarray:
        """`step` of the currents of the rows' drive `active` ({-1, 0, +1} (rows,) int), in one
        compiled loop (`kernels.cycle_step`): drive (the rows' drive before, int64) and currents
        (int64 (cols,) of that drive through w_int) are updated in place. The same pulses."""
        self._check_started()
        t = self.transfer
        pulses = np.empty(self.cols, dtype=np.uint8)
        status = compiled.cycle_step(active, drive, w_int, currents, self._phase, self._emitted, t.offset,
                                     t.gain, t.fmax, t.max_current_lsb, *t._pulse_constants, pulses)
        if status == 1:
            check_within("active", active, -1, 1)  # raises
        if status == 2:
            self._currents_beyond_limit(currents)
        return pulses

    def _check_started(self) -> None:
        if self._phase is None:
            raise ConfigError("start_window must be called before step, not step alone")

    def _currents_beyond_limit(self, currents: np.ndarray) -> NoReturn:
        limit = self.transfer.max_current_lsb
        raise ConfigError(f"currents must be within [-{limit}, {limit}] LSB, "
                          f"not {int(np.abs(currents).max())!r}")

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
        check_exact(w, int(d.max(initial=0)))  # on the whole matrix: the errors do not depend
        check_exact(w, n)                      # on which rows the batch drives
        w, d, s = _driven_rows(w, d, s)
        if len(d) >= int_gemm.MIN_ROWS:  # from the second on: torch's int8 GEMM for the matmuls,
            int_gemm.for_large_batch()  # the pairs' scans and exact sums compiled
            kernels.for_large_batch()
        else:
            kernels.for_small_batch(len(d))
        if _every_pair_exact(len(d), kernels.module()):  # no matmul, no BLAS: no bounds either
            return window_counts(self.transfer, self._rng, w, d, s, n, ops)
        w.bounds(*self.transfer.current_limits)  # built here, not by two threads at once
        with single_threaded_blas():
            if len(d) < window_worker.MIN_WINDOWS:
                return window_counts(self.transfer, self._rng, w, d, s, n, ops)
            return self._halves(w, d, s, n, ops)

    def _halves(self, w: SelectedConductance, d: np.ndarray, s: np.ndarray, n: int, ops: np.ndarray
                ) -> np.ndarray:
        """The counts of a large batch in two halves at once (every window's count depends on
        that window alone). With the per-pair loops compiled (`kernels`), the second half in a
        second thread: nearly all of a window's time is then in calls that release the GIL
        (torch's GEMM, the compiled loops), few numpy calls hand it over, and the threads beat
        the worker's pipes (measured at 256 x 256, 1,000 uniform windows through Chip.mvm:
        10.3 vs 11.9 ms, and 16.4 vs 18.5 ms with the other core busy). Without them, the
        second half in the worker process (`window_worker`), or, until it is ready or without
        it, in a second thread for _PARALLEL_MIN_WINDOWS windows or more (numpy and BLAS
        release the GIL in their loops; both threads' BLAS calls run single-threaded: the limit
        is process-wide), else all here. Two threads split the batch by `_thread_share`, which
        follows their speeds."""
        t, rng = self.transfer, self._rng
        counts = np.empty((len(d), w.cols), dtype=np.int64)
        compiled = kernels.module() is not None
        worker = None if compiled else window_worker.for_large_batch()
        half = int(len(d) * _CALLER_SHARE)
        if worker is not None and worker.start(t, rng, w, d[half:], s[half:], n, ops[half:]):
            start = time.perf_counter()
            try:
                window_counts(t, rng, w, d[:half], s[:half], n, ops[:half], out=counts[:half])
            finally:  # the answer is read even if this half raised: the pipe stays in step
                answered = worker.finish(time.perf_counter() - start, out=counts[half:])
            if not answered:  # the worker failed (and is given up): this half here
                window_counts(t, rng, w, d[half:], s[half:], n, ops[half:], out=counts[half:])
            return counts
        if len(d) < _PARALLEL_MIN_WINDOWS and not compiled:
            return window_counts(t, rng, w, d, s, n, ops, out=counts)
        half = _thread_share.split(len(d))
        start = time.perf_counter()
        second = _thread().submit(_timed_window_counts, t, rng, w, d[half:], s[half:], n, ops[half:],
                                  counts[half:])
        try:
            window_counts(t, rng, w, d[:half], s[:half], n, ops[:half], True, out=counts[:half])
        except BaseException:
            wait([second])  # the other half ends before the error leaves: no thread left writing
            raise
        caller_s = time.perf_counter() - start
        _thread_share.update(half, caller_s, len(d) - half, second.result())
        return counts


def _timed_window_counts(t: CcoTransfer, rng: KeyedRng, w: SelectedConductance, d: np.ndarray, s: np.ndarray,
                         n: int, ops: np.ndarray, out: np.ndarray) -> float:
    """`window_counts` in one of two threads, into `out`; its wall time (`_ThreadShare`)."""
    start = time.perf_counter()
    window_counts(t, rng, w, d, s, n, ops, True, out=out)
    return time.perf_counter() - start


def window_counts(t: CcoTransfer, rng: KeyedRng, w: SelectedConductance, d: np.ndarray, s: np.ndarray,
                  n: int, ops: np.ndarray, coarse: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Counts (B, cols) of the windows (d, s) of operations ops (checked, on the rows they
    drive: `CCO._counts`), into `out` (int64) if given; `coarse`: in one of two threads (fewer,
    larger numpy calls: `_TAIL_CHUNK_WINDOWS`). Also what the worker process runs
    (`window_worker`). With the compiled kernels, up to _EXACT_ALL_MAX_WINDOWS windows have
    every pair summed exactly (`kernels.exact_windows`); more, with noisy CCOs and the charge
    on the int8 path, have the advances computed in the counts loop from the charge's int8
    products (`CcoTransfer.counts_of_charge`); else as a float64 array here. The same counts
    either way."""
    compiled = kernels.module()
    if _every_pair_exact(len(d), compiled):
        advance = np.empty((len(d), w.cols), dtype=np.int64)
        compiled.exact_windows(w.w_int, d, s, n, t.offset, t.gain, t.fmax, advance)
        counts = t.counts_after(rng, ops, advance.astype(np.float64))
        if out is None:
            return counts
        out[...] = counts
        return out
    charge = None
    if compiled is not None and t.output_noise_pulses > 0 and len(d) >= _BRACKET_MIN_WINDOWS:
        charge = charge_digits(w, d, s)  # the int8 products; None where the charge takes numpy's path
    # on the charge's path, the compiled scan sums the listed pairs exactly on the way
    # (`CurrentBounds.may_leave`)
    found = currents_may_leave(w, d, s, n, *t.current_limits, coarse=coarse,
                               rate=None if charge is None else (t.offset, t.gain, t.fmax))
    window, column = found[:2]
    if charge is not None:
        pairs = np.argsort(window * w.cols + column)  # ascending flat indices (they almost are)
        window, column = window[pairs], column[pairs]
        if (totals := found[2]) is not None:
            advance = totals[pairs].astype(np.float64)  # exact integers below 2**53
        else:
            advance = _pair_advances(t, w, d, s, n, window, column, *charge)
        return t.counts_of_charge(rng, ops, *charge, n, window * w.cols + column, advance, compiled, out)
    # float64, exact where nothing clips: 0 <= n offset + gain Q <= n fmax < 2**53 (module doc)
    advance = integrated_charge(w, d, s, dtype=np.float64)
    advance *= t.gain
    advance += n * t.offset
    if len(window):
        sign = terms_sign(w, d, s)
        if sign:  # currents monotone in the window: only the clipped start is summed
            advance[window, column] -= t.monotone_clipping(w, d, s, window, column, sign)
        else:
            advance[window, column] = t.exact_advance(w.w_int, d, s, n, window, column, w.terms)
    counts = np.empty(advance.shape, dtype=np.int64) if out is None else out
    step = _TAIL_CHUNK_WINDOWS[coarse]
    for b in range(0, len(advance), step):
        chunk = slice(b, b + step)
        counts[chunk] = t.counts_after(rng, ops[chunk], advance[chunk])
    return counts


def _every_pair_exact(windows: int, compiled) -> bool:
    """Whether `window_counts` sums every pair of a call of this many windows exactly
    (`kernels.exact_windows`; `compiled`: the loaded kernels, or None)."""
    return compiled is not None and windows <= _EXACT_ALL_MAX_WINDOWS


def _pair_advances(t: CcoTransfer, w: SelectedConductance, d: np.ndarray, s: np.ndarray, n: int,
                   window: np.ndarray, column: np.ndarray, charge: np.ndarray, negated: bool) -> np.ndarray:
    """The advances (float64) of the pairs that may clip, as `window_counts` computes them
    from a float64 charge: n offset + gain Q less the clipped start (monotone currents), or the
    exact sum."""
    if not len(window):
        return np.zeros(0)
    q = charge[-1, window, column].astype(np.int64)
    for digit in charge[-2::-1]:
        q *= 256
        q += digit[window, column]
    base = (-q if negated else q).astype(np.float64)
    base *= t.gain[column]
    base += n * t.offset[column]
    sign = terms_sign(w, d, s)
    if sign:  # currents monotone in the window: only the clipped start is summed
        return base - t.monotone_clipping(w, d, s, window, column, sign)
    return t.exact_advance(w.w_int, d, s, n, window, column, w.terms).astype(np.float64)


@cache
def _thread() -> ThreadPoolExecutor:
    """The second thread of large batches (`CCO._halves`), started on first use (anew in a
    forked child, which has none of its parent's threads)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcmhil-cco")


os.register_at_fork(after_in_child=_thread.cache_clear)


def _driven_rows(w: SelectedConductance, d: np.ndarray, s: np.ndarray
                 ) -> tuple[SelectedConductance, np.ndarray, np.ndarray]:
    """The select and drive without the rows no window of the batch drives (they add nothing to
    any sum): every matmul shrinks with them, e.g. for a layer on part of the tile's rows.

    Only for batches of _RESTRICT_MIN_WINDOWS windows or more: a restricted select and its
    current bounds are built anew (~0.5 ms at 256 x 256) unless the rows are the last ones, and
    the rows a few windows leave idle (inputs 0, the other sign's rows of a 4-phase window)
    change from call to call, while the matmuls of a few windows cost little more on all rows."""
    if len(d) < _RESTRICT_MIN_WINDOWS:
        return w, d, s
    rows = np.flatnonzero(d.any(axis=0))
    if len(rows) == w.rows:
        return w, d, s
    return w.restricted(rows), d[:, rows], s[:, rows]
