"""Weights <-> conductances: differential pairs, devices per polarity, per-column scale.

Kept apart from the device physics (STYLE.md; aihwkit's converter vs. noise split). A signed
weight w of column j, with the column's scale w_max_j (the weight mapped to full conductance),
becomes a differential pair

    G+ = g_max * max(w, 0) / w_max_j,    G- = g_max * max(-w, 0) / w_max_j

(aihwkit's SinglePairConductanceConverter with g_min = 0), after clipping w to
[-w_max_j, w_max_j]. Each polarity's conductance is shared equally by its 1 or 2 devices
(HERMES' 8T4R cell, REFERENCE.md). Conductance arrays carry the polarity on their last axis
before the device axis: (..., 2) per polarity, index 0 = G+, 1 = G-; (..., 2, devices) per
device.
"""

from __future__ import annotations

import numpy as np

from .checks import check_array, check_int, check_positive, check_real


def column_scales(weights) -> np.ndarray:
    """Per-column w_max = max |w| of the column (1.0 for an all-zero column), shape (cols,)."""
    w = check_array("weights", weights, (None, None), "real")
    scale = np.abs(w).max(axis=0, initial=0.0)
    return np.where(scale > 0, scale, 1.0)


def weights_to_conductance(weights, g_max_us: float, column_scale=None) -> np.ndarray:
    """Per-polarity target conductances (rows, cols, 2) in uS; weights clipped to the scale."""
    w = check_array("weights", weights, (None, None), "real")
    g_max_us = check_real("g_max_us", g_max_us, 0.0, None, "uS")
    scale = column_scales(w) if column_scale is None else _check_scale(column_scale, w.shape[1])
    x = np.clip(w / scale, -1.0, 1.0)
    return g_max_us * np.stack([np.maximum(x, 0.0), np.maximum(-x, 0.0)], axis=-1)


def conductance_to_weights(g_us, g_max_us: float, column_scale) -> np.ndarray:
    """Weights (rows, cols) from per-polarity conductances (rows, cols, 2): the inverse map."""
    g = check_array("g_us", g_us, (None, None, 2), "real")
    g_max_us = check_real("g_max_us", g_max_us, 0.0, None, "uS")
    scale = _check_scale(column_scale, g.shape[1])
    return (g[..., 0] - g[..., 1]) / g_max_us * scale


def split_devices(g_polarity_us: np.ndarray, devices: int) -> np.ndarray:
    """(..., 2) per polarity -> (..., 2, devices): each device holds an equal share."""
    devices = check_int("devices", devices, 1, 2)
    share = g_polarity_us / devices
    return np.repeat(share[..., None], devices, axis=-1)


def combine_devices(g_device: np.ndarray) -> np.ndarray:
    """(..., 2, devices) -> (..., 2): the devices of a polarity conduct in parallel."""
    return g_device.sum(axis=-1)


def _check_scale(column_scale, cols: int) -> np.ndarray:
    scale = check_array("column_scale", column_scale, (cols,), "real")
    return check_positive("column_scale", scale)
