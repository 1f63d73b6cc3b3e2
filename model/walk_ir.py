"""The walk's additions (`kernels.walk_extremes`) with each block of columns' sums held in vector
registers across a window's rows: LLVM IR, compiled by llvmlite (numba's own LLVM) for this CPU.

Numba's loop over all columns per row loads and stores every column's sum at each row (its sums
live in an array); here a block of V columns (V = 128, then 16, then 1 for the rest) keeps its
V sums and their running maxima in registers over the whole window: per row and block one load
of the V int8 terms, a sign extension, an add, and an unsigned maximum, taken where the row
ends a run of equal durations (past the quiet rows) and of 0 elsewhere (a mask, no branch).
`highest` then holds what the numba kernel computes before comparing with span. The rows come
sorted as the numba kernel sorts them (`kernels._sorted_rows`, all windows first).

Measured at 256 x 256 (500 windows of uniform weights and 8-bit drives, one thread, ad hoc,
interleaved): the walk with its sort 0.61-0.66 of the numba kernel's time with 512-bit vectors
(LLVM otherwise prefers 256 on this Xeon: ~0.7). uint16 sums only (up to 258 rows of int8
terms, `kernels.walk_limits`); wider sums keep the numba kernel.
"""

from __future__ import annotations

import ctypes
import platform

import numpy as np

#: Block widths, widest first: each block of columns is walked by the widest that fits.
WIDTHS = (128, 16, 1)

_IR = r"""
declare <{V} x i16> @llvm.umax.v{V}i16(<{V} x i16>, <{V} x i16>)

; highest[b, j] for j in [j_begin, j_end) (a multiple of {V} columns) of every window b:
; the unsigned maximum of the wrapping 16-bit sums bias[j] + table[order[b, 0], j] + ...,
; taken after the rows q >= quiet that end a run (durations[b, q] != durations[b, q + 1]),
; starting from bias[j] if the window has cycles with no row on (n_window_cycles >
; durations[b, 0]), else from 0. table: int8 (rows, cols) row-major; order, durations: i64
; (windows, stride), durations[b, counts[b]] = 0; highest: u16 (windows, cols).
define void @walk_{V}(ptr noalias nocapture readonly %table, i64 %cols, i64 %j_begin, i64 %j_end,
                     i64 %windows, ptr noalias nocapture readonly %order,
                     ptr noalias nocapture readonly %durations, i64 %stride,
                     ptr noalias nocapture readonly %counts, i64 %quiet, i64 %ncyc,
                     ptr noalias nocapture readonly %bias, ptr noalias nocapture %highest) {{
entry:
  %any = icmp sgt i64 %windows, 0
  %jany = icmp slt i64 %j_begin, %j_end
  %go = and i1 %any, %jany
  br i1 %go, label %window, label %exit
window:
  %b = phi i64 [0, %entry], [%b1, %window_end]
  %count_p = getelementptr i64, ptr %counts, i64 %b
  %count = load i64, ptr %count_p
  %row_offset = mul i64 %b, %stride
  %order_b = getelementptr i64, ptr %order, i64 %row_offset
  %durations_b = getelementptr i64, ptr %durations, i64 %row_offset
  %longest = load i64, ptr %durations_b
  %idle = icmp sgt i64 %ncyc, %longest
  %out_offset = mul i64 %b, %cols
  %highest_b = getelementptr i16, ptr %highest, i64 %out_offset
  br label %block
block:
  %j = phi i64 [%j_begin, %window], [%j1, %block_end]
  %bias_p = getelementptr i16, ptr %bias, i64 %j
  %start = load <{V} x i16>, ptr %bias_p, align 2
  %h0 = select i1 %idle, <{V} x i16> %start, <{V} x i16> zeroinitializer
  %table_j = getelementptr i8, ptr %table, i64 %j
  %rows_on = icmp sgt i64 %count, 0
  br i1 %rows_on, label %row, label %block_end
row:
  %q = phi i64 [0, %block], [%q1, %row]
  %sum = phi <{V} x i16> [%start, %block], [%sum1, %row]
  %high = phi <{V} x i16> [%h0, %block], [%high1, %row]
  %order_p = getelementptr i64, ptr %order_b, i64 %q
  %r = load i64, ptr %order_p
  %term_offset = mul i64 %r, %cols
  %terms_p = getelementptr i8, ptr %table_j, i64 %term_offset
  %terms = load <{V} x i8>, ptr %terms_p, align 1
  %wide = sext <{V} x i8> %terms to <{V} x i16>
  %sum1 = add <{V} x i16> %sum, %wide
  %q1 = add i64 %q, 1
  %dq_p = getelementptr i64, ptr %durations_b, i64 %q
  %dq = load i64, ptr %dq_p
  %dn_p = getelementptr i64, ptr %durations_b, i64 %q1
  %dn = load i64, ptr %dn_p
  %run_end = icmp ne i64 %dq, %dn
  %past_quiet = icmp sge i64 %q, %quiet
  %take = and i1 %run_end, %past_quiet
  %mask1 = sext i1 %take to i16
  %mask0 = insertelement <{V} x i16> poison, i16 %mask1, i64 0
  %mask = shufflevector <{V} x i16> %mask0, <{V} x i16> poison, <{V} x i32> zeroinitializer
  %taken = and <{V} x i16> %sum1, %mask
  %high1 = call <{V} x i16> @llvm.umax.v{V}i16(<{V} x i16> %high, <{V} x i16> %taken)
  %more = icmp slt i64 %q1, %count
  br i1 %more, label %row, label %block_end
block_end:
  %h_final = phi <{V} x i16> [%h0, %block], [%high1, %row]
  %out_p = getelementptr i16, ptr %highest_b, i64 %j
  store <{V} x i16> %h_final, ptr %out_p, align 2
  %j1 = add i64 %j, {V}
  %more_blocks = icmp slt i64 %j1, %j_end
  br i1 %more_blocks, label %block, label %window_end
window_end:
  %b1 = add i64 %b, 1
  %more_windows = icmp slt i64 %b1, %windows
  br i1 %more_windows, label %window, label %exit
exit:
  ret void
}}
"""

