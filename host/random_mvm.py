"""`pcmhil mvm`: program a random weight matrix, run random MVMs, fingerprint every output code.

The same seed, geometry, count and preset give the same codes_sha256 on every backend and mode:
that is the bit-accuracy promise in one line of output.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from pcmhil.errors import ConfigError, SimulationError
from pcmhil.host.backends import open_transport
from pcmhil.host.chip import Chip
from pcmhil.interface import WINDOW_RESET, Geometry, ReadMode
from pcmhil.model.analog_tile import AnalogSpec
from pcmhil.model.checks import UINT64_MAX, check_int

#: LDPU scaling of the random run: raw * 16 >> 6 = raw / 4, enough to keep most codes in int8.
GAIN, SHIFT = 16, 6


def random_mvm(backend: str, *, mode: str = "transaction", rows: int = 64, cols: int = 64,
               count: int = 100, seed: int = 1, preset: str = "pcm",
               read_mode: ReadMode = ReadMode.ONE_PHASE, progress=None, **transport_options) -> dict:
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"count must be an integer >= 1, not {count!r}")
    seed = check_int("seed", seed, 0, UINT64_MAX)
    geometry = Geometry(rows, cols, 1)
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, (rows, cols))
    plus = np.rint(np.maximum(w, 0) * 255).astype(np.int64)
    minus = np.rint(np.maximum(-w, 0) * 255).astype(np.int64)
    x = rng.integers(-128, 128, (count, rows))
    spec = AnalogSpec(kwargs={"preset": preset, "seed": seed})
    with open_transport(backend, geometry, spec, mode=mode, progress=progress,
                        **transport_options) as transport:
        chip = Chip(transport, geometry)
        chip.program(0, plus, minus)
        chip.configure(0, read_mode=read_mode, window=WINDOW_RESET, shift=SHIFT)
        chip.calibrate(0, 2)
        chip.load_ldpu(0, np.full(cols, GAIN), np.zeros(cols, dtype=np.int64))
        start = time.perf_counter()
        y = chip.mvm(0, x)
        seconds = time.perf_counter() - start
    result = {
        "backend": backend, "mode": mode if backend == "cosim" else None, "rows": rows,
        "cols": cols, "count": count, "seconds": round(seconds, 6),
        "mvm_per_s": round(count / seconds, 1),
        "codes_sha256": hashlib.sha256(y.astype(np.int8).tobytes()).hexdigest(),
    }
    waves = getattr(transport, "waves_file", None)
    if waves is not None:
        if not waves.exists():
            raise SimulationError(f"the co-simulation wrote no waveform ({waves} is missing)")
        result["waves"] = str(waves)
    return result
