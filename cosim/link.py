"""The host <-> simulation link: length-prefixed pickled messages over a Unix socket.

Both ends are pcmhil's own code (the socket is created by the host, in a private directory),
so pickle is safe here and carries numpy arrays without extra code.
"""

from __future__ import annotations

import pickle
import socket
import struct

_LENGTH = struct.Struct("<Q")


class LinkClosed(ConnectionError):
    """The other end went away (process died or closed the socket)."""


def send_message(sock: socket.socket, message) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        sock.sendall(_LENGTH.pack(len(payload)) + payload)
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise LinkClosed(str(exc)) from exc


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        try:
            chunk = sock.recv(min(remaining, 1 << 20))
        except ConnectionResetError as exc:
            raise LinkClosed(str(exc)) from exc
        if not chunk:
            raise LinkClosed("end of connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket):
    (size,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    return pickle.loads(_recv_exact(sock, size))
