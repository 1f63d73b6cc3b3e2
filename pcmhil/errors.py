"""The one exception root of pcmhil and its precise subclasses.

Messages follow the form "X must be Y, not {value!r}" so that a user learns what was wrong and
what was expected without reading a traceback.
"""


class PcmhilError(Exception):
    """Root of every error pcmhil raises on purpose."""


class ConfigError(PcmhilError, ValueError):
    """An argument, preset or configuration value is outside its accepted range."""


class ToolchainError(PcmhilError, RuntimeError):
    """A required external tool (Verilator, g++, make, perl, Yosys) is missing or failed."""


class SimulationError(PcmhilError, RuntimeError):
    """A co-simulation died, hung, or stopped making progress."""
