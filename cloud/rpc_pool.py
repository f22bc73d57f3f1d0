"""The gRPC server's worker threads: a thread pool whose threads never keep the process alive.

``concurrent.futures.ThreadPoolExecutor`` joins its (non-daemon) threads at interpreter exit, so one RPC
thread blocked in a handler would hold a stopped server's process open. :class:`DaemonThreadPool` runs the
same way (threads started on demand up to ``max_workers``, reused while work is queued) with daemon
threads; :meth:`shutdown` stops taking work and lets idle threads end.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Executor, Future


class DaemonThreadPool(Executor):
    def __init__(self, max_workers: int, *, thread_name_prefix: str = "pool") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self._max = max_workers
        self._prefix = thread_name_prefix
        self._work: collections.deque = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads = 0
        self._idle = 0  # threads waiting for work
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._work.append((future, fn, args, kwargs))
            if len(self._work) <= self._idle:
                self._cond.notify()
            elif self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._run, name=f"{self._prefix}_{self._threads}", daemon=True).start()
        return future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._work:
                    if self._shutdown:
                        self._threads -= 1
                        return
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                future, fn, args, kwargs = self._work.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # handed to the future, as ThreadPoolExecutor does
                    future.set_exception(exc)
            del future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; threads end once the queued work is done (never joined: they are daemons)."""
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                while self._work:
                    self._work.popleft()[0].cancel()
            self._cond.notify_all()
