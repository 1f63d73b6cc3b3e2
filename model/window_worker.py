"""A second process for the windows of large batches: part of a batch's windows run there while
the calling thread runs the rest (`CCO._halves`), where the windows' per-pair loops run on
numpy's path (no numba, or `PCMHIL_JIT=0`: `kernels`). With them compiled, a window makes few
numpy calls, and two threads of the caller beat this process's pipes (`CCO._halves`).

Why a process. Every window's count depends on that window alone, so the halves of a batch can
run at once, and numpy and BLAS release the GIL inside their loops. But in two threads of one
process each numpy call returns to a GIL the other thread may hold, and each hand-over costs a
context switch, dear when the host is busy. Measured on this project's 2-core machine, 1,000
windows at 256 x 256 with the benchmark's uniform weights: busy, one thread 25.7 ms, two threads
19.6 ms, two processes 14.7 ms; quiet, two threads and two processes alike (~15 ms of ~24).

How. The worker is `python -P -c` this module's `main` (a plain child process on pipes, not
multiprocessing: nothing of the caller's __main__ is re-imported), started on the second large
batch of a process (`for_large_batch`) without waiting for it: until it reports ready, batches
run as they do without it (`CCO._halves`). Messages are pickles framed by their length, moved
with non-blocking reads and writes against a deadline. A request holds the drive, the operation
indices and what the counts depend on besides: the integer conductance matrix (sent once per
`SelectedConductance`; both sides keep the last few, dropping the least recently used alike),
the CCO transfer and the (seed, tile) of the keyed noise. The worker computes `window_counts`,
the same function as the caller, so the counts are bit-identical whichever half runs where; it
runs the same source: it starts only if the fingerprint of the model's source files it imported
equals the caller's.

Failures never change a result: if the worker cannot start, dies, answers an error or not
within its deadline (`_TIMEOUT_*`), or an exchange is interrupted (e.g. KeyboardInterrupt,
re-raised), the worker is killed and given up, the caller computes that half itself and later
batches run without it (`PCMHIL_WINDOW_WORKER=0`: never started). The worker exits when its
input closes (the caller's exit, `close`), ignores SIGINT (the caller decides) and runs BLAS on
one thread. It is not started where this process may use only one CPU.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

#: Batches of at least this many windows have a part in the worker: its pipes cost ~0.1 ms
#: + ~0.4 ms per 500 windows at 256 x 256, where one window costs 12-26 us.
MIN_WINDOWS = 128
#: Conductance matrices both sides keep (a tile's differential select and its restriction to a
#: layer's rows, 4-phase plus and minus, ...), least recently used first out.
_KEPT_MATRICES = 8
#: The worker's half may take this much longer than the caller's before it is given up; the
#: deadline of every other exchange (start-up, sending a request).
_TIMEOUT_FACTOR, _TIMEOUT_MIN_S = 20.0, 30.0
#: Pipe buffer asked for (Linux F_SETPIPE_SZ; up to /proc/sys/fs/pipe-max-size, 1 MiB by
#: default): a request or a reply of a few hundred kB then moves in a few writes.
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031
_ENV_SWITCH = "PCMHIL_WINDOW_WORKER"
#: The worker's program (not `-m` on this module, which the package has imported already).
_ENTRY = "from pcmhil.model.window_worker import main; main()"
#: Frame header: the pickle's length.
_HEADER = struct.Struct("<Q")


def _source_fingerprint() -> str:
    """SHA-256 of the model package's source files (names and contents) as this process has
    them when it imports this module (with the rest of the package)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


_FINGERPRINT = _source_fingerprint()
_tokens = itertools.count(1)


def matrix_token(w) -> int:
    """A number that names the conductance matrix `w` (a SelectedConductance) for its life."""
    return w._derived.setdefault("worker_token", next(_tokens))


class WorkerError(RuntimeError):
    """An exchange with the worker failed (the caller goes on without it)."""


