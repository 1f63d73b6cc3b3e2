"""pcmhil: hardware-in-the-loop co-simulation of a HERMES-like PCM in-memory-computing core.

Subpackages (the block diagram of ../README.md):
  pcmhil.rtl    digital periphery in Amaranth (top-level folder rtl/)
  pcmhil.model  analog PCM crossbar and CCO front end (model/)
  pcmhil.cosim  Verilator + cocotb co-simulation of rtl against model (cosim/)
  pcmhil.host   host driver, frontends, twin, CLI (host/)
"""

from pcmhil.errors import PcmhilError

__version__ = "0.1.0"
__all__ = ["PcmhilError", "__version__"]
