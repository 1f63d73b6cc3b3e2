"""`bench_model`: the layout of its report and, in the slow tier, the issue's speed targets."""

from __future__ import annotations

import json

import pytest

from pcmhil.errors import ConfigError
from pcmhil.model import bench_model

KEYS = ["preset", "rows", "cols", "batch", "n_window_cycles", "read_mode", "window_worker", "int8_gemm",
        "compiled_kernels", "program_s", "time_event_s", "single_mvm_s", "batch_s", "batch_per_mvm_s",
        "matmul_dtype", "matmul_single_s", "matmul_batch_s", "single_ratio", "batch_ratio", "single_target_s",
        "batch_target_ratio", "meets_targets"]


def test_report_layout_and_progress():
    stages = []
    report = bench_model(rows=32, cols=16, batch=20, seed=1, progress=stages.append)
    assert list(report) == KEYS
    assert (report["rows"], report["cols"], report["batch"]) == (32, 16, 20)
    assert all(report[k] > 0 for k in KEYS if k.endswith("_s") or k.endswith("_ratio"))
    assert report["single_ratio"] == pytest.approx(report["single_mvm_s"] / report["matmul_single_s"])
    assert stages[0] == "programming" and stages[-1].startswith("batch of 20")
    json.dumps(report)


@pytest.mark.parametrize("kwargs, message", [
    ({"rows": 0}, r"rows must be an integer within \[1, 4096\], not 0"),
    ({"batch": 2.5}, r"batch must be an integer, not 2.5"),
    ({"seed": -1}, r"seed must be an integer within \[0, 18446744073709551615\], not -1"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        bench_model(**kwargs)


@pytest.mark.slow
def test_full_size_meets_the_issue_targets():
    """Issue 3: one 256 x 256 MVM <= 1 ms, a batch of 1,000 <= 50x a float64 matmul of it.
    Timing: slow tier only, and meaningful on an otherwise idle machine."""
    report = bench_model()
    assert report["single_mvm_s"] <= 1e-3, report
    assert report["batch_ratio"] <= 50, report
