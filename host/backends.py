"""Open a chip on a named backend: the same driver code runs on every one (DESIGN.md)."""

from __future__ import annotations

from pcmhil.errors import ConfigError
from pcmhil.interface import Geometry
from pcmhil.transport import Transport

BACKENDS = ("twin", "cosim")
MODES = ("transaction", "cycle")


def open_transport(backend: str, geometry: Geometry, analog, *, mode: str = "transaction",
                   waves=False, progress=None, **cosim_options) -> Transport:
    """A Transport to a chip of `geometry` whose analog tiles are built from `analog`
    (a pcmhil.model.analog_tile.AnalogSpec)."""
    if backend == "twin":
        from pcmhil.host.twin import TwinTransport

        return TwinTransport(geometry, analog)
    if backend == "cosim":
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, not {mode!r}")
        from pcmhil.cosim.transport import CosimTransport  # lazy: needs Verilator

        return CosimTransport(geometry, analog, mode=mode, waves=waves, progress=progress,
                              **cosim_options)
    raise ConfigError(f"backend must be one of {BACKENDS}, not {backend!r}")
