"""Per-key request rate limit: a token bucket per API key, in the API server's memory.

Each key may make ``rpm`` requests a minute on average, with bursts up to ``rpm`` requests; past that a request
gets 429 ``rate_limit_exceeded`` with ``Retry-After`` (seconds until the bucket holds a request again). Several API
servers behind a load balancer each keep their own buckets, so a key's effective limit is ``rpm`` per server.
Hand-written because it is twenty lines: no library we already depend on has one; slowapi/limits would add two
packages and a decorator per route for the same bucket, and the answer must be OpenAI's error envelope anyway.
"""

from __future__ import annotations

import threading
import time

from slmtune.service.errors import RateLimited


class RateLimiter:
    MAX_KEYS = 100_000  # buckets kept; the fullest (idle) ones are forgotten first past this

    def __init__(self, rpm: int, clock=time.monotonic):
        self.rpm, self.clock = rpm, clock
        self.rate = rpm / 60.0  # requests refilled per second
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, time of that count)
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one request from ``key``'s bucket, or raise ``RateLimited`` with the wait in ``Retry-After``."""
        if self.rpm <= 0:
            return
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.rpm), now))
            tokens = min(float(self.rpm), tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimited(f"Rate limit reached for this API key: {self.rpm} requests per minute. "
                                  f"Try again in {wait:.1f} s.", retry_after=wait)
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.MAX_KEYS:
                self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.rpm]
        for k in full:
            del self._buckets[k]
