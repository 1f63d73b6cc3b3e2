"""Device characterisation from samples: what `pcmhil device characterize` reports.

Programs `devices` polarity units of a preset at each target x = g / g_max of GRID_X (one row
per x, G+ at the target, G- at 0), then ages them to each time of GRID_T_S after programming.
Everything is measured from the samples (nothing is copied from the fits), so the result can be
checked against the published fits (tests/test_model_statistics.py).

A "device" here is one polarity unit, the quantity the preset fits describe: one device for
`pcm` and `hermes-1dev`, the jointly programmed pair for `hermes-2dev` (presets.py).
"""

from __future__ import annotations

import os

import numpy as np

from pcmhil.errors import ConfigError

from .checks import check_int
from .device import DeviceArray
from .mapping import combine_devices
from .presets import get_preset

GRID_X = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
#: 1 s, 1 h, 1 day, 1 year (365 days) after programming.
GRID_T_S = (1.0, 3600.0, 86400.0, 365 * 86400.0)


def characterize(preset_name: str, devices: int = 65536, seed: int = 0) -> dict:
    """Measured programming and drift statistics of a preset (JSON-ready dict).

    {"preset", "g_max_us", "t0_s",
     "points": [{"x", "prog_sigma_us", "nu_mean", "nu_std"}],
     "drift": [{"x", "t_s", "g_ratio_mean", "read_sigma_rel"}]}
    prog_sigma_us: std of the programmed conductance; nu_*: of the drawn drift exponents;
    g_ratio_mean: mean of G(t) / G(just programmed) (devices programmed above 0);
    read_sigma_rel: std of G(t) / G_drift(t) - 1, the relative spread the 1/f noise adds.
    """
    preset = get_preset(preset_name)
    devices = check_int("devices", devices, 2, 2**19)  # ~0.4 GB of state at the maximum
    array = DeviceArray(preset, len(GRID_X), devices, seed=seed)
    targets = np.zeros((len(GRID_X), devices, 2))
    targets[..., 0] = np.array(GRID_X)[:, None] * preset.g_max_us
    array.program_array(targets, op_index=0)
    g_prog = combine_devices(array.g_prog_us)[..., 0]
    nu = array.nu[..., 0]
    points = [{"x": x, "prog_sigma_us": _std(g_prog[r]), "nu_mean": float(nu[r].mean()),
               "nu_std": _std(nu[r])} for r, x in enumerate(GRID_X)]
    drift = []
    for t_s in GRID_T_S:
        array.set_time(t_s)
        g_read = combine_devices(array.g_read_us)[..., 0]
        g_drift = combine_devices(array.g_drift_us)[..., 0]
        for r, x in enumerate(GRID_X):
            programmed, drifted = g_prog[r] > 0, g_drift[r] > 0
            drift.append({
                "x": x, "t_s": t_s,
                "g_ratio_mean": float((g_read[r][programmed] / g_prog[r][programmed]).mean()),
                "read_sigma_rel": _std(g_read[r][drifted] / g_drift[r][drifted] - 1.0),
            })
    return {"preset": preset.name, "g_max_us": preset.g_max_us, "t0_s": preset.t0_s,
            "points": points, "drift": drift}


def plot_characterization(result: dict, path) -> None:
    """Save a figure of a `characterize` result: programming error vs. target, and
    G(t)/G0 vs. time after programming (log axis), one line per target."""
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"path must be a file path, not {path!r}")
    if not isinstance(result, dict) or not {"preset", "points", "drift"} <= result.keys():
        raise ConfigError(f"result must be a characterize() result dict, not {type(result).__name__}")
    from matplotlib.figure import Figure  # lazily: plotting is optional (extra "plots")

    figure = Figure(figsize=(10, 4), layout="constrained")
    error_axes, drift_axes = figure.subplots(1, 2)
    x = [p["x"] for p in result["points"]]
    error_axes.plot(x, [p["prog_sigma_us"] for p in result["points"]], "o-")
    error_axes.set(xlabel="target x = G / G_max", ylabel="programming error sigma (uS)",
                   title=f"{result['preset']}: programming error")
    for target in x:
        rows = [d for d in result["drift"] if d["x"] == target]
        drift_axes.plot([d["t_s"] for d in rows], [d["g_ratio_mean"] for d in rows], "o-",
                        label=f"x = {target}")
    drift_axes.set(xscale="log", xlabel="time after programming (s)", ylabel="mean G(t) / G0",
                   title=f"{result['preset']}: drift")
    drift_axes.legend()
    figure.savefig(path)


def _std(samples: np.ndarray) -> float:
    return float(samples.std(ddof=1))
