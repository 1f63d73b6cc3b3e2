"""pcmhil.model: the analog half of the chip, a PCM crossbar with its CCO front end (numpy).

Block diagram, one file per block:
  presets.py       published device statistics, pulse response and CCO constants, by name
  mapping.py       weights <-> differential conductance targets (per-column scale, devices)
  device.py        the PCM devices: programming, program-and-verify, time, drift, 1/f, faults
  keyed_rng.py     randomness keyed by (seed, tile, stream, operation indices)
  drive.py         PWM row drive of a window -> exact integer charge and current bounds
  crossbar.py      one tile: integer read state, IR drop, read modes, the MVM window
  cco.py           column CCOs: identical counts per clock cycle or per window
  characterize.py  measured device statistics (`pcmhil device characterize`)
  bench.py         model speed vs. numpy matmul (`pcmhil bench model`)

Depends on nothing of pcmhil but pcmhil.errors.
"""

from .bench import bench_model
from .cco import CCO, CcoTransfer
from .characterize import GRID_T_S, GRID_X, characterize, plot_characterization
from .crossbar import READ_MODES, Crossbar, CrossbarConfig, Window, read_mode_windows
from .device import PULSE_CODE_MAX, DeviceArray, FaultRates, VerifyResult
from .drive import SELECTS
from .mapping import column_scales, conductance_to_weights, weights_to_conductance
from .presets import PRESET_NAMES, PRESETS, CcoPreset, PcmPreset, PulseResponse, get_preset

__all__ = [
    "CCO", "GRID_T_S", "GRID_X", "PRESETS", "PRESET_NAMES", "PULSE_CODE_MAX", "READ_MODES", "SELECTS",
    "CcoPreset", "CcoTransfer", "Crossbar", "CrossbarConfig", "DeviceArray", "FaultRates", "PcmPreset",
    "PulseResponse", "VerifyResult", "Window", "bench_model", "characterize", "column_scales",
    "conductance_to_weights", "get_preset", "plot_characterization", "read_mode_windows",
    "weights_to_conductance",
]
