"""Draining without cancelling: let the requests that already reached the server be accepted first.

``grpc.Server.stop`` cancels (``CANCELLED``) every call that gRPC's core has received but the Python layer
has not yet picked up: under load a burst sent just before SIGTERM is partly in that state, and a client
sees CANCELLED, which it has no reason to retry. So the drain first goes NOT_SERVING and keeps accepting
until no new call has arrived for :data:`QUIET_S` (at most :data:`WINDOW_MAX_S`, within the grace); the
calls accepted by then run to the end, and only then does the server stop taking new ones.
:class:`ArrivalCounter` (an interceptor, so it sees every call, refused ones too) tells when it is quiet.
"""

from __future__ import annotations

import itertools
import time

import grpc

QUIET_S = 0.2  # no new call for this long: what reached the server before the signal has been accepted
WINDOW_MAX_S = 3.0  # a client that ignores NOT_SERVING and keeps sending does not hold the drain longer


class ArrivalCounter(grpc.ServerInterceptor):
    """Counts the calls the server accepts (one ``next`` per call: atomic under the GIL, no lock)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self.arrived = 0

    def intercept_service(self, continuation, handler_call_details):
        self.arrived = next(self._counter)
        return continuation(handler_call_details)

    def wait_quiet(self, *, limit_s: float, quiet_s: float = QUIET_S) -> float:
        """Return once no call arrived for ``quiet_s`` or after ``limit_s``; the seconds it waited."""
        start = time.monotonic()
        end = start + max(limit_s, 0.0)
        while True:
            seen = self.arrived
            now = time.monotonic()
            if now >= end:
                return now - start
            time.sleep(min(quiet_s, end - now))
            if self.arrived == seen:
                return time.monotonic() - start
