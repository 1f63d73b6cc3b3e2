"""The PCM devices of one crossbar: programming, time (drift, 1/f read noise) and faults.

State shapes: per device (rows, cols, 2, devices_per_polarity), per polarity "unit"
(rows, cols, 2); polarity index 0 = G+, 1 = G- (mapping.py).

Statistics are drawn per unit and shared by its devices (programming noise, drift exponent nu,
1/f realisation): the preset fits describe one polarity as a whole, and for HERMES' 2-device
cells aihwkit models the pair as hosting the same conductance (presets.py). Per-device state
remains for what really is per device: its conductance share, the pulse response, and faults.

Read state. At any moment the array has one realised read conductance per device,
`g_read_us` = drift at the current time t_now_s times (1 + accumulated 1/f noise), clipped at 0,
with faults applied. The 1/f realisation is drawn once per time event, like aihwkit's
`drift_analog_weights`, not per read: every read (an MVM, a verify read) at the same time sees the
same state. A time event is `set_time`/`advance_time` (all rows) or the programming of a row (that
row). The draw of row r is keyed by (t_now_s, number of programming events of row r, r), so
setting the same time twice gives the same realisation, and replaying the same operations gives
the same numbers however they are batched.

Stuck devices (stuck-at-SET reads the device's g_max, stuck-at-RESET reads 0) and dead columns
(read 0) are drawn once per array; they ignore programming and do not drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_array, check_int, check_real, check_within
from .keyed_rng import KeyedRng, Stream
from .mapping import combine_devices, split_devices
from .presets import PcmPreset

#: Largest pulse code magnitude: a signed int8 code, |code| / 127 is the pulse amplitude
#: (docs/numerics.md section 8, PROGRAM_DATA in PULSE mode; -128 acts as -127).
PULSE_CODE_MAX = 127


@dataclass(frozen=True)
class FaultRates:
    """Fractions of faulty devices and columns (0 in every preset: faults are per experiment)."""

    stuck_set: float = 0.0
    stuck_reset: float = 0.0
    dead_column: float = 0.0

    def __post_init__(self):
        for name in ("stuck_set", "stuck_reset", "dead_column"):
            check_real(name, getattr(self, name), 0.0, 1.0)
        check_real("stuck_set + stuck_reset", self.stuck_set + self.stuck_reset, 0.0, 1.0)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of program-and-verify for one row, per device (cols, 2, devices).

    error_us: programmed conductance (faults applied; no drift or read noise) minus the
    device's target. iterations: pulses the device received. converged: a verify read came
    within the tolerance (the device then received no further pulse).
    """

    error_us: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray


