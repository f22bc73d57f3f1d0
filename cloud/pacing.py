"""Shared-server stream pacing (``privsplit serve --stream-pace R``, default 60 a second, burst 60).

A stream that writes as fast as it can (a flood, or a client that never reads its replies) costs the server
CPU for every message it reads, decodes and answers. The fair batcher keeps its requests from queueing ahead
of other callers' (:mod:`privsplit.cloud.batcher`), but it cannot give back that CPU: on a small server the
other callers' tail latency grows with the flood's message rate. So while another flow (a device of
``--device-tokens``, else a connection) has sent a request within :data:`ACTIVE_S`, each stream is read at
most ``R`` messages a second (token bucket, ``burst`` at once); the reader waits before taking the next
message and HTTP/2 flow control holds the rest on the client's side. Nothing is refused.

A stream alone on the server is never paced, so a fast client (a batch job, ``edge bench``) keeps the whole
server while nobody else needs it; and a camera-class device sends one request per frame, 30 (at most 60)
a second: at the default 60 its bucket refills as fast as it sends, so it is not slowed either.
``--stream-pace off`` turns this off. Unary calls are not paced (each has its own RPC; ``--rate-limit``
bounds their rate per caller).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

from privsplit.cloud.config import StreamPace
from privsplit.cloud.token_buckets import TokenBuckets

ACTIVE_S = 1.0  # another flow seen this recently: the server is shared
MAX_FLOWS = 10_000  # buckets kept; beyond it the full ones (idle streams) are dropped


class StreamPacer:
    """:meth:`seen` every request's flow; a stream's reader asks :meth:`delay` before each next message."""

    def __init__(self, pace: StreamPace, *, clock=time.monotonic) -> None:
        self.pace = pace
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets = TokenBuckets(pace.rate, pace.burst, max_keys=MAX_FLOWS, clock=clock)
        # the flow seen last and the last one seen that differs from it: enough to answer "another flow is active"
        self._latest: tuple[Hashable, float] | None = None
        self._other: tuple[Hashable, float] | None = None

    def seen(self, flow: Hashable) -> None:
        """A request of ``flow`` arrived (unary call or stream message)."""
        now = self._clock()
        with self._lock:
            if self._latest is not None and self._latest[0] != flow:
                self._other = self._latest
            self._latest = (flow, now)

    def shared(self, flow: Hashable) -> bool:
        """Whether a flow other than ``flow`` sent a request within :data:`ACTIVE_S`."""
        with self._lock:
            return self._shared(flow, self._clock())

    def _shared(self, flow: Hashable, now: float) -> bool:
        for entry in (self._latest, self._other):
            if entry is not None and entry[0] != flow:
                return now - entry[1] <= ACTIVE_S
        return False

    def delay(self, flow: Hashable) -> float:
        """Seconds ``flow``'s stream must wait before it reads its next message (0: read it now; a token is
        taken). While the flow is alone on the server it is free and its bucket fills."""
        return self._buckets.take(flow, count=self.shared(flow))