_POINTER, _INT = ctypes.c_void_p, ctypes.c_int64
_SIGNATURE = ctypes.CFUNCTYPE(None, _POINTER, _INT, _INT, _INT, _INT, _POINTER, _POINTER, _INT, _POINTER,
                              _INT, _INT, _POINTER, _POINTER)


class BlockWalk:
    """The compiled blocks (`load`); `highest` runs them over a batch of sorted windows."""

    def __init__(self, engine, functions: dict[int, object]):
        self._engine = engine  # owns the machine code: kept as long as the functions
        self._functions = functions

    def highest(self, table: np.ndarray, order: np.ndarray, durations: np.ndarray, counts: np.ndarray,
                quiet: int, n_window_cycles: int, bias: np.ndarray, out: np.ndarray) -> None:
        """out (windows, cols) uint16: each column's highest offset sum over each window's
        cycles, as the module doc says. table int8 (rows, cols), order and durations int64
        (windows, stride), counts int64 (windows,), bias uint16 (cols,): all C-contiguous (the
        caller's arrays, held while the call runs; it releases the GIL), order holding row
        indices of table (`kernels._sort_windows`), counts[b] < stride."""
        windows, cols = out.shape
        if not (table.dtype == np.int8 and bias.dtype == np.uint16 and out.dtype == np.uint16
                and order.dtype == durations.dtype == counts.dtype == np.int64
                and table.ndim == order.ndim == 2 and table.shape[1] == cols and bias.shape == (cols,)
                and order.shape == durations.shape and order.shape[0] == windows == len(counts)
                and all(a.flags.c_contiguous for a in (table, order, durations, counts, bias, out))):
            raise ValueError("BlockWalk.highest: operands of the wrong type, shape or layout")
        if windows and (counts.min() < 0 or counts.max() >= order.shape[1]):  # it reads durations[b, count]
            raise ValueError(f"BlockWalk.highest: row counts must lie in [0, {order.shape[1] - 1}]")
        begin = 0
        for width in WIDTHS:
            end = begin + (cols - begin) // width * width
            if end > begin:
                self._functions[width](table.ctypes.data, cols, begin, end, windows, order.ctypes.data,
                                       durations.ctypes.data, order.shape[1], counts.ctypes.data, int(quiet),
                                       int(n_window_cycles), bias.ctypes.data, out.ctypes.data)
            begin = end


def load() -> BlockWalk | None:
    """The blocks compiled for this CPU (~0.1 s), or None where llvmlite cannot (the caller keeps
    numba's kernel)."""
    try:
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        module = llvm.parse_assembly("\n".join(_IR.format(V=width) for width in WIDTHS))
        module.verify()
        features = llvm.get_host_cpu_features().flatten()
        if platform.machine().lower() in ("x86_64", "amd64") and "+avx512bw" in features.split(","):
            features += ",-prefer-256-bit"  # 512-bit vectors where the CPU has them (module doc)
        machine = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=features, opt=3, codemodel="jitdefault")
        builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
        builder.getModulePassManager().run(module, builder)
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        functions = {width: _SIGNATURE(engine.get_function_address(f"walk_{width}")) for width in WIDTHS}
    except Exception:  # noqa: BLE001 - an llvmlite that cannot: numba's kernel
        return None
    return BlockWalk(engine, functions)
