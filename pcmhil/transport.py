"""The host's link to a chip: a handful of synchronous verbs (DESIGN.md, "Backends").

Implementations: the twin (host/twin.py, in process), the co-simulation (cosim/, in its own
process), a board (documented path). The Chip driver (host/chip.py) is written against this
class only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pcmhil.errors import PcmhilError


class BusError(PcmhilError):
    """An AXI4-Lite access was answered with SLVERR."""

    def __init__(self, op: str, address: int):
        super().__init__(f"AXI4-Lite {op} of address {address:#06x} answered SLVERR "
                         f"(unmapped, read-only, or a partial write)")
        self.op, self.address = op, address


class Transport(ABC):
    """Synchronous access to one chip."""

    @abstractmethod
    def read(self, address: int) -> int:
        """AXI4-Lite read of a 32-bit register; raises BusError on SLVERR."""

    @abstractmethod
    def write(self, address: int, value: int, strobe: int = 0b1111) -> None:
        """AXI4-Lite write; raises BusError on SLVERR."""

    def poll(self, address: int, mask: int, value: int, timeout_s: float = 30.0) -> int:
        """Read the register at `address` until (register & mask) == value; return it.

        A board's firmware or a simulation answers this without a round trip per read; this
        default polls over the link.
        """
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            register = self.read(address)
            if register & mask == value:
                return register
            if time.monotonic() > deadline:
                from pcmhil.errors import SimulationError

                raise SimulationError(f"register {address:#06x} = {register:#010x} did not reach "
                                      f"{value:#x} under mask {mask:#x} within {timeout_s:.0f} s")

    @abstractmethod
    def send(self, packets: np.ndarray | list[np.ndarray]) -> None:
        """Send packets on the input stream, in order, tlast on each packet's last word.

        `packets` is a 2-D uint32 array (packets of equal length, one per row) or a list of 1-D
        arrays. Returns when the chip has accepted every beat.
        """

    @abstractmethod
    def receive(self, count: int, timeout_s: float = 10.0) -> list[np.ndarray]:
        """The next `count` packets from the output stream, each a 1-D uint32 array."""

    def receive_batches(self, count: int, timeout_s: float = 10.0) -> list[np.ndarray]:
        """The next `count` packets as 2-D uint32 arrays, one packet per row, rows in order.

        A transport that holds a batch of packets as one array (the twin: the results of a batch
        of MVMs) returns it whole instead of 1-D packets to be stacked again; this default makes
        each packet of receive() a batch of one.
        """
        return [packet[None, :] for packet in self.receive(count, timeout_s)]

    @abstractmethod
    def pending(self) -> int:
        """Output packets received from the chip and not yet returned by receive()."""

    @abstractmethod
    def advance_time(self, seconds: float) -> None:
        """Model environment: let `seconds` of device time pass (PCM drift) on every tile."""

    @abstractmethod
    def reset(self, analog=None) -> None:
        """Reset the chip (every register, buffer and counter to its reset value) and, with
        `analog` (a pcmhil.model.analog_tile.AnalogSpec), rebuild the analog tiles from it."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the link (stop a simulation process)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
