"""Packing and unpacking of stream packets (docs/numerics.md section 8), vectorised over batches.

Layouts come from pcmhil.interface: the header fields' offsets are read from the PacketHeader
Struct and payload lengths from packet_payload_beats(); byte m of a beat is bits 8m+7:8m
(little-endian), which is what numpy's '<u4' view of a byte array gives.
"""

from __future__ import annotations

import numpy as np
from amaranth.lib import data

from pcmhil.errors import ConfigError
from pcmhil.interface import (
    BYTES_PER_BEAT,
    Geometry,
    PacketHeader,
    PacketType,
    packet_payload_beats,
)

_HEADER = {name: (f.offset, f.width) for name, f in data.Layout.cast(PacketHeader)}
_HEADER_MASKS = tuple((name, offset, (1 << width) - 1) for name, (offset, width) in _HEADER.items())


def header_words(kind: PacketType | int, tile: int, aux: np.ndarray | int = 0) -> np.ndarray:
    """Header word(s) for packets of `kind` to/from `tile`, one per element of `aux`."""
    fields = {"type": int(getattr(kind, "value", kind)), "tile": tile,
              "aux": np.asarray(aux, dtype=np.uint64)}
    word = np.zeros(np.shape(fields["aux"]), dtype=np.uint64)
    for name, value in fields.items():
        offset, width = _HEADER[name]
        word |= (np.asarray(value, dtype=np.uint64) & np.uint64((1 << width) - 1)) << np.uint64(offset)
    return word.astype(np.uint32)


def header_word(kind: PacketType | int, tile: int, aux: int = 0) -> int:
    return int(header_words(kind, tile, aux))


def header_fields(words: np.ndarray | int) -> dict[str, np.ndarray | int]:
    """{'type', 'tile', 'aux'} of header word(s)."""
    w = np.asarray(words, dtype=np.uint64) if not isinstance(words, int) else words
    return {name: (w >> offset) & mask for name, offset, mask in _HEADER_MASKS}


def _bytes_to_words(payload: np.ndarray) -> np.ndarray:
    """[N, k*4] bytes -> [N, k] little-endian uint32 words (a view of contiguous `payload`)."""
    payload = np.ascontiguousarray(payload).view(np.uint8)
    return payload.reshape(payload.shape[0], -1, BYTES_PER_BEAT).view("<u4")[..., 0]


def _words_to_bytes(words: np.ndarray) -> np.ndarray:
    """[N, k] uint32 words -> [N, k*4] uint8 bytes."""
    words = np.ascontiguousarray(words, dtype="<u4")
    return words.view(np.uint8).reshape(words.shape[0], -1)


def _with_headers(kind: PacketType, tile: int, aux: np.ndarray | int, payload: np.ndarray) -> np.ndarray:
    n = payload.shape[0]
    packets = np.empty((n, 1 + payload.shape[1]), dtype=np.uint32)
    packets[:, 0] = header_words(kind, tile, np.broadcast_to(np.asarray(aux, dtype=np.int64), (n,)))
    packets[:, 1:] = payload  # cast as astype(np.uint32) would, without a copy of its own
    return packets


def _check_shape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise ConfigError(f"{name} must have shape {shape}, not {array.shape}")


def _check_int_range(name: str, array: np.ndarray, lo: int, hi: int, dtype=np.int64) -> np.ndarray:
    """`array` as `dtype` (wide enough for [lo, hi]) once every element is an integer in [lo, hi]."""
    array = np.asarray(array)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ConfigError(f"{name} must hold integers in [{lo}, {hi}], not non-integer values")
    if array.size and (array.min() < lo or array.max() > hi):
        raise ConfigError(f"{name} must hold integers in [{lo}, {hi}], not values in "
                          f"[{array.min()}, {array.max()}]")
    return array.astype(dtype)


# ---- input packets --------------------------------------------------------------------------


def pack_activations(x: np.ndarray, geometry: Geometry, tile: int = 0) -> np.ndarray:
    """int8 inputs [N, rows] -> packets [N, 1 + rows/4] of uint32."""
    x = np.atleast_2d(np.asarray(x))
    _check_shape("activations", x, (x.shape[0], geometry.rows))
    if x.dtype != np.int8:  # int8 holds nothing else (two passes fewer over a large batch)
        x = _check_int_range("activations", x, -128, 127, np.int8)
    return _with_headers(PacketType.ACTIVATIONS, tile, 0, _bytes_to_words(x))


