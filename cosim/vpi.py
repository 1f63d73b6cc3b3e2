"""Fast access to simulation signals from the cosim server.

cocotb's `handle.value` builds a LogicArray (or parses a binary string) on every read and checks
ranges on every write: ~10 us a call, which at a few hundred signal accesses per MVM was a large
part of the co-simulation's time. The server touches a fixed set of signals and memory words, so
it resolves their handles once and reads/writes them through cocotb's simulator object directly:
scalars of <= 64 bits as integers (`Word`), and the wide data (the DMA memories' entries, each
tile's boundary vectors) as one binary string per signal (`Vector`): one VPI call per 2,048-bit
DMA entry or 4,096-bit count vector instead of one per 64-bit word (transaction mode at 256 x 256,
measured in the simulation: a window's boundary I/O ~120 -> ~62 us, the send and drain of an MVM's
packets ~0.1 ms less under cProfile). TOOLCHAIN.md warns
of truncation bugs in wide VPI values in the past; Verilator 5.048 moves binary strings of any
width bit by bit (verilated_vpi.cpp), and every cosim test's codes cross these signals. Writes are
deposits applied immediately; Verilator re-evaluates the design before time advances
(VerilatedVpi::evalNeeded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: cocotb's GPI action code of a deposit (cocotb.handle._GPISetAction.DEPOSIT).
_DEPOSIT = 0


class Word:
    """One signal or memory word of at most 64 bits."""

    __slots__ = ("bits", "read", "write")

    def __init__(self, handle):
        raw = handle._handle
        self.bits = len(handle)
        if self.bits > 64:
            raise ValueError(f"{handle._path}: {self.bits} bits; the cosim touches <= 64-bit signals")
        get = raw.get_signal_val_binstr
        self.read: Callable[[], int] = lambda: int(get(), 2)
        if self.bits <= 32:
            put = raw.set_signal_val_int
            self.write: Callable[[int], None] = lambda value: put(_DEPOSIT, value)
        else:
            put_str, width = raw.set_signal_val_binstr, f"0{self.bits}b"
            self.write = lambda value: put_str(_DEPOSIT, format(value, width))


class Vector:
    """A signal of any width as little-endian 64-bit words (bit i = bit i % 64 of word i // 64),
    read or written in one VPI call as a binary string of the whole signal."""

    __slots__ = ("bits", "n_words", "_get", "_put", "_format")

    def __init__(self, handle):
        raw = handle._handle
        self.bits = len(handle)
        self.n_words = -(-self.bits // 64)
        self._get, self._put = raw.get_signal_val_binstr, raw.set_signal_val_binstr
        self._format = f"0{self.bits}b"

    def read(self) -> np.ndarray:
        return np.frombuffer(int(self._get(), 2).to_bytes(8 * self.n_words, "little"), dtype="<u8")

    def write(self, words: np.ndarray) -> None:
        """`words`: n_words little-endian 64-bit words; bits beyond the signal must be zero."""
        value = int.from_bytes(np.ascontiguousarray(words, dtype="<u8").tobytes(), "little")
        if value >> self.bits:
            raise ValueError(f"a value of {value.bit_length()} bits for a {self.bits}-bit signal")
        self._put(_DEPOSIT, format(value, self._format))


def words(handles: Sequence) -> list[Word]:
    return [Word(h) for h in handles]
