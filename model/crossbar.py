"""One analog tile: PCM devices, their integer read state, the MVM window and the CCO front end.

Read state -> integers. The devices' realised read conductances (device.py) are quantised per
device to g_int = rint(G / conductance_lsb_us) >= 0 and summed over the devices of each polarity.
An optional first-order IR drop then attenuates these integers (below). Everything the MVM does
from there on is integer arithmetic (drive.py, cco.py), which is what makes the cycle-by-cycle
and the once-per-window evaluation agree exactly.

IR drop (APPROXIMATION, off by default): a static first-order attenuation of the effective
integer conductances, computed once per read state. Every row is assumed driven (worst case)
from its driver at column 0, every column read by its CCO below the last row, with
`ir_drop_wire_ohm` of wire between neighbouring cells. The cell (i, j) then sees its voltage
reduced by the first-order drops of the row and column wires carrying the currents of the cells
downstream, i.e. by the factor a_ij = 1 - R (sum_m G_im (min(m, j) + 1) + sum_r>=i sum_l<=r G_lj).
An exact nodal solution would depend on each window's drive and break the linear, integer
chain (and so the equality of the fidelity modes); this keeps linearity in the drive.

Read modes (HERMES, docs/numerics.md section 1): `read_mode_windows` turns signed int8-like
input codes into the 1 window of the 1-phase mode (differential, polarity = input sign) or the
4 windows of the 4-phase mode (unipolar inputs, G+ and G- separately), each with the sign by
which the digital side combines its result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .cco import CCO, CcoTransfer
from .checks import check_array, check_choice, check_real, check_within
from .device import DeviceArray, FaultRates
from .drive import SelectedConductance, check_drive, check_rows_or_batch, check_select, integrated_charge
from .keyed_rng import KeyedRng
from .mapping import column_scales, conductance_to_weights, weights_to_conductance
from .presets import PcmPreset, resolve_preset

#: Default conductance quantum: 2**14 levels per polarity's g_max (far finer than the
#: programming noise; keeps every charge an exact float64 integer for 256 x 256 windows).
DEFAULT_LSB_LEVELS = 2**14
#: Default CCO full scale = this many times sqrt(rows) x g_max. ASSUMPTION: the current of a
#: column of random-sign weights grows like sqrt(rows); at twice that times g_max the CCO
#: saturates only for currents beyond ~3.5 standard deviations of uniformly distributed weights
#: and inputs, while typical outputs still use a good part of the rate range.
DEFAULT_FULL_SCALE_SQRT_ROWS = 2.0

READ_MODES = ("1-phase", "4-phase")


@dataclass(frozen=True)
class CrossbarConfig:
    """One tile's analog configuration (units in field names; None: the documented default)."""

    preset: str | PcmPreset = "hermes-2dev"
    rows: int = 256
    cols: int = 256
    seed: int = 0
    tile: int = 0
    conductance_lsb_us: float | None = None
    i_full_scale_us: float | None = None
    ir_drop_wire_ohm: float = 0.0
    faults: FaultRates = field(default_factory=FaultRates)


class Window(NamedTuple):
    """One PWM window of a read mode and the sign of its count in the digital combination."""

    durations: np.ndarray
    polarity: np.ndarray
    select: str
    sign: int


