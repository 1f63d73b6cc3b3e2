"""The optional accelerators of the window path (`int_gemm`: torch; `kernels`: numba), each
loaded once per process, in the calling thread: on the process's second batch of many windows
(`for_large_batch`: a program that runs one, e.g. `pcmhil mvm`, does not pay for the load), after
many windows in small batches (`for_small_batch`: the kernels, for a co-simulation's single
windows), or at once by `warm_up` (e.g. before a benchmark).

In the calling thread, not a background one: an import in a background thread would leave a
child forked meanwhile unable ever to import the module (its locks held by a thread the child
does not have), and a fork cannot wait for it either (logging's fork handler holds a lock the
import needs). Its environment switch set to "0" keeps an accelerator off; a load that fails
(returns None) leaves numpy's path, with the same results.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class LazyLoad:
    """One accelerator: `load` (returning it, or None) run once, as the module doc says."""

    def __init__(self, switch: str, load: Callable[[], object | None]):
        self.switch = switch
        self._load = load
        self._lock = threading.Lock()
        #: The accelerator once loaded; None before, or where it is off or failed.
        self.loaded = None
        self._tried = False
        self._large_batches = 0
        self._small_windows = 0

    def for_large_batch(self) -> None:
        """Count a large batch; on the process's second, load (once)."""
        if self._tried:
            return
        self._large_batches += 1
        if self._large_batches >= 2:
            self.warm_up()

    def for_small_batch(self, windows: int, load_after: int) -> None:
        """Count the windows of a small batch; once the process has counted load_after of them
        (e.g. a co-simulation, one window at a time), load (once)."""
        if self._tried:
            return
        self._small_windows += windows
        if self._small_windows >= load_after:
            self.warm_up()

    def warm_up(self) -> bool:
        """Load now (once; unless switched off); whether the accelerator is available."""
        with self._lock:
            if not self._tried:
                self._tried = True
                if os.environ.get(self.switch, "1") != "0":
                    self.loaded = self._load()
        return self.loaded is not None
