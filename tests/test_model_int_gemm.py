"""model/int_gemm.py: exact integer products on int8 digits through torch's int8 GEMM.

The counts never depend on the path (tests/test_model_cco.py runs the window tests on both,
`window_path`); here the pieces: the digits, the products' exactness for every digit count and
output type, torch's thread setting, and the switch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pcmhil.model import int_gemm


@pytest.fixture
def torch():
    if not int_gemm.warm_up():
        pytest.skip("no int8 GEMM path here: torch (the `torch` extra) is not installed, or its kernel "
                    "is not exact on this CPU (model/int_gemm.py)")
    return int_gemm.module()


@pytest.mark.parametrize("bound", [1, 127, 128, 2**14, 2**31, 2**62])
def test_balanced_digits_rebuild_every_integer(bound):
    rng = np.random.default_rng(bound % 1009)
    w = rng.integers(-bound, bound, (40, 30), endpoint=True)
    w[0, :4] = [-bound, bound, 0, -1]
    digits = int_gemm.digits(w)
    assert all(d.dtype == np.int8 for d in digits)
    rebuilt = np.zeros(w.shape, dtype=object)
    for k, d in enumerate(digits):
        rebuilt += d.astype(object) * 256**k
    assert (rebuilt == w.astype(object)).all()
    assert len(digits) == max(1, len(int_gemm.digits(np.array([bound])))) and len(digits) <= 8


@pytest.mark.parametrize("bound", [100, 2**14, 2**30])
def test_products_are_exact_for_every_digit_count_and_output_type(torch, bound):
    rng = np.random.default_rng(bound % 997)
    rows, cols = 300, 70
    w = rng.integers(-bound, bound, (rows, cols), endpoint=True)
    left = rng.integers(-128, 128, (90, rows)).astype(np.int8)
    left[0] = -128  # the extremes of both operands in one product
    w[:, 0] = -bound
    matrix = int_gemm.Int8Matrix(torch, w)
    assert matrix.exact_for(128)
    exact = left.astype(np.int64) @ w
    assert np.array_equal(matrix.product(left), exact)
    assert np.array_equal(matrix.product(left, np.float64), exact.astype(np.float64))
    out = np.full((90, cols), 7.0)
    assert matrix.product(left, out=out) is out and np.array_equal(out, exact)
    if bound <= 2**14:  # |exact| < 2**31: int32 allowed
        product = matrix.product(left, np.int32)
        assert product.dtype == np.int32 and np.array_equal(product, exact)


def test_int32_accumulation_bound_is_checked(torch):
    matrix = int_gemm.Int8Matrix(torch, np.ones((2**17, 1), dtype=np.int64))
    assert matrix.exact_for(127) and not matrix.exact_for(128)  # 2**17 x 128 x 128 = 2**31


def test_products_leave_torch_threads_as_they_were(torch):
    before = torch.get_num_threads()
    matrix = int_gemm.Int8Matrix(torch, np.arange(12).reshape(4, 3))
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            assert np.array_equal(matrix.product(np.ones((5, 4), np.int8)), np.full((5, 3), [18, 22, 26]))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_the_switch_turns_the_int8_path_off():
    code = ("from pcmhil.model import int_gemm; import sys; "
            "print(int_gemm.warm_up(), int_gemm.module(), 'torch' in sys.modules)")
    env = dict(os.environ, PCMHIL_INT_GEMM="0")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "None", "False"]


@pytest.mark.parametrize("drive", ["1-phase int8", "one polarity to 128", "both signs to 128", "long window"])
def test_charge_takes_the_int8_path_exactly_where_the_signed_durations_fit(torch, monkeypatch, drive):
    """integrated_charge: d s in [-128, 127] (1-phase windows of int8 inputs) or its negative
    (4-phase windows: durations up to 128, one polarity) on the int8 path, anything else (both
    +128 and -128, or windows longer than 128 cycles) on the float64 path; exact either way."""
    from pcmhil.model.drive import SelectedConductance, integrated_charge

    monkeypatch.setattr(int_gemm, "MIN_ROWS", 1)
    calls = []
    product = int_gemm.Int8Matrix.product

    def counted(self, *args, **kwargs):
        calls.append(1)
        return product(self, *args, **kwargs)

    monkeypatch.setattr(int_gemm.Int8Matrix, "product", counted)
    rng = np.random.default_rng(len(drive))
    w_int = rng.integers(-20_000, 20_000, (64, 24))
    x = rng.integers(-128, 128, (40, 64))
    d, s = np.abs(x), np.where(x < 0, -1, 1)
    if drive == "one polarity to 128":
        d, s = rng.integers(0, 129, (40, 64)), np.ones((40, 64), dtype=np.int64)
        d[0, 0] = 128
    elif drive == "both signs to 128":
        d[0, :2], s[0, :2] = 128, [1, -1]
    elif drive == "long window":
        d = rng.integers(0, 1001, (40, 64))
    charge = integrated_charge(SelectedConductance.of(w_int), d.astype(np.int16), s.astype(np.int8))
    assert np.array_equal(charge, (d * s) @ w_int)
    assert bool(calls) == (drive in ("1-phase int8", "one polarity to 128"))


def _in_subprocess(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_a_kernel_that_is_not_exact_is_not_used(torch):
    """oneDNN's int8 GEMM without VNNI (here: limited to AVX2) sums pairs of products in
    saturating 16-bit arithmetic: the import's check must find that out and keep numpy's path.
    In each process, whether the path is on must agree with a direct test of the kernel on a
    product whose pairs saturate 16 bits."""
    import platform

    code = ("import numpy as np, torch; from pcmhil.model import int_gemm; "
            "a = np.full((17, 64), 127, np.int8); b = np.full((64, 16), 127, np.int8); "
            "exact = np.array_equal(torch._int_mm(torch.from_numpy(a), torch.from_numpy(b)).numpy(), "
            "a.astype(np.int64) @ b); print(exact, int_gemm.warm_up())")
    exact, used = _in_subprocess(code, ONEDNN_MAX_CPU_ISA="AVX2")
    assert used == exact
    if platform.machine() in ("x86_64", "AMD64"):  # oneDNN's x86 kernel saturates without VNNI
        assert (exact, used) == ("False", "False")
    exact, used = _in_subprocess(code)
    assert used == exact


def test_torch_is_imported_on_the_second_large_batch(torch):
    """No import for a program with one large batch (e.g. `pcmhil mvm`); on the second, in the
    calling thread, so that a process forked afterwards can use torch too."""
    code = ("import os, sys; from pcmhil.model import int_gemm; "
            "int_gemm.for_large_batch(); print('torch' in sys.modules, int_gemm.module() is None); "
            "int_gemm.for_large_batch(); print(int_gemm.module() is not None); pid = os.fork()\n"
            "if pid == 0:\n"
            "    import torch; os._exit(0 if torch.ones(1).item() == 1 else 3)\n"
            "print(os.waitpid(pid, 0)[1] == 0)")
    assert _in_subprocess(code) == ["False", "True", "True", "True"]
