"""The worker process that runs half of a large batch's windows (model/window_worker.py): the
counts are those of one thread whichever half runs where, and a worker that dies, hangs or
cannot start costs time only, never a wrong or missing count."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from test_model_perf_paths import bench_tile

from pcmhil.model import cco, kernels, window_worker
from pcmhil.model.cco import window_counts
from pcmhil.model.drive import single_threaded_blas


@pytest.fixture
def worker(monkeypatch):
    """A fresh worker of this test's own, ready, as the process's shared one; the per-pair
    loops on numpy's path in this process (with them compiled, batches split into threads,
    not into the worker: cco.CCO._halves)."""
    monkeypatch.delenv("PCMHIL_WINDOW_WORKER", raising=False)
    monkeypatch.setattr(kernels, "module", lambda: None)
    fresh = window_worker.WindowWorker()
    monkeypatch.setattr(window_worker, "_shared", fresh)
    assert fresh.ready(timeout_s=60), fresh.failure
    yield fresh
    fresh.close()


def drives(rows: int, seed: int):
    """Large batches of the twin's kinds: 1-phase (signed inputs, some rows idle in every
    window: a restricted matrix), and 4-phase (one-sign windows of G+ and G-)."""
    x = np.random.default_rng(seed).integers(-128, 128, (cco._PARALLEL_MIN_WINDOWS + 88, rows))
    x[:, -40:] = 0
    positive = np.where(x > 0, x, 0)
    return [(np.abs(x), np.where(x < 0, -1, 1), "differential"),
            (positive, np.ones_like(x), "plus"), (positive, np.ones_like(x), "minus")]


def one_thread(tile, d, s, select, ops):
    """The counts of the batch computed in this thread alone (no halves)."""
    crossbar = tile.crossbar
    w = crossbar.selected(select)
    rows = np.flatnonzero(d.any(axis=0))
    w, d, s = w.restricted(rows), d[:, rows], s[:, rows]
    transfer = crossbar.cco.transfer
    with single_threaded_blas():
        return window_counts(transfer, crossbar.cco._rng, w, d.astype(np.int16), s.astype(np.int8), 128, ops)


def test_batch_halves_in_the_worker_equal_one_thread(worker):
    tile = bench_tile()
    crossbar = tile.crossbar
    for k, (d, s, select) in enumerate(drives(crossbar.rows, 1)):
        ops = np.arange(len(d), dtype=np.uint64) + 1000 * k
        got = crossbar.cco.window_counts_batch(d, s, select, 128, ops)
        assert np.array_equal(got, one_thread(tile, d, s, select, ops)), select
    assert worker.jobs == 3 and worker.failure is None
    # a batch too small for two threads still has a half in the worker
    d, s, select = drives(crossbar.rows, 7)[0]
    d, s = d[:window_worker.MIN_WINDOWS + 5], s[:window_worker.MIN_WINDOWS + 5]
    ops = np.arange(len(d), dtype=np.uint64) + 5000
    assert len(d) < cco._PARALLEL_MIN_WINDOWS
    got = crossbar.cco.window_counts_batch(d, s, select, 128, ops)
    assert np.array_equal(got, one_thread(tile, d, s, select, ops))
    assert worker.jobs == 4
    # a second tile (another matrix, transfer and noise key) through the same worker
    other = bench_tile(seed=5)
    d, s, select = drives(other.crossbar.rows, 2)[0]
    ops = np.arange(len(d), dtype=np.uint64)
    got = other.crossbar.cco.window_counts_batch(d, s, select, 128, ops)
    assert np.array_equal(got, one_thread(other, d, s, select, ops))
    assert worker.jobs == 5


def test_more_matrices_than_the_worker_keeps(worker, monkeypatch):
    """The caller sends a matrix again once the worker has dropped it (both drop the least
    recently used alike)."""
    monkeypatch.setattr(window_worker, "_KEPT_MATRICES", 2)  # the caller's copy; the worker keeps 8
    tile = bench_tile()
    d, s, _ = drives(tile.crossbar.rows, 3)[0]
    for k in range(5):
        rows = np.arange(tile.crossbar.rows - 60 + 10 * (k % 3))  # other restricted matrices
        dk = np.where(np.isin(np.arange(d.shape[1]), rows), d, 0)
        ops = np.arange(len(d), dtype=np.uint64) + 10_000 * k
        got = tile.crossbar.cco.window_counts_batch(dk, s, "differential", 128, ops)
        assert np.array_equal(got, one_thread(tile, dk, s, "differential", ops))
    assert worker.jobs == 5 and worker.failure is None


def test_a_dead_worker_costs_time_not_counts(worker):
    tile = bench_tile()
    d, s, select = drives(tile.crossbar.rows, 4)[0]
    ops = np.arange(len(d), dtype=np.uint64)
    worker._process.kill()
    worker._process.wait()
    got = tile.crossbar.cco.window_counts_batch(d, s, select, 128, ops)
    assert np.array_equal(got, one_thread(tile, d, s, select, ops))
    assert worker.failure is not None and worker.jobs == 0
    assert window_worker.shared() is None  # later batches: two threads
    got = tile.crossbar.cco.window_counts_batch(d, s, select, 128, ops + 7)
    assert np.array_equal(got, one_thread(tile, d, s, select, ops + 7))


def test_a_worker_that_stops_answering_is_given_up_within_its_deadline(worker, monkeypatch):
    """A worker that hangs (here: stopped) is killed at the deadline; the caller's counts come
    out all the same."""
    monkeypatch.setattr(window_worker, "_TIMEOUT_MIN_S", 1.0)
    monkeypatch.setattr(window_worker, "_TIMEOUT_FACTOR", 0.0)
    tile = bench_tile()
    d, s, select = drives(tile.crossbar.rows, 5)[0]
    ops = np.arange(len(d), dtype=np.uint64)
    os.kill(worker._process.pid, signal.SIGSTOP)
    start = time.monotonic()
    got = tile.crossbar.cco.window_counts_batch(d, s, select, 128, ops)
    assert time.monotonic() - start < 10
    assert np.array_equal(got, one_thread(tile, d, s, select, ops))
    assert "deadline" in worker.failure and worker._process.returncode is not None  # killed, reaped


def test_a_worker_of_other_source_files_is_not_used(monkeypatch):
    """The worker imports the model's source files anew: if they are not those the caller runs
    (here: the caller's fingerprint changed), it is given up at its ready message."""
    monkeypatch.delenv("PCMHIL_WINDOW_WORKER", raising=False)
    monkeypatch.setattr(window_worker, "_FINGERPRINT", "not the files on disk")
    fresh = window_worker.WindowWorker()
    assert not fresh.ready(timeout_s=60)
    assert "other source files" in fresh.failure


def test_a_worker_error_is_answered_and_the_half_computed_here(worker, monkeypatch):
    """A request the worker cannot serve (here: a matrix it was told it has, but has not)."""
    tile = bench_tile()
    d, s, select = drives(tile.crossbar.rows, 6)[0]
    ops = np.arange(len(d), dtype=np.uint64)
    driven = np.flatnonzero(d.any(axis=0))
    token = window_worker.matrix_token(tile.crossbar.selected(select).restricted(driven))
    worker._kept[token] = None  # the caller believes the worker holds it: sends no matrix
    got = tile.crossbar.cco.window_counts_batch(d, s, select, 128, ops)
    assert np.array_equal(got, one_thread(tile, d, s, select, ops))
    assert "KeyError" in worker.failure


def test_the_worker_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("PCMHIL_WINDOW_WORKER", "0")
    assert window_worker.shared() is None and not window_worker.warm_up(1000)


def test_the_worker_starts_on_the_second_large_batch(monkeypatch):
    """A program that runs one large batch never starts it (nor waits for it at exit)."""
    monkeypatch.delenv("PCMHIL_WINDOW_WORKER", raising=False)
    monkeypatch.setattr(window_worker, "_shared", None)
    monkeypatch.setattr(window_worker, "_large_batches", 0)
    assert window_worker.for_large_batch() is None and window_worker._shared is None
    second = window_worker.for_large_batch()
    try:
        assert second is window_worker._shared and second is not None
        assert window_worker.for_large_batch() is second
    finally:
        second.close()


def test_a_forked_child_leaves_its_parents_worker_alone(worker):
    """After os.fork the child does without the parent's worker (its pipe ends become
    /dev/null) and computes its batches right; the parent's worker goes on serving."""
    tile = bench_tile()
    d, s, select = drives(tile.crossbar.rows, 8)[0]
    ops = np.arange(len(d), dtype=np.uint64)
    want = one_thread(tile, d, s, select, ops)
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if all held
        code = 1
        try:
            alone = window_worker._shared is None
            same = np.array_equal(tile.crossbar.cco.window_counts_batch(d, s, select, 128, ops), want)
            code = 0 if alone and same and worker.jobs == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert np.array_equal(tile.crossbar.cco.window_counts_batch(d, s, select, 128, ops), want)
    assert worker.jobs == 1 and worker.failure is None


def test_two_threads_waiting_for_a_starting_worker_both_return(monkeypatch):
    """Only one thread reads the ready message; another asking meanwhile hears "not ready"
    rather than blocking on the pipe (and so never takes half of a later answer)."""
    monkeypatch.delenv("PCMHIL_WINDOW_WORKER", raising=False)
    fresh = window_worker.WindowWorker()
    try:
        with ThreadPoolExecutor(2) as pool:
            answers = [f.result(timeout=60) for f in [pool.submit(fresh.ready, 30) for _ in range(2)]]
        assert True in answers and fresh.failure is None and fresh.ready()
    finally:
        fresh.close()