class WindowWorker:
    """The caller's handle on the worker process (one per process, `shared`)."""

    def __init__(self):
        # the caller's modules (its sys.path, e.g. a source checkout on PYTHONPATH; -P: not the
        # current directory first), BLAS on one thread
        path = os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)
        env = dict(os.environ, PYTHONPATH=path, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        self._process = subprocess.Popen([sys.executable, "-P", "-c", _ENTRY], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=env)
        self._to, self._from = self._process.stdin.fileno(), self._process.stdout.fileno()
        for fd in (self._to, self._from):
            _widen(fd)
            os.set_blocking(fd, False)
        self._started = time.monotonic()
        self._lock = threading.Lock()  # one exchange at a time: a request and its answer
        self._ready = False
        self._kept: OrderedDict[int, None] = OrderedDict()  # tokens the worker holds, as it does
        self._requests = 0
        self.failure: str | None = None
        self.jobs = 0  # batch halves answered

    # ---- state -------------------------------------------------------------------------------

    def ready(self, timeout_s: float = 0.0) -> bool:
        """Whether the worker can take a request now (reads its ready message if it comes
        within timeout_s; False while another thread exchanges with it)."""
        if self._ready or self.failure:
            return self._ready and not self.failure
        if not self._lock.acquire(blocking=False):
            return False
        try:
            with self._exchange("the worker did not start"):
                if not self._ready and _wait(self._from, select.POLLIN, timeout_s):
                    deadline = self._started + _TIMEOUT_MIN_S
                    reply = self._receive(max(deadline, time.monotonic() + 1.0))
                    if reply != ("ready", _FINGERPRINT):
                        raise WorkerError(f"the worker runs other source files: {reply!r}")
                    self._ready = True
        finally:
            self._lock.release()
        return self._ready and not self.failure

    def close(self, wait_s: float = 2.0) -> None:
        """Stop the worker: it exits on end of input (also while it still starts, at its first
        read); killed if it has not within wait_s."""
        process = self._process
        try:
            process.stdin.close()
            process.wait(timeout=wait_s)
        except Exception:  # noqa: BLE001 - closing is best effort
            process.kill()
            process.wait()
        finally:
            process.stdout.close()

    # ---- one batch half ----------------------------------------------------------------------

    def start(self, transfer, rng, w, d: np.ndarray, s: np.ndarray, n: int, ops: np.ndarray) -> bool:
        """Send the windows (d, s) for `window_counts`, whose counts `finish` then reads; False
        if the worker is not ready, busy or broken (the caller computes them itself)."""
        if not self.ready() or not self._lock.acquire(blocking=False):
            return False
        sent = False
        try:
            with self._exchange("sending to the worker failed"):
                token = matrix_token(w)
                fresh = token not in self._kept
                self._kept[token] = None
                self._kept.move_to_end(token)
                if len(self._kept) > _KEPT_MATRICES:
                    self._kept.popitem(last=False)
                self._requests += 1
                transfer_fields = (transfer.gain, transfer.offset, transfer.fmax, transfer.knee,
                                   transfer.output_noise_pulses)
                request = (self._requests, token, w.w_int if fresh else None, transfer_fields,
                           (rng.seed, rng.tile), d, s, n, ops)
                self._send(request, time.monotonic() + _TIMEOUT_MIN_S)
                sent = True
        finally:
            if not sent:
                self._lock.release()
        return sent

    def finish(self, caller_s: float, out: np.ndarray) -> bool:
        """The counts of the request `start` sent into out (int64); False if the worker failed
        (and is given up). caller_s: how long the caller's own half took, which scales the
        deadline."""
        answered = False
        try:
            with self._exchange("the worker's answer failed"):
                number, kind, value = self._receive(time.monotonic() + max(_TIMEOUT_MIN_S,
                                                                             _TIMEOUT_FACTOR * caller_s))
                if number != self._requests:
                    raise WorkerError(f"answer {number} to request {self._requests}")
                if kind != "ok":
                    raise WorkerError(f"the worker failed: {value}")
                if value.shape != out.shape:
                    raise WorkerError(f"counts of shape {value.shape} for {out.shape}")
                out[...] = value
                answered = True
                self.jobs += 1
        finally:
            self._lock.release()
        return answered

    # ---- the pipes ---------------------------------------------------------------------------

    def _send(self, message, deadline: float) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            if not _wait(self._to, select.POLLOUT, deadline - time.monotonic()):
                raise WorkerError("the worker takes no input")
            try:
                view = view[os.write(self._to, view):]
            except BlockingIOError:
                continue

    def _receive(self, deadline: float):
        (length,) = _HEADER.unpack(self._read(_HEADER.size, deadline))
        return pickle.loads(self._read(length, deadline))

    def _read(self, size: int, deadline: float) -> bytearray:
        data = bytearray()
        while len(data) < size:
            if not _wait(self._from, select.POLLIN, deadline - time.monotonic()):
                raise WorkerError(f"no answer within the deadline ({len(data)} of {size} bytes)")
            try:
                chunk = os.read(self._from, size - len(data))
            except BlockingIOError:
                continue
            if not chunk:
                raise WorkerError(f"the worker's output ended ({len(data)} of {size} bytes)")
            data += chunk
        return data

    @contextmanager
    def _exchange(self, what: str):
        """Around every use of the pipes: an exception gives the worker up (the caller goes on
        without it), and so does an interruption (e.g. KeyboardInterrupt, re-raised), which may
        leave a message half sent or half read."""
        done = False
        try:
            yield
            done = True
        except Exception as error:  # noqa: BLE001 - any failure: on without the worker
            self._fail(f"{what}: {error!r}")
            done = True
        finally:
            if not done:
                self._fail(f"{what}: interrupted")

    def _fail(self, why: str) -> None:
        self.failure = why
        self._process.kill()
        self._process.wait()  # no zombie (quick after SIGKILL)
        for pipe in (self._process.stdin, self._process.stdout):
            try:
                pipe.close()
            except OSError:
                pass  # unflushed input of a dead process


def _wait(fd: int, event: int, timeout_s: float) -> bool:
    """Whether fd is ready for `event` (select.POLLIN / POLLOUT, or has hung up: the read or
    write then says how) within timeout_s."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(max(timeout_s, 0.0) * 1000))


def _widen(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, OSError):
        pass  # a smaller pipe only means more writes


_shared: WindowWorker | None = None
_shared_lock = threading.Lock()
_large_batches = 0


def shared(start: bool = True) -> WindowWorker | None:
    """The process's worker, started on the first call (start=False: only if it exists);
    None where disabled (PCMHIL_WINDOW_WORKER=0), with one usable CPU, or after it failed."""
    global _shared
    if os.environ.get(_ENV_SWITCH, "1") == "0" or _usable_cpus() < 2:
        return None
    with _shared_lock:
        if _shared is None and start:
            try:
                _shared = WindowWorker()
            except Exception:  # noqa: BLE001 - no worker: the caller does without
                return None
        if _shared is not None and _shared.failure:
            return None
        return _shared


def for_large_batch() -> WindowWorker | None:
    """The worker for a large batch: started from the second large batch of the process on
    (`shared`), so that a program that runs one batch (e.g. `pcmhil mvm`) does not pay for a
    process it will not use (~0.2 s of the other core while it starts)."""
    global _large_batches
    _large_batches += 1
    return shared(start=_large_batches >= 2)


def warm_up(windows: int, timeout_s: float = 10.0) -> bool:
    """For batches of `windows` windows about to be timed: start the worker now and wait until
    it is ready (otherwise the first large batches run without it while it starts), if such
    batches use it at all; whether they do."""
    if windows < MIN_WINDOWS:
        return False
    worker = shared()
    return worker is not None and worker.ready(timeout_s)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _forget_in_child() -> None:
    """A forked child must not talk to its parent's worker (it starts its own when needed), nor
    keep the worker's input open after the parent closes it: its copies of the pipe ends become
    /dev/null (the old objects may still close those numbers harmlessly), and it gets a lock
    of its own (the parent's may have been held by another thread at the fork)."""
    global _shared, _shared_lock
    if _shared is not None:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (_shared._to, _shared._from):
            try:
                os.dup2(devnull, fd)
            except OSError:
                pass
        os.close(devnull)
    _shared, _shared_lock = None, threading.Lock()


def _close_at_exit() -> None:
    if _shared is not None and not _shared.failure:
        _shared.close(wait_s=0.5)


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(_close_at_exit)


# ---- the worker's side ---------------------------------------------------------------------


def _serve(requests, replies) -> None:
    """Answer framed requests until end of input."""
    from . import int_gemm, kernels
    from .cco import CcoTransfer, window_counts
    from .drive import SelectedConductance, single_threaded_blas
    from .keyed_rng import KeyedRng

    def reply(message) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        replies.write(_HEADER.pack(len(data)) + data)
        replies.flush()

    matrices: OrderedDict[int, SelectedConductance] = OrderedDict()
    transfers: dict[bytes, CcoTransfer] = {}
    rngs: dict[tuple[int, int], KeyedRng] = {}
    int_gemm.warm_up()  # torch's import (~1 s) and the compiled kernels (~0.5 s, the first time ~9 s)
    kernels.warm_up()  # before the first request, not within its deadline
    reply(("ready", _FINGERPRINT))
    while True:
        header = requests.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # end of input: the caller closed it or exited
        request = pickle.loads(requests.read(_HEADER.unpack(header)[0]))
        number = request[0]
        try:
            _, token, w_int, transfer_fields, rng_key, d, s, n, ops = request
            if w_int is not None:
                matrices[token] = SelectedConductance.of(w_int)
            w = matrices[token]
            matrices.move_to_end(token)
            if len(matrices) > _KEPT_MATRICES:
                matrices.popitem(last=False)
            gain, offset, fmax, knee, sigma = transfer_fields
            key = gain.tobytes() + offset.tobytes() + repr((fmax, knee, sigma)).encode()
            if key not in transfers:
                if len(transfers) >= _KEPT_MATRICES:  # a chip's tiles each have one
                    transfers.clear()
                transfers[key] = CcoTransfer(gain, offset, fmax, knee, sigma)
            if rng_key not in rngs:
                if len(rngs) >= _KEPT_MATRICES:
                    rngs.clear()
                rngs[rng_key] = KeyedRng(*rng_key)
            transfer = transfers[key]
            w.bounds(*transfer.current_limits)
            with single_threaded_blas():
                counts = window_counts(transfer, rngs[rng_key], w, d, s, n, ops, coarse=False)
            # counts < 2**21 (phases < 2**53): as uint16 where they fit, half the bytes
            answer = (number, "ok", counts.astype(np.uint16 if counts.max(initial=0) < 2**16 else np.int32))
        except Exception as error:  # noqa: BLE001 - reported; the caller computes it itself
            answer = (number, "error", repr(error))
        reply(answer)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the replies
    try:
        _serve(sys.stdin.buffer, replies)
    except BrokenPipeError:  # the caller is gone: nobody to answer
        os._exit(0)
