"""A second process for the windows of large batches: half of a batch's windows run there while
the calling thread runs the other half (`CCO._counts`).

Why a process. Every window's count depends on that window alone, so the halves of a batch can
run at once, and numpy and BLAS release the GIL inside their loops. But in two threads of one
process each numpy call returns to a GIL the other thread may hold, and on this project's 2-core
machine the hand-overs cost most of the second core (1,000 windows at 256 x 256 with the
benchmark's uniform weights: one thread 25.7 ms, two threads 19.6 ms, two processes 14.7 ms).

How. The worker is `python -c` this module's `main` (a plain child process on pipes, not
multiprocessing: nothing of the caller's __main__ is re-imported), started on the second large
batch of a process (`for_large_batch`) without waiting for it: batches run in two threads until
it reports ready. A request holds
the drive, the operation indices and what the counts depend on besides: the integer conductance
matrix (sent once per `SelectedConductance`, the worker keeps the last few), the CCO transfer and
the (seed, tile) of the keyed noise. The worker computes `window_counts`, the same function as
the caller, so the counts are bit-identical whichever half runs where.

Failures never change a result: if the worker cannot start, dies, answers an error or takes far
longer than the caller's half (`_TIMEOUT_*`: it is killed), the caller computes that half itself
and later batches use threads (`PCMHIL_WINDOW_WORKER=0` chooses threads from the start). The
worker exits when its stdin closes (the caller's exit, `close`) and runs BLAS on one thread.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pickle
import select
import subprocess
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

#: Conductance matrices the worker keeps (a tile's differential select and its restriction to a
#: layer's rows, 4-phase plus and minus, ...), least recently used first out.
_KEPT_MATRICES = 8
#: The worker's half may take this much longer than the caller's before it is given up.
_TIMEOUT_FACTOR, _TIMEOUT_MIN_S = 20.0, 30.0
#: Pipe buffer asked for (Linux F_SETPIPE_SZ; up to /proc/sys/fs/pipe-max-size, 1 MiB by
#: default): a request or a reply of a few hundred kB then moves in a few writes.
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031
_ENV_SWITCH = "PCMHIL_WINDOW_WORKER"
#: The worker's program (not `-m` on this module, which the package has imported already).
_ENTRY = "from pcmhil.model.window_worker import main; main()"

_tokens = itertools.count(1)


def matrix_token(w) -> int:
    """A number that names the conductance matrix `w` (a SelectedConductance) for its life."""
    return w._derived.setdefault("worker_token", next(_tokens))


class WindowWorker:
    """The caller's handle on the worker process (one per process, `shared`)."""

    def __init__(self):
        # the same modules as the caller (its sys.path, e.g. a source checkout on PYTHONPATH),
        # BLAS on one thread
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self._process = subprocess.Popen([sys.executable, "-c", _ENTRY],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        for pipe in (self._process.stdin, self._process.stdout):
            _widen(pipe)
        self._lock = threading.Lock()
        self._ready = False
        self._kept: OrderedDict[int, None] = OrderedDict()  # tokens the worker holds, as it does
        self.failure: str | None = None
        self.jobs = 0  # batch halves answered
        self._requests = 0

    # ---- state -------------------------------------------------------------------------------

    def ready(self, timeout_s: float = 0.0) -> bool:
        """Whether the worker can take a request now (reads its ready message if it came
        within timeout_s)."""
        if not self._ready and not self.failure:
            with self._exchange("the worker did not start"):
                if self._readable(timeout_s):
                    reply = pickle.load(self._process.stdout)
                    if reply != ("ready", __file__):  # not another version of this module
                        raise RuntimeError(f"unexpected first message {reply!r}")
                    self._ready = True
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

    def start(self, transfer, rng, w, d: np.ndarray, s: np.ndarray, n: int, ops: np.ndarray) -> Job | None:
        """Send the windows (d, s) for `window_counts`; None if the worker is busy or broken
        (the caller computes them itself)."""
        if not self.ready() or not self._lock.acquire(blocking=False):
            return None
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
                pickle.dump(request, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._process.stdin.flush()
                sent = True
        finally:
            if not sent:
                self._lock.release()
        return Job(self) if sent else None

    def _finish(self, caller_s: float) -> np.ndarray | None:
        """The counts of the request in flight, or None (and the worker given up)."""
        counts = None
        try:
            with self._exchange("the worker's answer failed"):
                timeout = max(_TIMEOUT_MIN_S, _TIMEOUT_FACTOR * caller_s)
                if not self._readable(timeout):
                    raise TimeoutError(f"no answer within {timeout:.0f} s")
                number, kind, value = pickle.load(self._process.stdout)
                if number != self._requests:
                    raise RuntimeError(f"answer {number} to request {self._requests}")
                if kind != "ok":
                    raise RuntimeError(f"the worker failed: {value}")
                counts = value.astype(np.int64)
                self.jobs += 1
        finally:
            self._lock.release()
        return counts

    @contextmanager
    def _exchange(self, what: str):
        """Around every use of the pipes: an exception gives the worker up (the caller goes on
        without it), and so does an interruption (e.g. KeyboardInterrupt, re-raised), which may
        leave a message half sent or half read."""
        done = False
        try:
            yield
            done = True
        except Exception as error:  # noqa: BLE001 - any failure: threads from now on
            self._fail(f"{what}: {error!r}")
            done = True
        finally:
            if not done:
                self._fail(f"{what}: interrupted")

    def _readable(self, timeout_s: float) -> bool:
        return bool(select.select([self._process.stdout], [], [], timeout_s)[0])

    def _fail(self, why: str) -> None:
        self.failure = why
        self._process.kill()


class Job:
    """A batch half in the worker: `result` waits for its counts."""

    def __init__(self, worker: WindowWorker):
        self._worker = worker

    def result(self, caller_s: float) -> np.ndarray | None:
        """The counts, or None if the worker failed (caller_s: how long the caller's own half
        took, which scales the timeout)."""
        return self._worker._finish(caller_s)


_shared: WindowWorker | None = None
_shared_lock = threading.Lock()


def shared(start: bool = True) -> WindowWorker | None:
    """The process's worker, started on the first call (start=False: only if it exists);
    None where disabled (PCMHIL_WINDOW_WORKER=0) or after it failed."""
    global _shared
    if os.environ.get(_ENV_SWITCH, "1") == "0":
        return None
    with _shared_lock:
        if _shared is None and start:
            try:
                _shared = WindowWorker()
            except OSError:
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


_large_batches = 0


def warm_up(timeout_s: float = 10.0) -> bool:
    """Start the worker now and wait until it is ready (a benchmark's warm-up: otherwise the
    first large batches run in threads while it starts); whether it is in use."""
    worker = shared()
    return worker is not None and worker.ready(timeout_s)


def _forget_in_child() -> None:
    """A forked child must not talk to its parent's worker (it starts its own when needed), nor
    keep the worker's input open after the parent closes it."""
    global _shared
    if _shared is not None:
        for pipe in (_shared._process.stdin, _shared._process.stdout):
            try:
                os.close(pipe.fileno())
            except (OSError, ValueError):
                pass
    _shared = None


def _close_at_exit() -> None:
    if _shared is not None:
        _shared.close(wait_s=0.5)


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(_close_at_exit)


def _widen(pipe) -> None:
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, OSError):
        pass  # a smaller pipe only means more writes


# ---- the worker's side ---------------------------------------------------------------------


def _serve(requests, replies) -> None:
    """Answer requests until end of input."""
    from .cco import CcoTransfer, window_counts
    from .drive import SelectedConductance, single_threaded_blas
    from .keyed_rng import KeyedRng

    matrices: OrderedDict[int, SelectedConductance] = OrderedDict()
    transfers: dict[bytes, CcoTransfer] = {}
    rngs: dict[tuple[int, int], KeyedRng] = {}
    pickle.dump(("ready", __file__), replies)
    replies.flush()
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        try:
            number, token, w_int, transfer_fields, rng_key, d, s, n, ops = request
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
            reply = (number, "ok", counts.astype(np.int32))  # counts < 2**21 (phases < 2**53)
        except Exception as error:  # noqa: BLE001 - reported; the caller computes it itself
            reply = (request[0] if isinstance(request, tuple) and request else None, "error", repr(error))
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the replies
    _serve(sys.stdin.buffer, replies)
