"""Sizes of addresses, indices and memories that stay at least one bit wide: the smallest
geometry has a single word or column group, and Verilog has no zero-width vectors."""

from amaranth.utils import ceil_log2


def address_width(count: int) -> int:
    """Bits of an address or index of `count` items."""
    return max(1, ceil_log2(count))


def memory_depth(count: int) -> int:
    """Depth of a memory of `count` rows whose address is address_width(count) bits."""
    return max(2, count)
