"""Test and benchmark helpers (never installed, never imported by the product).

``tests/support`` is on ``sys.path`` for pytest (``pythonpath`` in pyproject.toml); the benchmark
scripts add it themselves.

- :func:`free_port`: a free TCP port on 127.0.0.1;
- :class:`RequestTally` / :func:`count_dashboard_requests`: counts the HTTP requests the dashboard's
  client sends from this process (it identifies itself as ``fleetcast-dashboard``);
- ``fleetcast_testkit.standin``: the real service with a synthetic forecaster, over real HTTP;
- ``fleetcast_testkit.promstack``: real Alertmanager and Prometheus (Debian's packages) on free loopback
  ports, any other peer binary by its command line (``Command``: node_exporter, collectd), a webhook
  receiver, and the real service under uvicorn on a loopback port;
- ``fleetcast_testkit.serve``: a real ``bentoml serve`` / ``fleetcast serve`` subprocess (``served``),
  its environment with all state in one directory (``service_env``), the hard kill of its group.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

DASHBOARD_USER_AGENT = "fleetcast-dashboard"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RequestTally:
    """Thread-safe tally of requests, by ``METHOD path``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_route: Counter[str] = Counter()

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self._by_route[f"{method} {path}"] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._by_route.values())

    def by_route(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_route)

    def reset(self) -> None:
        with self._lock:
            self._by_route.clear()


@contextmanager
def count_dashboard_requests() -> Iterator[RequestTally]:
    """Count every request the dashboard's httpx client sends while the block runs (wraps
    ``httpx.Client.send``; other clients, e.g. a test's own ``httpx.get``, are not counted)."""
    tally = RequestTally()
    original = httpx.Client.send

    def counting_send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if request.headers.get("user-agent") == DASHBOARD_USER_AGENT:
            tally.record(request.method, request.url.path)
        return original(self, request, **kwargs)

    httpx.Client.send = counting_send  # type: ignore[method-assign]
    try:
        yield tally
    finally:
        httpx.Client.send = original  # type: ignore[method-assign]