class Crossbar:
    """A rows x cols PCM crossbar with its CCOs: the analog side of one tile."""

    def __init__(self, config: CrossbarConfig = CrossbarConfig()):
        self.config = config
        self.preset = resolve_preset(config.preset)
        g_max = self.preset.g_max_us
        self.devices = DeviceArray(self.preset, config.rows, config.cols, seed=config.seed,
                                   tile=config.tile, faults=config.faults)
        self.rows, self.cols = self.devices.rows, self.devices.cols
        self.conductance_lsb_us = check_real(
            "conductance_lsb_us", _default(config.conductance_lsb_us, g_max / DEFAULT_LSB_LEVELS),
            g_max * 2.0**-30, g_max, "uS")
        self.i_full_scale_us = check_real(
            "i_full_scale_us",
            _default(config.i_full_scale_us, DEFAULT_FULL_SCALE_SQRT_ROWS * np.sqrt(self.rows) * g_max),
            self.conductance_lsb_us, None, "uS")
        self.ir_drop_wire_ohm = check_real("ir_drop_wire_ohm", config.ir_drop_wire_ohm, 0.0, 1e6, "ohm")
        rng = KeyedRng(config.seed, config.tile)
        transfer = CcoTransfer.draw(self.preset.cco, self.cols,
                                    self.i_full_scale_us / self.conductance_lsb_us, rng)
        self.cco = CCO(transfer, self, rng)
        self._version = -1
        self._read_int = np.zeros((self.rows, self.cols, 2), dtype=np.int64)
        self._selected: dict[str, SelectedConductance] = {}

    # ---- the integer read state -------------------------------------------------------------

    def read_int(self) -> np.ndarray:
        """Effective integer conductance per polarity (rows, cols, 2), conductance LSBs."""
        self._refresh()
        return self._read_int.copy()

    def read_conductances_us(self) -> np.ndarray:
        """The effective read state per polarity (rows, cols, 2) in uS (integers x LSB)."""
        return self.read_int() * self.conductance_lsb_us

    def read_weights(self, column_scale) -> np.ndarray:
        """Weights (rows, cols) decoded from the read state with the mapping's column scale."""
        return conductance_to_weights(self.read_conductances_us(), self.preset.g_max_us, column_scale)

    def selected(self, select: str) -> SelectedConductance:
        """The integer matrix a window of device select `select` conducts (cached per state)."""
        select = check_select(select)
        self._refresh()
        if select not in self._selected:
            plus, minus = self._read_int[..., 0], self._read_int[..., 1]
            w_int = {"differential": plus - minus, "plus": plus, "minus": minus}[select]
            self._selected[select] = SelectedConductance.of(np.ascontiguousarray(w_int))
        return self._selected[select]

    def _refresh(self) -> None:
        if self._version == self.devices.version:
            return
        per_device = np.rint(self.devices.g_read_us / self.conductance_lsb_us).astype(np.int64)
        g_int = per_device.sum(axis=-1)
        if self.ir_drop_wire_ohm > 0:
            attenuation = self._ir_drop_attenuation(g_int.sum(axis=-1) * self.conductance_lsb_us)
            g_int = np.rint(g_int * attenuation[..., None]).astype(np.int64)
        self._read_int = g_int
        self._selected = {}
        self._version = self.devices.version

    def _ir_drop_attenuation(self, g_cell_us: np.ndarray) -> np.ndarray:
        """First-order voltage attenuation a_ij of each cell (module doc), within [0, 1]."""
        cols = np.arange(1, self.cols + 1)
        before = np.cumsum(g_cell_us * cols, axis=1)  # sum_{m <= j} G_im (m + 1)
        after = g_cell_us.sum(axis=1, keepdims=True) - np.cumsum(g_cell_us, axis=1)
        row_drop = before + cols * after
        above = np.cumsum(g_cell_us, axis=0)  # current in the column wire below row r
        column_drop = np.cumsum(above[::-1], axis=0)[::-1]
        return np.clip(1.0 - self.ir_drop_wire_ohm * 1e-6 * (row_drop + column_drop), 0.0, 1.0)

    # ---- programming convenience ----------------------------------------------------------

    def program_weights(self, weights, op_index: int, column_scale=None) -> np.ndarray:
        """Map weights (rows, cols) to differential targets and program every row one-shot.

        Returns the column scale used (max |w| per column unless given) for decoding.
        """
        scale = column_scales(weights) if column_scale is None else column_scale
        targets = weights_to_conductance(weights, self.preset.g_max_us, scale)
        self.devices.program_array(targets, op_index)
        return np.asarray(scale, dtype=np.float64)

    # ---- evaluation ----------------------------------------------------------------------------

    def integrated_charge(self, durations, polarity, select: str) -> np.ndarray:
        """Q[j] = sum_i s_i d_i W_sel[i, j], exact int64, for one window (rows,) -> (cols,) or
        a batch (B, rows) -> (B, cols). Units: conductance LSB x cycles."""
        w = self.selected(select)
        batched = check_rows_or_batch("durations", durations)
        d, s = check_drive(durations, polarity, self.rows, None, batched=batched)
        charge = integrated_charge(w, d, s)
        return charge if batched else charge[0]

    def column_currents(self, row_drive, select: str) -> np.ndarray:
        """Cycle mode: integer column currents (cols,) for row_drive in {-1, 0, +1} (rows,)
        (0: the row does not conduct this cycle, else its read polarity)."""
        w = self.selected(select)
        drive = check_within("row_drive", check_array("row_drive", row_drive, (self.rows,), "int"), -1, 1)
        return integrated_charge(w, np.abs(drive)[None], np.where(drive < 0, -1, 1)[None])[0]


def read_mode_windows(inputs, read_mode: str) -> tuple[Window, ...]:
    """The PWM windows of signed input codes (rows,) or (B, rows) in a HERMES read mode.

    1-phase: one differential window, d = |x|, polarity = sign(x). 4-phase: (x > 0, G+),
    (x > 0, G-), (x < 0, G+), (x < 0, G-) with d = |x| on the rows of that input sign and
    unipolar polarity; combining the four counts with signs +, -, -, + gives the 1-phase result
    (docs/numerics.md section 4). In both, sum(sign * charge) = sum_i x_i (G+ - G-)[i, j].
    """
    check_rows_or_batch("inputs", inputs)
    x = check_array("inputs", inputs, (None,) * np.ndim(inputs), "int")
    read_mode = check_choice("read_mode", read_mode, READ_MODES)
    magnitude, ones = np.abs(x), np.ones_like(x)
    if read_mode == "1-phase":
        return (Window(magnitude, np.where(x < 0, -1, 1), "differential", 1),)
    positive, negative = np.where(x > 0, magnitude, 0), np.where(x < 0, magnitude, 0)
    return (Window(positive, ones, "plus", 1), Window(positive, ones, "minus", -1),
            Window(negative, ones, "plus", -1), Window(negative, ones, "minus", 1))


def _default(value, default: float) -> float:
    return default if value is None else value

