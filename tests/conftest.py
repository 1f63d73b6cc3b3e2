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
