"""Fast access to simulation signals from the cosim server.

cocotb's `handle.value` builds a LogicArray (or parses a binary string) on every read and checks
ranges on every write: ~10 us a call, which at a few hundred signal accesses per MVM was a large
part of the co-simulation's time. The server touches a fixed set of <= 64-bit signals and memory
words (TOOLCHAIN.md: wider VPI values are unreliable), so it resolves their handles once and
reads/writes them through cocotb's simulator object directly. Writes are deposits applied
immediately; Verilator re-evaluates the design before time advances (VerilatedVpi::evalNeeded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def words(handles: Sequence) -> list[Word]:
    return [Word(h) for h in handles]


def read_all(ws: Sequence[Word]) -> list[int]:
    return [w.read() for w in ws]


def write_all(ws: Sequence[Word], values: Sequence[int]) -> None:
    for w, v in zip(ws, values, strict=True):
        w.write(v)
