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


@pytest.fixture(params=["numpy", "int8"])
def gemm_path(request, monkeypatch):
    """The window matmuls on numpy's float path, or on torch's int8 GEMM (model/int_gemm.py)
    for every batch, however small (the `torch` extra; CI installs it); all windows in this
    process (no window worker, which has its own path)."""
    from pcmhil.model import int_gemm

    monkeypatch.setenv("PCMHIL_WINDOW_WORKER", "0")
    if request.param == "int8":
        if not int_gemm.warm_up():
            pytest.skip("no int8 GEMM path here: torch (the `torch` extra) is not installed, or its kernel "
                        "is not exact on this CPU (model/int_gemm.py)")
        monkeypatch.setattr(int_gemm, "MIN_ROWS", 1)
    else:
        monkeypatch.setattr(int_gemm, "module", lambda: None)
    return request.param
