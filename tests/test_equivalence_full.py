"""The full equivalence regression: >= 1,000 random workloads on random geometries, both
fidelity modes, every preset; zero mismatches is the only pass. Long: marked slow.
(The CI subset is in tests/test_cosim.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from pcmhil.cosim.transport import CosimTransport
from pcmhil.host.chip import Chip
from pcmhil.host.equivalence import compare, random_workload, run_workload
from pcmhil.host.twin import TwinTransport
from pcmhil.interface import Geometry
from pcmhil.model import int_gemm, kernels
from pcmhil.model.analog_tile import AnalogSpec

pytestmark = [pytest.mark.cosim, pytest.mark.slow]
MIN_ROWS = int_gemm.MIN_ROWS
PRESETS = ("pcm", "hermes-2dev", "hermes-1dev", "projected", "ideal")
#: Geometries drawn once (each one is a Verilator build per mode); workloads per geometry and mode.
GEOMETRY_SEED, GEOMETRIES, WORKLOADS = 2026, 5, 200
#: The edges of the limits (interface.Geometry): the most tiles, more rows than 256, and the
#: smallest tile; fewer workloads each (on top of the >= 1,000 above).
EDGE_GEOMETRIES, EDGE_WORKLOADS = (Geometry(4, 8, 8), Geometry(260, 12, 1), Geometry(4, 4, 1)), 40


def random_geometries():
    rng = np.random.default_rng(GEOMETRY_SEED)
    return [Geometry(int(rng.integers(1, 17)) * 4, int(rng.integers(1, 17)) * 4, int(rng.integers(1, 4)))
            for _ in range(GEOMETRIES)]


CASES = [(g, WORKLOADS) for g in random_geometries()] + [(g, EDGE_WORKLOADS) for g in EDGE_GEOMETRIES]


@pytest.mark.parametrize("mode", ["transaction", "cycle"])
@pytest.mark.parametrize(("geometry", "workloads"), CASES, ids=[str(g) for g, _ in CASES])
def test_thousand_workloads(geometry, workloads, mode, monkeypatch):
    """With torch installed, every odd workload's twin runs all its window matmuls, however
    few windows, on the int8 GEMM (model/int_gemm.py), the even ones on numpy's float path;
    every fourth, from the third, with the per-pair loops compiled too (model/kernels.py). The
    simulation's model runs the first half of the workloads on numpy's path, the second half
    with its compiled kernels (a transaction's window summed exactly, a cycle's step compiled)."""
    int8 = int_gemm.warm_up()
    compiled = kernels.warm_up() and kernels.module()
    with CosimTransport(geometry, AnalogSpec(kwargs={"preset": "pcm", "seed": 0}), mode=mode) as cosim:
        for k in range(workloads):
            if k == workloads // 2:
                assert cosim.warm_up()
            monkeypatch.setattr(int_gemm, "MIN_ROWS", 1 if int8 and k % 2 else MIN_ROWS)
            monkeypatch.setattr(kernels, "module", lambda k=k: compiled if k % 4 == 3 else None)
            spec = AnalogSpec(kwargs={"preset": PRESETS[k % len(PRESETS)], "seed": k})
            workload = random_workload(geometry, 10_000 + k, n_ops=20)
            cosim.reset(spec)
            got = run_workload(Chip(cosim, geometry), workload)
            want = run_workload(Chip(TwinTransport(geometry, spec), geometry), workload)
            assert compare(got, want) == [], f"workload {k} on {geometry} in {mode} mode"
