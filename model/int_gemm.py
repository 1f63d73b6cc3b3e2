"""Exact integer matrix products on int8 digits through torch's int8 GEMM, when torch is
installed: the matmuls of large batches of windows (drive.py: the charge and the current bounds).

An integer matrix W is split once into balanced base-256 digits D_k in [-128, 127],
W = sum_k 256**k D_k (`Int8Matrix`). For an int8 left operand X, X @ W = sum_k 256**k (X @ D_k),
and each X @ D_k is an int32 accumulation of R terms |x d| <= 128 max|x|: exact while
R 128 max|x| < 2**31 (`Int8Matrix.exact_for`). Integer arithmetic has no rounding, so the
products equal the exact values numpy's float path computes, bit for bit - provided the kernel
accumulates exactly. oneDNN's int8 GEMM does on CPUs with VNNI or AMX; on CPUs without them
(AVX2 or plain AVX-512) it sums pairs of products in saturating 16-bit arithmetic and returns
wrong values (oneDNN, "Nuances of int8 computations"). So the import checks the kernel on
operands that saturate such a pairwise sum and on a random full-depth product against numpy's
int64 result (`_kernel_is_exact`), and any difference leaves every product on numpy's path
(tests/test_model_int_gemm.py runs that check with oneDNN limited to AVX2). Measured on this
project's machine (`torch._int_mm`, one thread, 1,000 x 256 @ 256 x 256): 0.15-0.2 ms per digit,
where numpy takes 0.87 ms in float32 and 2.0 ms in float64.

Torch is optional (the `torch` extra). Where it is missing, disabled (PCMHIL_INT_GEMM=0) or not
imported yet, callers take numpy's float path with the same results. It is imported (~1 s) on
the second large batch of a process or by `warm_up`, in the calling thread (`lazy`). The window
worker process imports it before it reports ready (`window_worker`).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from . import lazy

_ENV_SWITCH = "PCMHIL_INT_GEMM"
#: Digit base and the range of a balanced digit.
_BASE = 256
_DIGIT_MIN = -128
#: Left operands of at least this many rows take the int8 path: below, torch's per-call cost
#: (~20 us) exceeds what it saves.
MIN_ROWS = 64


def module():
    """torch, once imported and found exact here; else None (numpy's path)."""
    return _loader.loaded


def for_large_batch() -> None:
    """Count a batch of at least MIN_ROWS windows; on the process's second, import torch (once;
    this batch and all later ones then use it if it is there and exact)."""
    _loader.for_large_batch()


def warm_up() -> bool:
    """Import torch now (once; if installed and enabled) and check its kernel; whether the
    int8 path is available."""
    return _loader.warm_up()


def _import():
    """torch if it imports and its int8 GEMM is exact here, else None (`_loader`)."""
    try:
        import torch

        return torch if _kernel_is_exact(torch) else None
    except Exception:  # noqa: BLE001 - no torch, or one without the kernel: numpy's path
        return None


_loader = lazy.LazyLoad(_ENV_SWITCH, _import)


def _kernel_is_exact(torch) -> bool:
    """Whether torch's int8 GEMM returns the exact int32 products here: on the operands that
    make a 16-bit pairwise sum saturate (all 127 and -128 combinations, alternating along the
    depth, as the extremes of the digits and of the left operands) and on a random product of
    full depth, each against numpy's int64 result."""
    extremes = np.full((8, 64), -128, dtype=np.int8)
    extremes[1::2] = 127
    extremes[2::4, 1::2] = 127
    extremes[3::4, 1::3] = -128
    flipped = -(extremes.T.astype(np.int16) + 1)  # 127 <-> -128
    rng = np.random.default_rng(2**31 - 1)
    random = tuple(rng.integers(-128, 128, shape, dtype=np.int8) for shape in ((64, 256), (256, 48)))
    cases = [(extremes, extremes.T.copy()), (extremes, flipped.astype(np.int8)), random]
    for left, right in cases:
        product = torch._int_mm(torch.from_numpy(left), torch.from_numpy(np.ascontiguousarray(right)))
        if product.dtype != torch.int32 or not np.array_equal(product.numpy(), left.astype(np.int64) @ right):
            return False
    return True


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
        with _one_thread(torch):
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
        return out

    def digit_products(self, left: np.ndarray) -> np.ndarray:
        """The products of an int8 (M, rows) left operand with each digit, lowest first, as
        int32 (digits, M, cols): left @ W = sum_k 256**k [k], for a caller that combines them
        itself (`kernels`)."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(left))
        out = np.empty((len(self._digits), len(left), self.cols), dtype=np.int32)
        with _one_thread(torch):
            for k, digit in enumerate(self._digits):
                torch._int_mm(x, digit, out=torch.from_numpy(out[k]))
        return out


@contextmanager
def _one_thread(torch):
    """torch on one thread, as BLAS for the windows (drive.single_threaded_blas): torch's
    setting is the calling thread's (OpenMP), so it is set here, in whichever thread calls
    (~0.5 us)."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)
