"""HTTP client for the fleetcast service: the dashboard's only way to its data.

One refresh is one :class:`Snapshot`: a GET each of ``/health``, ``/predictions?include_history=true``
(the riskiest ``FLEETCAST_DASHBOARD_MAX_SERVERS``, or those whose name starts with the search),
``/alerts`` and ``/scenario``, issued concurrently, answered or failed together. Every request that
leaves this process goes through :class:`FleetcastClient` (User-Agent ``fleetcast-dashboard``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import httpx
import pandas as pd

from dashboard.data import FleetForecasts, alerts_frame
from dashboard.settings import get_settings

log = logging.getLogger(__name__)

ENDPOINTS: dict[str, tuple[str, dict[str, str]]] = {
    "health": ("/health", {}),
    "predictions": ("/predictions", {"include_history": "true"}),
    "alerts": ("/alerts", {}),
    "scenario": ("/scenario", {}),
}


class ServiceError(Exception):
    """The service answered with an error (``status`` is its HTTP status) or could not be reached
    (``status`` is None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def unreachable(self) -> bool:
        return self.status is None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else str(detail)
    return str(body)[:300]


@dataclass
class Snapshot:
    """Everything one refresh fetched. A part that failed is None and its error is in ``errors``."""

    base_url: str
    search: str | None = None  # the server-name prefix the predictions were asked for
    health: dict[str, Any] | None = None
    predictions: dict[str, Any] | None = None
    alerts: dict[str, Any] | None = None
    scenario: dict[str, Any] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    fetched_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))
    elapsed_s: float = 0.0

    @property
    def unreachable(self) -> bool:
        """True when neither the health nor the predictions answer came back."""
        return self.health is None and self.predictions is None

    @cached_property
    def fleet(self) -> FleetForecasts:
        return FleetForecasts.from_response(self.predictions)

    @cached_property
    def alerts_table(self) -> pd.DataFrame:
        """The active alerts as a table, most severe and soonest first (built once per refresh)."""
        return alerts_frame(self.alert_list)

    @property
    def servers_matching(self) -> int:
        """How many servers the service has for this view (the page shows at most the dashboard's limit)."""
        body = self.predictions or {}
        return int(body.get("total", len(body.get("predictions") or [])))

    @property
    def alert_list(self) -> list[dict[str, Any]]:
        return list((self.alerts or {}).get("alerts") or [])

    @property
    def demo_fleet(self) -> bool:
        return bool((self.health or {}).get("demo_fleet") or (self.scenario or {}).get("demo_fleet"))


class FleetcastClient:
    """Talks to the service at ``base_url`` (default: ``FLEETCAST_API_URL``, see ``dashboard/settings.py``)."""

    def __init__(
        self,
        base_url: str | None = None,
        timeout: float | None = None,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = get_settings()
        self.base_url = (base_url or settings.api_url).rstrip("/")
        self.token = token if token is not None else settings.api_token
        read_timeout = timeout or settings.api_timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(read_timeout, connect=min(5.0, read_timeout)),
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "fleetcast-dashboard"},
        )

    def close(self) -> None:
        self._http.close()

    # --- low level ----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # connect refused, DNS, timeout, reset
            raise ServiceError(f"{method} {self.base_url}{path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise ServiceError(
                f"{method} {path} answered {response.status_code}: {_detail(response)}",
                status=response.status_code,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ServiceError(f"{method} {path} answered non-JSON", status=response.status_code) from exc

    def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self._request("GET", path, params=params or None)

    # --- endpoints ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self.get_json("/health")

    def predictions(self, include_history: bool = True) -> dict[str, Any]:
        return self.get_json("/predictions", {"include_history": "true"} if include_history else None)

    def alerts(self) -> dict[str, Any]:
        return self.get_json("/alerts")

    def scenario(self) -> dict[str, Any]:
        return self.get_json("/scenario")

    def set_scenario(
        self, scenario: str, duration_hours: float, servers: list[str] | None = None
    ) -> dict[str, Any]:
        """POST /scenario/set. ``servers`` None or empty means the whole demo fleet."""
        body: dict[str, Any] = {"scenario": scenario, "duration_hours": duration_hours}
        if servers:
            body["servers"] = list(servers)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return self._request("POST", "/scenario/set", json=body, headers=headers)

    def fetch_snapshot(self, search: str | None = None) -> Snapshot:
        """One refresh: the four GETs concurrently; never raises, failures land in ``errors``. The
        predictions are one page: the riskiest ``max_servers`` (settings), of those whose name starts with
        ``search`` when given."""
        started = time.perf_counter()
        snap = Snapshot(base_url=self.base_url, search=search or None)
        requests = dict(ENDPOINTS)
        page = {"limit": str(get_settings().max_servers), **({"server": search} if search else {})}
        requests["predictions"] = ("/predictions", {**ENDPOINTS["predictions"][1], **page})
        with ThreadPoolExecutor(max_workers=len(requests), thread_name_prefix="fleetcast-fetch") as pool:
            futures = {
                name: pool.submit(self.get_json, path, params) for name, (path, params) in requests.items()
            }
            for name, future in futures.items():
                try:
                    setattr(snap, name, future.result())
                except ServiceError as exc:
                    snap.errors[name] = str(exc)
        snap.elapsed_s = time.perf_counter() - started
        log.info("fetched snapshot from %s in %.2f s (errors: %s)", self.base_url, snap.elapsed_s, snap.errors)
        return snap
