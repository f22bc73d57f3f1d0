"""Token buckets per key, bounded: the one mechanism behind the rate limit and the stream pace.

Each key may take ``rate`` tokens a second on average and ``burst`` at once; a new key starts full. The table
keeps at most ``max_keys`` buckets: when it is full, the buckets that have refilled (idle keys) are forgotten
first, and if every key is busy the table starts over rather than grow. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable


class TokenBuckets:
    def __init__(self, rate: float, burst: int, *, max_keys: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self.max_keys = rate, float(burst), max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[Hashable, list[float]] = {}  # key -> [tokens, last refill]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, *, count: bool = True) -> float:
        """Take one of ``key``'s tokens: 0.0 when taken, else the seconds until one is there (nothing taken).
        With ``count=False`` the bucket only refills and nothing is taken (0.0)."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._forget_idle(now)
                bucket = self._buckets[key] = [self.burst, now]
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if not count or tokens >= 1.0:
                bucket[0] = tokens - 1.0 if count else tokens
                return 0.0
            bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def wait(self, key: Hashable) -> float:
        """Seconds until ``key`` may take a token (0: now). Takes nothing."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return 0.0
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        full = [k for k, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()
