"""A token bucket per caller identity (``privsplit serve --rate-limit R --rate-burst B``).

Each identity (a device id from ``--device-tokens``, else the common name of a mutual-TLS client certificate,
else the peer's IP address) may send ``rate`` requests a second on average and ``burst`` at once; one more is
refused with RESOURCE_EXHAUSTED naming the identity, the limit and when to retry. Every inference request
counts (each message of a stream too; a stream is also paced: :meth:`RateLimiter.delay`, used by the
servicer). The table of buckets is bounded: full buckets are forgotten first. With ``--workers N`` each
worker process keeps its own buckets (a device's connection stays on one worker).
"""

from __future__ import annotations

import threading
import time

from privsplit.cloud.config import RateLimit
from privsplit.proto.status import Code, ProtocolError

MAX_IDENTITIES = 10_000  # buckets kept; beyond it the full ones (idle callers) are dropped


class RateLimiter:
    """:meth:`take` one request for an identity or raise RESOURCE_EXHAUSTED."""

    def __init__(self, limit: RateLimit, *, clock=time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}  # identity -> [tokens, last refill]

    def take(self, identity: str) -> None:
        rate, burst = self.limit.rate, float(self.limit.burst)
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(identity)
            if bucket is None:
                if len(self._buckets) >= MAX_IDENTITIES:
                    self._forget_idle(now)
                bucket = self._buckets[identity] = [burst, now]
            tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return
            bucket[0] = tokens
        wait = (1.0 - tokens) / rate
        raise ProtocolError(
            Code.RESOURCE_EXHAUSTED,
            f"rate limit of {identity!r} exceeded: {rate:g} requests/s, burst {self.limit.burst}; "
            f"retry in {wait:.2f} s (or ask the operator for a higher --rate-limit)",
        )

    def delay(self, identity: str) -> float:
        """Seconds until ``identity`` may send again (0: it may now). Takes nothing."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(identity)
            if bucket is None:
                return 0.0
            tokens = min(float(self.limit.burst), bucket[0] + (now - bucket[1]) * self.limit.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.limit.rate

    def _forget_idle(self, now: float) -> None:
        rate, burst = self.limit.rate, float(self.limit.burst)
        full = [k for k, (t, last) in self._buckets.items() if t + (now - last) * rate >= burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= MAX_IDENTITIES:  # all busy: start over rather than grow
            self._buckets.clear()
