"""Write-endpoint protection: an optional bearer token and a per-client token-bucket rate limit.

- ``FLEETCAST_API_TOKEN``: when set, POST endpoints need ``Authorization: Bearer <token>`` (401
  otherwise). Read endpoints stay open (the dashboard reads them).
- ``FLEETCAST_RATE_LIMIT_PER_SECOND`` (default 20) and ``FLEETCAST_RATE_LIMIT_BURST`` (default 60):
  each client IP has a bucket of ``burst`` requests refilled at ``per_second``; an empty bucket answers
  429 with ``Retry-After``. ``FLEETCAST_RATE_LIMIT_PER_SECOND=0`` turns the limit off.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable

from serving.settings import ServiceSettings, get_settings

_MAX_CLIENTS = 100_000


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """True when no token is configured, or ``authorization`` is ``Bearer <token>`` (constant-time)."""
    if not token:
        return True
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


class RateLimiter:
    """Token buckets per client key; :meth:`acquire` returns 0 when allowed, else seconds to wait."""

    def __init__(self, per_second: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = float(per_second)
        self.burst = max(1.0, float(burst))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def acquire(self, key: str) -> float:
        if not self.enabled:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.per_second)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > _MAX_CLIENTS:  # forget full buckets: they equal a new client
                full = [k for k, (t, _) in self._buckets.items() if t >= self.burst - 1]
                for k in full:
                    del self._buckets[k]
            return (1.0 - tokens) / self.per_second

    @staticmethod
    def retry_after_header(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


def limiter_from_settings(settings: ServiceSettings | None = None) -> RateLimiter:
    s = settings or get_settings()
    return RateLimiter(s.rate_limit_per_second, s.rate_limit_burst)
