"""Write-endpoint protection: who may write, how often, and how many writes at once.

- **Token** (``FLEETCAST_API_TOKEN``): when set, POST endpoints need ``Authorization: Bearer <token>``
  (401 otherwise). Read endpoints stay open (the dashboard reads them).
- **Secure default without a token**: POSTs from peers that are not loopback answer 403 (writes would
  otherwise be open to anyone who reaches the port, and a write overwrites stored history);
  ``FLEETCAST_ALLOW_ANONYMOUS_WRITES=1`` opens them for a trusted network. ``make demo`` and a shipper
  on the same host write over loopback and are unaffected.
- **The client is the TCP peer.** uvicorn (which BentoML runs) believes ``X-Forwarded-For`` from
  loopback by default, so anything on the host could claim any address and get a fresh rate limit.
  :func:`forwarded_allow_ips` gives uvicorn the proxies of ``FLEETCAST_TRUSTED_PROXIES`` instead
  (none by default); uvicorn's own ``ProxyHeadersMiddleware`` then takes the client from the header
  only when the peer is one of them.
- **Rate limit** (``FLEETCAST_RATE_LIMIT_PER_SECOND``, ``FLEETCAST_RATE_LIMIT_BURST``): a sliding
  window counter per client address from the maintained ``limits`` library, in its in-memory storage,
  which drops a client's counters two windows after its last request: memory follows the clients of
  the last two windows, not every client ever seen. (``limits``' moving-window strategy keeps an empty
  list per client forever in that storage, so it is not used.)
- **Writes in flight** (``FLEETCAST_MAX_WRITES_IN_FLIGHT``, ``..._PER_CLIENT``): a POST takes a slot
  before its body is read and gives it back when its ingest ends; without a free slot it is answered
  429 at once. Slow or stuck uploads therefore hold at most these slots, never all of BentoML's request
  slots (``max_concurrency``), and reads keep answering.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
import time
from collections import Counter

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from serving.settings import ServiceSettings, get_settings

# what uvicorn gets as FORWARDED_ALLOW_IPS when no proxy is trusted: a literal no peer address equals
# (an empty value would do the same today, but says less in a process listing)
NO_TRUSTED_PROXY = "none"


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """True when no token is configured, or ``authorization`` is ``Bearer <token>`` (constant-time)."""
    if not token:
        return True
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def is_loopback(host: str | None) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1, IPv4-mapped 127.x); False for anything else,
    including names and unknown peers."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def trusted_proxy_list(value: str | None) -> list[str]:
    """``FLEETCAST_TRUSTED_PROXIES`` as a list of addresses/networks; ValueError naming a bad entry."""
    entries = [e.strip() for e in (value or "").split(",") if e.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"FLEETCAST_TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR network") from None
    return entries


def forwarded_allow_ips(settings: ServiceSettings | None = None) -> str:
    """The value for uvicorn's ``FORWARDED_ALLOW_IPS``: the trusted proxies, or none at all."""
    s = settings or get_settings()
    return ",".join(trusted_proxy_list(s.trusted_proxies)) or NO_TRUSTED_PROXY


class RateLimiter:
    """At most ``burst`` requests per window of ``burst / per_second`` seconds per client key (a sliding
    window counter: the previous window's count weighs in by how much of it the sliding window still
    covers), so a client averages ``per_second`` and may send ``burst`` at once.

    :meth:`acquire` returns 0 when the request may go, else ``limits``' estimate of the seconds until it
    may. The window is rounded to whole seconds (``limits`` counts in whole units), at least one.
    """

    def __init__(self, per_second: float, burst: float) -> None:
        self.per_second = float(per_second)
        self.burst = max(1, int(burst))
        self.window_seconds = max(1, round(self.burst / self.per_second)) if self.per_second > 0 else 0
        self._storage = MemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self._item = RateLimitItemPerSecond(self.burst, self.window_seconds or 1)

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def acquire(self, key: str) -> float:
        if not self.enabled or self._limiter.hit(self._item, key):
            return 0.0
        stats = self._limiter.get_window_stats(self._item, key)
        return max(0.001, stats.reset_time - time.time())

    def entries(self) -> int:
        """Counters the limiter holds now (at most two per client seen in the last two windows)."""
        return len(self._storage.storage)

    @staticmethod
    def retry_after_header(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


def limiter_from_settings(settings: ServiceSettings | None = None) -> RateLimiter:
    s = settings or get_settings()
    return RateLimiter(s.rate_limit_per_second, s.rate_limit_burst)


class WriteSlots:
    """Counts POSTs in flight, in total and per client; refuses a new one over either cap.

    Thread-safe (the ingest thread gives its slot back). ``refused`` counts refusals by reason for
    /health.
    """

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._in_flight: Counter[str] = Counter()
        self._count = 0
        self._lock = threading.Lock()
        self.peak = 0

    def acquire(self, client: str) -> str | None:
        """None when the write may go (a slot is taken), else which cap refused it."""
        with self._lock:
            if self._in_flight[client] >= self.per_client:
                return "per_client"
            if self._count >= self.total:
                return "total"
            self._in_flight[client] += 1
            self._count += 1
            self.peak = max(self.peak, self._count)
            return None

    def release(self, client: str) -> None:
        with self._lock:
            self._count -= 1
            self._in_flight[client] -= 1
            if self._in_flight[client] <= 0:
                del self._in_flight[client]

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._count

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._in_flight)
