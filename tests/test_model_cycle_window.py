"""Cycle mode's incremental column currents (model/analog_tile.py CycleWindow) against the full
product (Crossbar.column_currents) and the window mode's counts, on drives that change a few rows,
most rows, and rows switching back on; each on numpy's path and in one compiled loop a step
(model/kernels.py `cycle_step`)."""

import numpy as np
import pytest

from pcmhil.errors import ConfigError
from pcmhil.model import kernels
from pcmhil.model.analog_tile import make_analog_tiles
from pcmhil.model.drive import SELECTS


@pytest.fixture(autouse=True, params=["numpy", "compiled"])
def step_path(request, monkeypatch):
    if request.param == "compiled":
        assert kernels.warm_up(), "numba is a dependency (pyproject.toml): the compiled kernels must load"
    else:
        monkeypatch.setattr(kernels, "module", lambda: None)
    return request.param


def programmed_tile(rows: int, cols: int, seed: int):
    tile = make_analog_tiles(rows, cols, 1, preset="hermes-2dev", seed=seed)[0]
    rng = np.random.default_rng(seed)
    for r in range(rows):
        tile.program_row(r, rng.integers(0, 256, cols).astype(np.uint8),
                         rng.integers(0, 256, cols).astype(np.uint8), 0)
    return tile


@pytest.mark.parametrize("rows,cols", [(64, 32), (37, 5)])
def test_incremental_currents_equal_the_full_product(rows, cols, step_path):
    tile = programmed_tile(rows, cols, seed=rows)
    rng = np.random.default_rng(1)
    for select in range(len(SELECTS)):
        window = tile.begin_window(select)
        assert (window._compiled is not None) == (step_path == "compiled")  # the path under test runs
        for cycle in range(60):
            kind = cycle % 3
            if kind == 0:  # a few rows change
                drive = window._drive.copy()
                picked = rng.choice(rows, 2, replace=False)
                drive[picked] = rng.integers(-1, 2, 2)
            else:  # most rows change (the full-product path), incl. rows switching back on
                drive = rng.integers(-1, 2, rows)
            window.step(drive)
            expected = tile.crossbar.column_currents(drive, SELECTS[select])
            assert np.array_equal(window._currents.astype(np.int64), expected), (select, cycle)
            assert np.array_equal(window._currents, np.rint(window._currents))  # exact integers


def test_cycle_mode_pulses_sum_to_the_window_count():
    rows, cols, n = 48, 16, 100
    rng = np.random.default_rng(7)
    d = rng.integers(0, n + 1, rows)
    negative = rng.random(rows) < 0.5
    cycle_tile, window_tile = programmed_tile(rows, cols, 3), programmed_tile(rows, cols, 3)
    window = cycle_tile.begin_window(0)
    sign = np.where(negative, -1, 1)
    total = sum(window.step(np.where(d > c, sign, 0)).astype(np.int64) for c in range(n))
    counts = window_tile.windows(d[None], negative[None], np.array([0]), n)[0]
    assert np.array_equal(total, counts)


def test_bad_drive_is_rejected_with_its_name():
    tile = programmed_tile(8, 4, 0)
    window = tile.begin_window(0)
    with pytest.raises(ConfigError, match=r"active must be within \[-1, 1\]"):
        window.step(np.array([0, 0, 2, 0, 0, 0, 0, 0]))
    with pytest.raises(ConfigError, match="active must have shape"):
        window.step(np.zeros(9, dtype=int))


def test_a_current_beyond_the_cco_limit_is_rejected():
    tile = programmed_tile(8, 4, 0)
    transfer = tile.crossbar.cco.transfer
    transfer.__dict__["max_current_lsb"] = 10  # (a cached property) far below what 8 rows conduct
    window = tile.begin_window(0)
    with pytest.raises(ConfigError, match=r"currents must be within \[-10, 10\] LSB"):
        window.step(np.ones(8, dtype=int))
