"""Exact integer matrix products on int8 digits through torch's int8 GEMM, when torch is
installed: the matmuls of large batches of windows (drive.py: the charge and the current bounds).

An integer matrix W is split once into balanced base-256 digits D_k in [-128, 127],
W = sum_k 256**k D_k (`Int8Matrix`). For an int8 left operand X, X @ W = sum_k 256**k (X @ D_k),
and each X @ D_k is an int32 accumulation of R terms |x d| <= 128 max|x|: exact while
R 128 max|x| < 2**31 (`Int8Matrix.exact_for`). Integer arithmetic has no rounding, so the
products equal the exact values numpy's float path computes, bit for bit, whatever kernel torch
picks on whatever CPU (AMX, VNNI or a plain loop). Measured on this project's machine
(`torch._int_mm`, one thread, 1,000 x 256 @ 256 x 256): 0.15-0.2 ms per digit, where numpy
takes 0.87 ms in float32 and 2.0 ms in float64.

Torch is optional (the `torch` extra). Where it is missing, disabled (PCMHIL_INT_GEMM=0) or not
imported yet, callers take numpy's float path with the same results. It is imported in a
background thread on the first request (`module`), so that no batch waits ~1 s for it: batches
use it once the import has finished (`warm_up` waits for it, e.g. before a benchmark). The
window worker process imports it before it reports ready (`window_worker`).
"""

from __future__ import annotations

import os
import threading

import numpy as np

_ENV_SWITCH = "PCMHIL_INT_GEMM"
#: Digit base and the range of a balanced digit.
_BASE = 256
_DIGIT_MIN, _DIGIT_MAX = -128, 127
#: Left operands of at least this many rows take the int8 path: below, torch's per-call cost
#: (~20 us) exceeds what it saves.
MIN_ROWS = 64

_lock = threading.Lock()
_state = {"torch": None, "import": None}


def module(start: bool = True):
    """torch, once imported and usable here; else None (start: begin the import in the
    background if it has not begun; the caller goes on with numpy meanwhile)."""
    torch = _state["torch"]
    if torch is not None or not start:
        return torch
    with _lock:
        if _state["import"] is None and os.environ.get(_ENV_SWITCH, "1") != "0":
            thread = threading.Thread(target=_import, name="pcmhil-int-gemm-import", daemon=True)
            _state["import"] = thread
            thread.start()
    return _state["torch"]


def warm_up(timeout_s: float = 30.0) -> bool:
    """Import torch now (if installed and enabled) and wait for it; whether the int8 path is
    available."""
    module()
    thread = _state["import"]
    if isinstance(thread, threading.Thread):
        thread.join(timeout_s)
    return _state["torch"] is not None


def _import() -> None:
    try:
        import torch

        # an int8 GEMM with int32 results (CPU since torch 2.2); checked once on small operands
        probe = torch._int_mm(torch.ones((17, 8), dtype=torch.int8), torch.ones((8, 8), dtype=torch.int8))
        if probe.dtype != torch.int32 or int(probe[0, 0]) != 8:
            return
    except Exception:  # noqa: BLE001 - no torch, or one without the kernel: numpy's path
        return
    _state["torch"] = torch


def _forget_import_in_child() -> None:
    """A forked child of a process whose import was still running must not import torch (the
    import's locks may be held by the thread the fork left behind): it stays on numpy."""
    if _state["torch"] is None and _state["import"] is not None:
        _state["import"] = False  # as if started: never imported here


os.register_at_fork(after_in_child=_forget_import_in_child)


def digits(w_int: np.ndarray) -> list[np.ndarray]:
    """The balanced base-256 digits of an integer matrix, lowest first, as int8 arrays (at least
    one): w_int = sum_k 256**k digits[k]."""
    rest = w_int.astype(np.int64)
    out = []
    while True:
        low = (rest - _DIGIT_MIN) % _BASE + _DIGIT_MIN
        out.append(low.astype(np.int8))
        rest = (rest - low) // _BASE
        if not rest.any():
            return out


class Int8Matrix:
    """An integer matrix (rows, cols) as torch int8 digit tensors, for `product`."""

    def __init__(self, torch, w_int: np.ndarray):
        self.rows, self.cols = w_int.shape
        self._torch = torch
        self._digits = [torch.from_numpy(np.ascontiguousarray(digit)) for digit in digits(w_int)]

    def exact_for(self, left_abs_max: int) -> bool:
        """Whether products with left operands of |x| <= left_abs_max accumulate exactly in int32."""
        return self.rows * max(left_abs_max, 1) * -_DIGIT_MIN < 2**31

    def product(self, left: np.ndarray, dtype: type = np.int64, out: np.ndarray | None = None) -> np.ndarray:
        """left @ W, exact, for an int8 (M, rows) left operand (`exact_for` its values), into
        `out` or a new array of dtype: int64, or int32 / float64 where the caller knows that
        every value, and R 128 max|x| more, fits."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(left))
        top = len(self._digits) - 1
        # one thread, as BLAS for the windows (drive.single_threaded_blas): torch's setting is
        # the calling thread's (OpenMP), so it is set here, in whichever thread calls (~0.5 us)
        threads = torch.get_num_threads()
        if threads != 1:
            torch.set_num_threads(1)
        try:
            for k in range(top, -1, -1):  # Horner: ((X D_top) 256 + X D_top-1) 256 + ...
                part = torch._int_mm(x, self._digits[k]).numpy()
                if k == top:
                    if out is None:  # torch's int32 result is this call's own: kept where it may be
                        out = part if dtype == np.int32 else part.astype(dtype)
                    else:
                        np.copyto(out, part, casting="unsafe")
                else:
                    out *= _BASE
                    out += part
        finally:
            if threads != 1:
                torch.set_num_threads(threads)
        return out