class DeviceArray:
    """The PCM devices of a rows x cols crossbar and the time they live in."""

    def __init__(self, preset: PcmPreset, rows: int, cols: int, *, seed: int = 0, tile: int = 0,
                 faults: FaultRates = FaultRates()):
        self.preset = preset
        self.rows = check_int("rows", rows, 1, 2**16)
        self.cols = check_int("cols", cols, 1, 2**20)
        self.devices = preset.devices_per_polarity
        self._rng = KeyedRng(seed, tile)
        units = (self.rows, self.cols, 2)
        self._g_prog = np.zeros(units + (self.devices,))
        self._t_prog = np.zeros(units)
        self._nu = np.zeros(units)
        self._read_q = np.zeros(units)
        self._row_events = np.zeros(self.rows, dtype=np.int64)
        self._g_drift = np.zeros_like(self._g_prog)
        self._g_read = np.zeros_like(self._g_prog)
        self._draw_faults(faults)
        self.t_now_s = 0.0
        #: Incremented whenever the read state changes; lets the crossbar cache derived matrices.
        self.version = 0
        self._realise(np.arange(self.rows))

    # ---- read-only views of the state -----------------------------------------------------

    @property
    def g_prog_us(self) -> np.ndarray:
        """Programmed conductance per device (what a read at t = 0 after programming would
        see without 1/f noise), uS."""
        return _readonly(self._g_prog)

    @property
    def g_drift_us(self) -> np.ndarray:
        """Drifted conductance per device at t_now_s, without 1/f noise, faults applied, uS."""
        return _readonly(self._g_drift)

    @property
    def g_read_us(self) -> np.ndarray:
        """The read state per device at t_now_s (drift, 1/f realisation, faults), uS."""
        return _readonly(self._g_read)

    @property
    def nu(self) -> np.ndarray:
        """Drift exponent per polarity unit (rows, cols, 2)."""
        return _readonly(self._nu)

    @property
    def t_prog_s(self) -> np.ndarray:
        """Programming time per polarity unit (rows, cols, 2), s."""
        return _readonly(self._t_prog)

    # ---- time -----------------------------------------------------------------------------

    def set_time(self, t_s: float) -> None:
        """Move to time t_s (s) and realise drift and 1/f noise there (a time event)."""
        last = float(self._t_prog.max())
        self.t_now_s = check_real("t_s", t_s, last, None, "s (the last programming time or later)")
        self._realise(np.arange(self.rows))

    def advance_time(self, dt_s: float) -> None:
        """Age the array by dt_s >= 0 seconds (a time event)."""
        self.set_time(self.t_now_s + check_real("dt_s", dt_s, 0.0, None, "s"))

    # ---- one-shot statistical programming -------------------------------------------------

    def program_row(self, row: int, g_target_us, op_index: int) -> None:
        """Program one row (the chip's granularity) to per-polarity targets (cols, 2) in uS.

        g_prog = clip(target + sigma_prog(x) * z, 0, g_max_us) per unit (REFERENCE.md,
        programming noise), z keyed by (op_index, row); nu drawn at the target x.
        """
        row, target, op_index = self._check_row_op(row, g_target_us, op_index)
        x = target / self.preset.g_max_us
        z = self._rng.generator(Stream.PROGRAMMING, op_index, row).standard_normal(x.shape)
        g_prog = np.clip(target + self.preset.prog_sigma_us(x) * z, 0.0, self.preset.g_max_us)
        self._g_prog[row] = split_devices(g_prog, self.devices)
        self._commit(row, np.ones(x.shape, dtype=bool), x, op_index)

    def program_array(self, g_target_us, op_index: int) -> None:
        """Every row with `program_row`, in row order, all under the same op_index."""
        target = check_array("g_target_us", g_target_us, (self.rows, self.cols, 2), "real")
        for row in range(self.rows):
            self.program_row(row, target[row], op_index)

    # ---- device-level pulses and program-and-verify ---------------------------------------

    def apply_pulses(self, row: int, pulse_codes, op_index: int) -> None:
        """One partial pulse per polarity unit of `row`: code > 0 SET, < 0 RESET, 0 none.

        pulse_codes: int (cols, 2) within [-128, 127], amplitude |code| / 127; every device of
        the unit receives the pulse and responds on its own (presets.PulseResponse). The pulsed
        units get nu drawn at the conductance they reached.
        """
        row = check_int("row", row, 0, self.rows - 1)
        codes = check_within("pulse_codes", check_array("pulse_codes", pulse_codes, (self.cols, 2), "int"),
                             -PULSE_CODE_MAX - 1, PULSE_CODE_MAX)
        op_index = check_int("op_index", op_index, 0, 2**64 - 1)
        self._pulse(row, np.repeat(codes[..., None], self.devices, axis=-1), op_index, 0)
        x = np.minimum(combine_devices(self._g_prog[row]) / self.preset.g_max_us, 1.0)
        self._commit(row, codes != 0, x, op_index)

    def program_row_verify(self, row: int, g_target_us, op_index: int, *, tolerance_us: float,
                           max_iterations: int = 20) -> VerifyResult:
        """Iterative program-and-verify of one row (HERMES: REFERENCE.md, weight programming).

        Each iteration reads the row's read state (the verify read sees drift and the 1/f
        realisation like any read), stops devices whose read is within tolerance_us of their
        target, and gives every other device one partial pulse whose amplitude aims at the
        target from the read, the only state the controller knows. Every pulse round is a
        programming event of the row (a new 1/f realisation for the next verify read). The
        verify read is the devices' realised read conductance; the crossbar's integer
        quantisation (g_max / 2**14 by default) is below its noise and not applied here.
        """
        row, target, op_index = self._check_row_op(row, g_target_us, op_index)
        tolerance_us = check_real("tolerance_us", tolerance_us, 0.0, None, "uS")
        max_iterations = check_int("max_iterations", max_iterations, 0, 10_000)
        target_dev = split_devices(target, self.devices)
        x = target / self.preset.g_max_us
        converged = np.zeros(target_dev.shape, dtype=bool)
        iterations = np.zeros(target_dev.shape, dtype=np.int64)
        for iteration in range(max_iterations + 1):
            read = self._g_read[row]
            converged |= np.abs(read - target_dev) <= tolerance_us
            if converged.all() or iteration == max_iterations:
                break
            codes = np.where(converged, 0, self._aiming_codes(read, target_dev))
            self._pulse(row, codes, op_index, iteration)
            iterations += codes != 0
            self._commit(row, (codes != 0).any(axis=-1), x, op_index)
        programmed = self._apply_faults(self._g_prog[row][None], [row])[0]
        return VerifyResult(programmed - target_dev, iterations, converged)

    def _aiming_codes(self, read: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Pulse codes whose mean step, at the read conductance, would land on the target."""
        pulse, g_dev = self.preset.pulse, self.preset.g_max_device_us
        up = target > read
        read = np.clip(read, 0.0, g_dev)
        full_step = np.where(up, pulse.set_step_frac * (g_dev - read), pulse.reset_step_frac * read)
        with np.errstate(divide="ignore", invalid="ignore"):
            amplitude = np.where(full_step > 0, np.abs(target - read) / full_step, 1.0)
        magnitude = np.clip(np.rint(amplitude * PULSE_CODE_MAX), 1, PULSE_CODE_MAX).astype(np.int64)
        return np.where(up, magnitude, -magnitude)

    def _pulse(self, row: int, codes: np.ndarray, op_index: int, pulse_index: int) -> None:
        """Apply per-device pulse codes (cols, 2, devices) to the row (PulseResponse model)."""
        pulse, g_dev = self.preset.pulse, self.preset.g_max_device_us
        z = self._rng.generator(Stream.PULSE, op_index, row, pulse_index).standard_normal(codes.shape)
        amplitude = np.minimum(np.abs(codes), PULSE_CODE_MAX) / PULSE_CODE_MAX
        spread = np.maximum(1.0 + pulse.step_sigma_rel * z, 0.0)
        g = self._g_prog[row]
        step = np.where(codes > 0, pulse.set_step_frac * (g_dev - g), -pulse.reset_step_frac * g)
        self._g_prog[row] = np.clip(g + np.where(codes != 0, amplitude * step * spread, 0.0), 0.0, g_dev)

    # ---- internals --------------------------------------------------------------------------

    def _check_row_op(self, row, g_target_us, op_index) -> tuple[int, np.ndarray, int]:
        row = check_int("row", row, 0, self.rows - 1)
        target = check_array("g_target_us", g_target_us, (self.cols, 2), "real")
        check_within("g_target_us", target, 0.0, self.preset.g_max_us, "uS")
        return row, target, check_int("op_index", op_index, 0, 2**64 - 1)

    def _commit(self, row: int, units: np.ndarray, x: np.ndarray, op_index: int) -> None:
        """Record a programming event of `units` of `row` at t_now_s and realise the row.

        nu = drift_scale * |N(mu(x), sigma(x))| (REFERENCE.md drift; aihwkit draws it at the
        target conductance) keyed by (op_index, row). The 1/f coefficient Q_s(x) is taken at
        the same x; aihwkit evaluates it at the noisy programmed conductance instead, which
        would make the realised 1/f spread at a target level a mixture over the programming
        noise rather than the published fit.
        """
        mu, sigma = self.preset.nu_mean_std(x)
        z = self._rng.generator(Stream.DRIFT_NU, op_index, row).standard_normal(x.shape)
        nu = self.preset.drift_scale * np.abs(mu + sigma * z)
        self._nu[row] = np.where(units, nu, self._nu[row])
        self._read_q[row] = np.where(units, self.preset.read_noise_q(x), self._read_q[row])
        self._t_prog[row] = np.where(units, self.t_now_s, self._t_prog[row])
        self._row_events[row] += 1
        self._realise(np.array([row]))

    def _realise(self, rows: np.ndarray) -> None:
        """Drift and the keyed 1/f realisation of `rows` at t_now_s (a time event)."""
        tau = self.t_now_s - self._t_prog[rows]
        drift = self.preset.drift_factor(tau, self._nu[rows])
        sigma = self._read_q[rows] * self.preset.read_noise_time_factor(tau)
        t_key = int(np.float64(self.t_now_s).view(np.uint64))
        z = np.stack([self._rng.generator(Stream.READ_NOISE, t_key, int(self._row_events[r]), int(r))
                      .standard_normal((self.cols, 2)) for r in rows])
        g_drift = self._g_prog[rows] * drift[..., None]
        g_read = np.maximum(g_drift * (1.0 + sigma * z)[..., None], 0.0)
        self._g_drift[rows] = self._apply_faults(g_drift, rows)
        self._g_read[rows] = self._apply_faults(g_read, rows)
        self.version += 1

    def _draw_faults(self, faults: FaultRates) -> None:
        u = self._rng.generator(Stream.FAULTS, 0).random(self._g_prog.shape)
        self._stuck_set = u < faults.stuck_set
        self._stuck_reset = (u >= faults.stuck_set) & (u < faults.stuck_set + faults.stuck_reset)
        self._dead_column = self._rng.generator(Stream.FAULTS, 1).random(self.cols) < faults.dead_column

    def _apply_faults(self, g: np.ndarray, rows) -> np.ndarray:
        g = np.where(self._stuck_set[rows], self.preset.g_max_device_us, g)
        g = np.where(self._stuck_reset[rows], 0.0, g)
        return np.where(self._dead_column[None, :, None, None], 0.0, g)

    @property
    def faults(self) -> dict[str, np.ndarray]:
        """Fault masks: stuck_set, stuck_reset (rows, cols, 2, devices), dead_column (cols,)."""
        return {"stuck_set": _readonly(self._stuck_set), "stuck_reset": _readonly(self._stuck_reset),
                "dead_column": _readonly(self._dead_column)}


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view

