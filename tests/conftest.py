"""Shared pytest configuration: the `cosim` tier needs the Verilator toolchain."""

from __future__ import annotations

import os

import pytest


def _toolchain_problem() -> str | None:
    try:
        from pcmhil.cosim.toolchain import configure_environment

        configure_environment(dict(os.environ))
    except Exception as exc:  # reported as the skip reason
        return str(exc)
    return None


def pytest_collection_modifyitems(config, items):
    problem = _toolchain_problem() if any("cosim" in i.keywords for i in items) else None
    if problem and os.environ.get("PCMHIL_REQUIRE_COSIM"):
        pytest.exit(f"PCMHIL_REQUIRE_COSIM is set but the Verilator toolchain is unavailable: "
                    f"{problem}", returncode=3)
    if problem:
        skip = pytest.mark.skip(reason=f"Verilator toolchain unavailable: {problem}")
        for item in items:
            if "cosim" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(params=["numpy", "int8", "compiled", "walk", "exact"])
def window_path(request, monkeypatch):
    """The windows' matmuls and loops on numpy's path; or the matmuls on torch's int8 GEMM
    (model/int_gemm.py: the `torch` extra, which CI installs) for every batch, however small;
    or that and the per-pair loops compiled too (model/kernels.py), as large batches run, with
    mixed-sign drives always on the band test ("compiled") or always on the walk over whole
    windows ("walk"; `drive._PathChoice` picks one by their speed); or every pair of every
    batch, however large, summed exactly by the compiled kernels, as a few windows run
    (`kernels.exact_windows`). All windows in this process (no window worker, which has its
    own path)."""
    from pcmhil.model import cco, drive, int_gemm, kernels

    monkeypatch.setenv("PCMHIL_WINDOW_WORKER", "0")
    if request.param == "numpy":
        monkeypatch.setattr(int_gemm, "module", lambda: None)
    elif not int_gemm.warm_up():
        pytest.skip("no int8 GEMM path here: torch (the `torch` extra) is not installed, or its kernel "
                    "is not exact on this CPU (model/int_gemm.py)")
    else:
        monkeypatch.setattr(int_gemm, "MIN_ROWS", 1)
    if request.param in ("compiled", "walk", "exact"):
        assert kernels.warm_up(), "numba is a dependency (pyproject.toml): the compiled kernels must load"
        monkeypatch.setattr(cco, "_EXACT_ALL_MAX_WINDOWS", 2**62 if request.param == "exact" else 0)
        walk = request.param == "walk"
        monkeypatch.setattr(drive._PathChoice, "walk_next", lambda self: walk)
    else:
        monkeypatch.setattr(kernels, "module", lambda: None)
    return request.param
