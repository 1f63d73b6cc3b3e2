"""Named device presets: published PCM statistics, the pulse response and the CCO front end.

A preset is a frozen dataclass instance; every fitted constant lives here with its paper, never
inline in the physics (device.py, cco.py). x = g_target / g_max_us throughout, where g_max_us is
the maximum conductance of one polarity of a weight (all of its devices together).

Fits (REFERENCE.md, "PCM statistical model" and "HERMES-fitted model"):
- `pcm`: Nandakumar et al., ICECS 2019, as used by Joshi et al., Nat. Commun. 2020 and
  implemented in IBM aihwkit `PCMLikeNoiseModel` (g_max 25 uS, t0 20 s, t_read 250 ns).
- `hermes-2dev`, `hermes-1dev`: aihwkit `HermesNoiseModel`, fitted on the HERMES chip
  (Le Gallo et al., Nat. Electron. 2023; Vasilopoulos et al., TED 2023), 2 or 1 devices per
  polarity. For 2 devices aihwkit models the pair "as if the two devices host the same
  conductance": one draw per polarity, shared by its devices. We do the same (device.py).
- `projected`: projected PCM (Koelmans et al., Nat. Commun. 2015; Giannopoulos et al., IEDM
  2018). No single published fit exists; ASSUMPTION: the `pcm` fits with drift exponent and 1/f
  read noise scaled by 0.1 (REFERENCE.md: "reduced by about an order of magnitude").
- `ideal`: every non-ideality off (no programming noise, drift, read noise, pulse-to-pulse
  spread, CCO mismatch, CCO nonlinearity or CCO output noise). The CCO keeps its saturation,
  which is a range, not a non-ideality.

Polynomial coefficient order: lowest power first, c0 + c1 x + c2 x^2 + ... This is aihwkit's
`prog_coeff` order (its loop starts from `prog_coeff[0]` and multiplies by g_target/g_max for
each further coefficient, read in IBM/aihwkit src/aihwkit/inference/noise/hermes.py and
pcm.py), and it matches REFERENCE.md's pcm sigma_prog = 0.26348 + 1.9650 x - 1.1731 x^2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from pcmhil.errors import ConfigError

from .checks import check_array, check_int, check_real, check_within

#: Smallest x a log or power fit is evaluated at (aihwkit `_ZERO_CLIP`): x = 0 (a RESET target)
#: takes the fit's clip value instead of -inf.
X_FLOOR = 1e-7


@dataclass(frozen=True)
class PolyFit:
    """max(sum_i coeffs[i] * x**i, 0); coefficients lowest power first (see module doc)."""

    coeffs: tuple[float, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(np.polynomial.polynomial.polyval(x, self.coeffs), 0.0)


@dataclass(frozen=True)
class LogFit:
    """clip(slope * ln(x) + intercept, lo, hi): the low-conductance branches of the fits."""

    slope: float
    intercept: float
    lo: float
    hi: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.clip(self.slope * np.log(np.maximum(x, X_FLOOR)) + self.intercept, self.lo, self.hi)


@dataclass(frozen=True)
class PowerFit:
    """min(coeff / x**exponent, cap): the pcm 1/f coefficient Q_s = min(0.0088 / x^0.65, 0.2)."""

    coeff: float
    exponent: float
    cap: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.minimum(self.coeff / np.maximum(x, X_FLOOR) ** self.exponent, self.cap)


@dataclass(frozen=True)
class BranchFit:
    """`below` for x < split, `above` otherwise: the HERMES fits are two-branch functions."""

    split: float
    below: LogFit
    above: PolyFit

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.where(x < self.split, self.below(x), self.above(x))


Fit = PolyFit | LogFit | PowerFit | BranchFit


@dataclass(frozen=True)
class PulseResponse:
    """Device response to one partial programming pulse of relative amplitude a in (0, 1].

    ASSUMPTION, shaped after the measured gradual SET of PCM (Nandakumar et al., J. Appl. Phys.
    2018: mean step shrinks as the device fills, large pulse-to-pulse spread) and the iterative
    program-and-verify of multilevel PCM (Papandreou et al., ISCAS 2011); no numbers are taken
    from those papers. With g the device conductance and g_dev = g_max_us / devices:
    - partial SET:   g += a * set_step_frac * (g_dev - g) * max(1 + step_sigma_rel * z, 0)
    - partial RESET: g -= a * reset_step_frac * g * max(1 + step_sigma_rel * z, 0)
    and g stays within [0, g_dev]. The step is state dependent (proportional to the remaining
    headroom) and stochastic (z ~ N(0, 1) per pulse and device).
    """

    set_step_frac: float = 0.5
    reset_step_frac: float = 0.9
    step_sigma_rel: float = 0.3

    def __post_init__(self):
        check_real("set_step_frac", self.set_step_frac, 0.0, 1.0)
        check_real("reset_step_frac", self.reset_step_frac, 0.0, 1.0)
        check_real("step_sigma_rel", self.step_sigma_rel, 0.0)


@dataclass(frozen=True)
class CcoPreset:
    """The column current-controlled oscillators (the analog half of the ADC).

    Rate limits: HERMES' CCO runs "above 3 GHz" at a 1 GHz clock (Khaddam-Aljameh et al., VLSI
    2021 / JSSC 2022; REFERENCE.md), hence at most 3 pulses per clock cycle. The zero-current
    rate sits mid-range (1.5 pulses per cycle) so that both current signs are measured.
    ASSUMPTIONS (no published per-column numbers; HERMES calibrates its ADCs digitally, which
    the LDPU's affine correction covers): 2 % gain and 0.02 pulse/cycle offset mismatch
    between columns, 1 % compression at the reference phase, 0.1 pulse output noise per window.
    """

    max_pulses_per_cycle: int = 3
    offset_pulses_per_cycle: float = 1.5
    gain_mismatch_rel: float = 0.02
    offset_mismatch_pulses_per_cycle: float = 0.02
    #: Nl(phi) = phi - beta * phi^2 / (2 * phi_ref), flat beyond phi_ref / beta (cco.py).
    nonlinearity_beta: float = 0.02
    #: phi_ref: a full-rate 128-cycle window (docs/numerics.md PWM_MAX_CYCLES) = 384 pulses.
    nonlinearity_ref_pulses: float = 384.0
    #: sigma_out; the start phase is capped below one pulse (cco.py), so keep it <~ 0.15 pulse
    #: for the noise to stay symmetric (the cap is hit with probability P(z > 0.5 / sigma_out)).
    output_noise_pulses: float = 0.1

    def __post_init__(self):
        check_int("max_pulses_per_cycle", self.max_pulses_per_cycle, 1, 255)
        check_real("offset_pulses_per_cycle", self.offset_pulses_per_cycle, 0.0,
                   float(self.max_pulses_per_cycle))
        check_real("gain_mismatch_rel", self.gain_mismatch_rel, 0.0, 0.5)
        check_real("offset_mismatch_pulses_per_cycle", self.offset_mismatch_pulses_per_cycle, 0.0)
        beta = check_real("nonlinearity_beta", self.nonlinearity_beta, 0.0, 1.0)
        ref = check_real("nonlinearity_ref_pulses", self.nonlinearity_ref_pulses, 1.0, None, "pulses")
        if beta > 0:
            # the knee of Nl must stay below 2**29 pulses (2**61 phase units): then the float
            # rounding of Nl stays far below its slope margin (cco.py)
            check_real("nonlinearity_ref_pulses / nonlinearity_beta", ref / beta, None, 2.0**29, "pulses")
        check_real("output_noise_pulses", self.output_noise_pulses, 0.0, 1e3)


@dataclass(frozen=True)
class PcmPreset:
    """Statistics of one polarity of a weight (all of its devices together), per REFERENCE.md.

    - programming: g_prog = clip(g_target + prog_noise_scale * prog_sigma_us(x) * z, 0, g_max_us)
    - drift: g(t) = g_prog * ((t + t0_s) / t0_s) ** -nu, nu = drift_scale * |N(nu_mean(x), nu_std(x))|,
      t the time since programming (aihwkit's convention)
    - accumulated 1/f read noise: relative sigma
      read_noise_scale * read_noise_q(x) * sqrt(ln((t + t0_s + t_read_s) / (2 t_read_s)))
    """

    name: str
    citation: str
    g_max_us: float
    devices_per_polarity: int
    t0_s: float
    t_read_s: float
    prog_sigma_fit_us: Fit
    nu_mean_fit: Fit
    nu_std_fit: Fit
    read_noise_q_fit: Fit
    prog_noise_scale: float = 1.0
    drift_scale: float = 1.0
    read_noise_scale: float = 1.0
    pulse: PulseResponse = field(default_factory=PulseResponse)
    cco: CcoPreset = field(default_factory=CcoPreset)

    def __post_init__(self):
        check_real("g_max_us", self.g_max_us, 1e-3, 1e6, "uS")
        check_int("devices_per_polarity", self.devices_per_polarity, 1, 2)
        check_real("t0_s", self.t0_s, 1e-12, None, "s")
        check_real("t_read_s", self.t_read_s, 1e-15, None, "s")
        for name in ("prog_noise_scale", "drift_scale", "read_noise_scale"):
            check_real(name, getattr(self, name), 0.0)

    @property
    def g_max_device_us(self) -> float:
        """Maximum conductance of one device: the polarity's range is shared equally."""
        return self.g_max_us / self.devices_per_polarity

    def prog_sigma_us(self, x) -> np.ndarray:
        """Standard deviation of the programmed conductance (before clipping), uS."""
        return self.prog_noise_scale * self.prog_sigma_fit_us(_check_x(x))

    def nu_mean_std(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the normal whose absolute value, times drift_scale, is nu."""
        x = _check_x(x)
        return self.nu_mean_fit(x), self.nu_std_fit(x)

    def read_noise_q(self, x) -> np.ndarray:
        """Q_s of the accumulated 1/f read noise, read_noise_scale included."""
        return self.read_noise_scale * self.read_noise_q_fit(_check_x(x))

    def read_noise_time_factor(self, t_since_programming_s: np.ndarray) -> np.ndarray:
        """sqrt(ln((t + t0 + t_read) / (2 t_read))): the growth of the 1/f noise with time."""
        return np.sqrt(np.log((t_since_programming_s + self.t0_s + self.t_read_s) / (2 * self.t_read_s)))

    def drift_factor(self, t_since_programming_s: np.ndarray, nu: np.ndarray) -> np.ndarray:
        """((t + t0) / t0) ** -nu: g(t) / g_prog."""
        return ((t_since_programming_s + self.t0_s) / self.t0_s) ** -nu


def _check_x(x) -> np.ndarray:
    return check_within("x", check_array("x", x, (None,) * np.ndim(x), "real"), 0.0, 1.0)


# ---- the presets -----------------------------------------------------------------------------

PCM = PcmPreset(
    name="pcm",
    citation="Nandakumar et al., ICECS 2019; Joshi et al., Nat. Commun. 2020; "
             "aihwkit PCMLikeNoiseModel",
    g_max_us=25.0, devices_per_polarity=1, t0_s=20.0, t_read_s=250e-9,
    prog_sigma_fit_us=PolyFit((0.26348, 1.9650, -1.1731)),
    nu_mean_fit=LogFit(-0.0155, 0.0244, lo=0.049, hi=0.1),
    nu_std_fit=LogFit(-0.0125, -0.0059, lo=0.008, hi=0.045),
    read_noise_q_fit=PowerFit(0.0088, 0.65, cap=0.2),
)

#: The drift mean is the same for 1 and 2 devices (aihwkit HermesNoiseModel).
_HERMES_NU_MEAN = BranchFit(0.0945, LogFit(-0.0387, -0.0182, lo=0.072, hi=0.13),
                            PolyFit((0.0736, -0.0126, -0.0436)))

HERMES_2DEV = PcmPreset(
    name="hermes-2dev",
    citation="Le Gallo et al., Nat. Electron. 2023; Vasilopoulos et al., TED 2023; "
             "aihwkit HermesNoiseModel(num_devices=2)",
    g_max_us=20.7, devices_per_polarity=2, t0_s=300.0, t_read_s=512e-9,
    prog_sigma_fit_us=PolyFit((0.16603222, 4.71806468, -8.48101252, 4.68961419)),
    nu_mean_fit=_HERMES_NU_MEAN,
    nu_std_fit=BranchFit(0.3055, LogFit(-0.0117, -0.0057, lo=0.0091, hi=0.04),
                         PolyFit((0.0073, 0.0093, -0.0118))),
    read_noise_q_fit=BranchFit(0.16, LogFit(-0.0117, -0.0069, lo=0.015, hi=0.04),
                               PolyFit((0.0123, 0.0211, -0.0280, 0.0069))),
)

HERMES_1DEV = PcmPreset(
    name="hermes-1dev",
    citation="Le Gallo et al., Nat. Electron. 2023; aihwkit HermesNoiseModel(num_devices=1)",
    g_max_us=10.35, devices_per_polarity=1, t0_s=200.0, t_read_s=512e-9,
    prog_sigma_fit_us=PolyFit((0.15781817, 2.32443916, -2.16310839, 0.68841818)),
    nu_mean_fit=_HERMES_NU_MEAN,
    nu_std_fit=BranchFit(0.3039, LogFit(-0.0120, -0.0023, lo=0.0124, hi=0.04),
                         PolyFit((0.0104, 0.0116, -0.0165))),
    read_noise_q_fit=BranchFit(0.1591, LogFit(-0.0078, 0.0038, lo=0.0179, hi=0.04),
                               PolyFit((0.0088, 0.0768, -0.1352, 0.0664))),
)

PROJECTED = dataclasses.replace(
    PCM, name="projected",
    citation="Koelmans et al., Nat. Commun. 2015; Giannopoulos et al., IEDM 2018 "
             "(ASSUMPTION: pcm fits with drift and 1/f read noise scaled by 0.1)",
    drift_scale=0.1, read_noise_scale=0.1,
)

IDEAL = dataclasses.replace(
    PCM, name="ideal", citation="no non-idealities (reference for exactness tests)",
    prog_noise_scale=0.0, drift_scale=0.0, read_noise_scale=0.0,
    pulse=PulseResponse(step_sigma_rel=0.0),
    cco=CcoPreset(gain_mismatch_rel=0.0, offset_mismatch_pulses_per_cycle=0.0,
                  nonlinearity_beta=0.0, output_noise_pulses=0.0),
)

PRESETS: dict[str, PcmPreset] = {p.name: p for p in (PCM, HERMES_2DEV, HERMES_1DEV, PROJECTED, IDEAL)}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def get_preset(name) -> PcmPreset:
    """The preset called `name`; ConfigError listing the valid names otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(map(repr, PRESET_NAMES))}, not {name!r}")
    return PRESETS[name]


def resolve_preset(preset) -> PcmPreset:
    """A preset given by name or as a PcmPreset instance (e.g. a dataclasses.replace variant)."""
    return preset if isinstance(preset, PcmPreset) else get_preset(preset)

