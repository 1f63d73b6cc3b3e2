"""Seeded device statistics against the published fits (issue 3, "Done when").

`characterize` measures 65,536 devices per target x; each measured statistic must agree within
3 % with the analytic value of what the model draws from the fit (REFERENCE.md):
- programming: g_prog = clip(target + sigma(x) z, 0, g_max). The clip barely matters at small x
  (target / sigma > 3.4 for every grid point) but halves the spread at x = 1, where the target
  sits on the upper bound, so the reference is the std of the doubly clipped normal.
- drift exponent: nu = |N(mu(x), sigma(x))| is a folded normal; its mean and std differ from
  mu and sigma where mu / sigma is small (2 % at x = 0.05 for pcm), so the reference is the
  folded-normal moments.
- 1/f read noise: G_read = max(G_drift (1 + s z), 0) with s = Q_s(x) sqrt(ln((t + t0 + t_read) /
  (2 t_read))): the relative deviation is max(s z, -1), a normal clipped at -1 (a 0.2 % effect
  at pcm x = 0.05 after a year), so the reference is the std of that clipped normal.
The sampling error of each statistic is below 0.5 % (std of a std ~ 1 / sqrt(2 N)), so 3 % is a
real test of the fits, not of luck.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import norm

from pcmhil.model import GRID_T_S, GRID_X, characterize, get_preset, plot_characterization

DEVICES = 65536
TOLERANCE = 0.03


def clipped_normal_std(mean, sigma, lo, hi):
    """Std of clip(mean + sigma Z, lo, hi), Z ~ N(0, 1) (hi may be inf)."""
    a, b = (lo - mean) / sigma, (hi - mean) / sigma
    p_in = norm.cdf(b) - norm.cdf(a)
    pdf_a, pdf_b = norm.pdf(a), norm.pdf(b)
    tail_hi = 0.0 if np.isinf(hi) else hi * norm.sf(b)
    tail_hi2 = 0.0 if np.isinf(hi) else hi**2 * norm.sf(b)
    b_pdf_b = 0.0 if np.isinf(b) else b * pdf_b
    m1 = lo * norm.cdf(a) + tail_hi + mean * p_in + sigma * (pdf_a - pdf_b)
    m2 = (lo**2 * norm.cdf(a) + tail_hi2 + mean**2 * p_in + 2 * mean * sigma * (pdf_a - pdf_b)
          + sigma**2 * (p_in + a * pdf_a - b_pdf_b))
    return np.sqrt(m2 - m1**2)


def folded_normal_moments(mu, sigma):
    """Mean and std of |N(mu, sigma)|."""
    mean = sigma * np.sqrt(2 / np.pi) * np.exp(-mu**2 / (2 * sigma**2)) + mu * (1 - 2 * norm.cdf(-mu / sigma))
    return mean, np.sqrt(mu**2 + sigma**2 - mean**2)


@pytest.fixture(scope="module", params=["pcm", "hermes-2dev"])
def measured(request):
    return get_preset(request.param), characterize(request.param, devices=DEVICES, seed=3)


def relative_error(measured_value, expected):
    return abs(measured_value / expected - 1)


def test_programming_sigma_matches_fit(measured):
    preset, result = measured
    for point in result["points"]:
        x = point["x"]
        sigma = float(preset.prog_sigma_us(np.array([x]))[0])
        expected = clipped_normal_std(x * preset.g_max_us, sigma, 0.0, preset.g_max_us)
        assert relative_error(point["prog_sigma_us"], expected) < TOLERANCE, (x, point, expected)


def test_drift_exponent_matches_folded_fit(measured):
    preset, result = measured
    for point in result["points"]:
        mu, sigma = (float(v[0]) for v in preset.nu_mean_std(np.array([point["x"]])))
        mean, std = folded_normal_moments(mu, sigma)
        assert relative_error(point["nu_mean"], mean) < TOLERANCE, (point, mean)
        assert relative_error(point["nu_std"], std) < TOLERANCE, (point, std)


def test_read_noise_matches_fit_at_every_time(measured):
    preset, result = measured
    assert len(result["drift"]) == len(GRID_X) * len(GRID_T_S)
    for point in result["drift"]:
        q = float(preset.read_noise_q(np.array([point["x"]]))[0])
        s = q * float(preset.read_noise_time_factor(np.array(point["t_s"])))
        expected = clipped_normal_std(0.0, s, -1.0, np.inf)
        assert relative_error(point["read_sigma_rel"], expected) < TOLERANCE, (point, expected)


def test_mean_drift_follows_the_power_law(measured):
    """E[G(t)/G0] = E[((t + t0)/t0)^-nu] over the folded-normal nu (read noise has mean ~0)."""
    preset, result = measured
    z = np.linspace(-8, 8, 4001)
    weights = norm.pdf(z) / norm.pdf(z).sum()
    for point in result["drift"]:
        mu, sigma = (float(v[0]) for v in preset.nu_mean_std(np.array([point["x"]])))
        nu = np.abs(mu + sigma * z)
        expected = float((weights * ((point["t_s"] + preset.t0_s) / preset.t0_s) ** -nu).sum())
        assert relative_error(point["g_ratio_mean"], expected) < 0.01, (point, expected)


def test_result_layout_is_the_documented_json():
    result = characterize("hermes-1dev", devices=1000, seed=1)
    assert list(result) == ["preset", "g_max_us", "t0_s", "points", "drift"]
    assert (result["preset"], result["g_max_us"], result["t0_s"]) == ("hermes-1dev", 10.35, 200.0)
    assert [list(p) for p in result["points"]] == [["x", "prog_sigma_us", "nu_mean", "nu_std"]] * 6
    assert {tuple(d) for d in result["drift"]} == {("x", "t_s", "g_ratio_mean", "read_sigma_rel")}
    assert [p["x"] for p in result["points"]] == [0.05, 0.1, 0.25, 0.5, 0.75, 1.0]
    assert sorted({d["t_s"] for d in result["drift"]}) == [1.0, 3600.0, 86400.0, 31536000.0]
    json.dumps(result)  # plain floats only


def test_ideal_preset_has_no_spread_and_no_drift():
    result = characterize("ideal", devices=100)
    assert all(p["prog_sigma_us"] == p["nu_mean"] == p["nu_std"] == 0.0 for p in result["points"])
    assert all(d["g_ratio_mean"] == 1.0 and d["read_sigma_rel"] == 0.0 for d in result["drift"])


def test_projected_preset_drifts_ten_times_less_than_pcm():
    pcm, projected = characterize("pcm", devices=4000), characterize("projected", devices=4000)
    for a, b in zip(pcm["points"], projected["points"], strict=True):
        assert b["nu_mean"] == pytest.approx(a["nu_mean"] / 10, rel=1e-9)
        assert b["prog_sigma_us"] == a["prog_sigma_us"]
    for a, b in zip(pcm["drift"], projected["drift"], strict=True):
        assert b["read_sigma_rel"] == pytest.approx(a["read_sigma_rel"] / 10, rel=0.02)


def test_same_seed_same_numbers_other_seed_other_numbers():
    assert characterize("pcm", devices=500, seed=7) == characterize("pcm", devices=500, seed=7)
    assert characterize("pcm", devices=500, seed=7) != characterize("pcm", devices=500, seed=8)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "characterization.png"
    plot_characterization(characterize("pcm", devices=500), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs, message", [
    ({"preset_name": "pcm2"}, r"preset must be one of 'pcm', 'hermes-2dev', 'hermes-1dev', "
                              r"'projected', 'ideal', not 'pcm2'"),
    ({"preset_name": "pcm", "devices": 1}, r"devices must be an integer within \[2, 524288\], not 1"),
    ({"preset_name": "pcm", "devices": 10.0}, r"devices must be an integer, not 10.0"),
    ({"preset_name": "pcm", "seed": -1}, r"seed must be an integer within \[0, 18446744073709551615\]"),
])
def test_bad_arguments_are_named(kwargs, message):
    from pcmhil.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        characterize(**kwargs)


def test_plot_rejects_a_non_result(tmp_path):
    from pcmhil.errors import ConfigError

    with pytest.raises(ConfigError, match=r"result must be a characterize\(\) result dict, not list"):
        plot_characterization([], tmp_path / "x.png")
