"""A token bucket per caller identity (``privsplit serve --rate-limit R --rate-burst B``).

Each identity (a device id from ``--device-tokens``, else the common name of a mutual-TLS client certificate,
else the peer's IP address) may send ``rate`` requests a second on average and ``burst`` at once; one more is
refused with RESOURCE_EXHAUSTED naming the identity, the limit and when to retry. Every inference request
counts (each message of a stream too; a stream is also paced: :meth:`RateLimiter.delay`, used by the
servicer). The table of buckets is bounded: full buckets are forgotten first. With ``--workers N`` each
worker process keeps its own buckets (a device's connection stays on one worker).
"""

from __future__ import annotations

import time

from privsplit.cloud.config import RateLimit
from privsplit.cloud.token_buckets import TokenBuckets
from privsplit.proto.status import Code, ProtocolError

MAX_IDENTITIES = 10_000  # buckets kept; beyond it the full ones (idle callers) are dropped


class RateLimiter:
    """:meth:`take` one request for an identity or raise RESOURCE_EXHAUSTED."""

    def __init__(self, limit: RateLimit, *, clock=time.monotonic) -> None:
        self.limit = limit
        self._buckets = TokenBuckets(limit.rate, limit.burst, max_keys=MAX_IDENTITIES, clock=clock)

    def take(self, identity: str) -> None:
        wait = self._buckets.take(identity)
        if wait == 0.0:
            return
        raise ProtocolError(
            Code.RESOURCE_EXHAUSTED,
            f"rate limit of {identity!r} exceeded: {self.limit.rate:g} requests/s, burst {self.limit.burst}; "
            f"retry in {wait:.2f} s (or ask the operator for a higher --rate-limit)",
        )

    def delay(self, identity: str) -> float:
        """Seconds until ``identity`` may send again (0: it may now). Takes nothing."""
        return self._buckets.wait(identity)
