"""One tile's analog side as the chip sees it: the facade that the twin and the co-simulation
bind to the digital periphery.

`AnalogSpec` names what to build (a factory and its keyword arguments, all JSON-serialisable) so
that the twin, in the host process, and the co-simulation, in the simulator process, build
identical analog tiles from the same spec and seed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AnalogSpec:
    """`factory(rows=, cols=, tiles=, **kwargs)` returns one analog tile object per chip tile."""

    factory: str = "pcmhil.model.analog_tile:make_analog_tiles"
    kwargs: dict = field(default_factory=dict)

    def build(self, rows: int, cols: int, tiles: int) -> list:
        module_name, _, attr = self.factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return list(factory(rows=rows, cols=cols, tiles=tiles, **self.kwargs))
