"""Skip (or, in CI, fail) a test whose YoWASP tools (the `fpga` extra) are not installed."""

from __future__ import annotations

import os

import pytest

from pcmhil.errors import ToolchainError
from pcmhil.rtl.export import yowasp_tool


def require_yowasp(*tools: str) -> None:
    """Skip with the reason when a tool is missing; under CI (PCMHIL_REQUIRE_COSIM, set by
    .ci/run) fail instead, so that a broken install never passes as skipped tests."""
    for tool in tools:
        try:
            yowasp_tool(tool)
        except ToolchainError as exc:
            if os.environ.get("PCMHIL_REQUIRE_COSIM"):
                pytest.fail(f"PCMHIL_REQUIRE_COSIM is set but {exc}")
            pytest.skip(str(exc))