def unpack_activations(packets: np.ndarray) -> np.ndarray:
    return _words_to_bytes(packets[:, 1:]).view(np.int8)


def pack_program_data(plus: np.ndarray, minus: np.ndarray, geometry: Geometry, tile: int = 0,
                      signed: bool = False) -> np.ndarray:
    """One PROGRAM_DATA packet from per-column G+ and G- bytes (codes 0..255, or pulses -128..127
    when `signed`) -> [1, 1 + cols/2] uint32."""
    lo, hi = (-128, 127) if signed else (0, 255)
    plus = _check_int_range("G+ program codes", np.asarray(plus), lo, hi)
    minus = _check_int_range("G- program codes", np.asarray(minus), lo, hi)
    _check_shape("G+ program codes", plus, (geometry.cols,))
    _check_shape("G- program codes", minus, (geometry.cols,))
    interleaved = np.stack([plus, minus], axis=1).reshape(1, -1).astype(np.int64) & 0xFF
    return _with_headers(PacketType.PROGRAM_DATA, tile, 0, _bytes_to_words(interleaved.astype(np.uint8)))


def unpack_program_data(packet: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (G+ bytes, G- bytes) as uint8 [cols]."""
    b = _words_to_bytes(np.atleast_2d(packet)[:, 1:])[0]
    return b[0::2].copy(), b[1::2].copy()


def pack_ldpu_params(gain: np.ndarray, bias: np.ndarray, geometry: Geometry, tile: int = 0) -> np.ndarray:
    gain = _check_int_range("LDPU gain", np.asarray(gain), -(2**15), 2**15 - 1)
    bias = _check_int_range("LDPU bias", np.asarray(bias), -(2**31), 2**31 - 1)
    _check_shape("LDPU gain", gain, (geometry.cols,))
    _check_shape("LDPU bias", bias, (geometry.cols,))
    payload = np.stack([gain & 0xFFFF, bias & 0xFFFFFFFF], axis=1).reshape(1, -1)
    return _with_headers(PacketType.LDPU_PARAMS, tile, 0, payload)


def unpack_ldpu_params(packet: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (gain int64 [cols], bias int64 [cols]); gain's bits 31:16 are ignored."""
    p = np.atleast_2d(packet)[0, 1:].astype(np.int64)
    gain = p[0::2] & 0xFFFF
    gain = np.where(gain >= 2**15, gain - 2**16, gain)
    bias = p[1::2]
    bias = np.where(bias >= 2**31, bias - 2**32, bias)
    return gain, bias


# ---- output packets -------------------------------------------------------------------------


def pack_results(y: np.ndarray, tile: int, seq: np.ndarray) -> np.ndarray:
    """int8 outputs [N, cols] -> RESULT packets [N, 1 + cols/4]; aux = sequence numbers."""
    return _with_headers(PacketType.RESULT, tile, np.asarray(seq) & 0xFFFF,
                         _bytes_to_words(np.asarray(y).astype(np.int8, copy=False)))


def unpack_results(packets: np.ndarray) -> np.ndarray:
    return _words_to_bytes(np.atleast_2d(packets)[:, 1:]).view(np.int8)


def pack_verify(plus_counts: np.ndarray, minus_counts: np.ndarray, tile: int, row: int) -> np.ndarray:
    payload = (np.asarray(plus_counts, np.uint32) & 0xFFFF) | (np.asarray(minus_counts, np.uint32) << 16)
    return _with_headers(PacketType.VERIFY_DATA, tile, row, payload[None, :])


def unpack_verify(packet: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.atleast_2d(packet)[0, 1:].astype(np.int64)
    return p & 0xFFFF, p >> 16


def pack_calib(offsets: np.ndarray, tile: int, k: int) -> np.ndarray:
    o = np.asarray(offsets, np.uint32)
    payload = (o[0::2] & 0xFFFF) | (o[1::2] << 16)
    return _with_headers(PacketType.CALIB_DATA, tile, k, payload[None, :])


def unpack_calib(packet: np.ndarray) -> np.ndarray:
    p = np.atleast_2d(packet)[0, 1:].astype(np.int64)
    return np.stack([p & 0xFFFF, p >> 16], axis=1).reshape(-1)


def expected_length(kind: int, geometry: Geometry) -> int | None:
    """Total beats (header included) of a packet of raw type `kind`, None if the type is unknown."""
    try:
        return 1 + packet_payload_beats(PacketType(kind), geometry)
    except ValueError:
        return None
