"""Everything one service worker holds, and what each endpoint does, as plain testable code.

:class:`ServiceRuntime` owns the feed store, the model and its :class:`PredictionEngine`, the optional
demo fleet and the write guard (bearer token + rate limit). ``serving/service.py`` maps HTTP routes
onto its methods in a few lines each.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models import schema, simulator
from serving import delivery as alert_delivery
from serving import demo_fleet as demo
from serving import exposition, ingest, model_store, security
from serving.background import Periodic
from serving.forecasting import PredictionEngine
from serving.settings import get_settings
from serving.store import FeedStore

logger = logging.getLogger(__name__)

@dataclass
class Answer:
    """An HTTP answer: status, JSON-able body (or pre-serialised bytes) and extra headers."""

    status_code: int
    body: Any
    headers: dict[str, str] | None = None


def error(status_code: int, detail: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status_code, {"detail": detail}, headers)


class ScenarioRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenario: str
    duration_hours: float | None = Field(default=None, gt=0, le=24 * 30)
    servers: list[str] | None = None


class ServiceRuntime:
    def __init__(self, store: FeedStore | None = None, load_model: bool = True,
                 demo_fleet: bool | None = None) -> None:
        self.started = time.monotonic()
        self.settings = settings = get_settings()  # as when this runtime started (body caps: per request)
        self.store = store or FeedStore()
        self.limiter = security.limiter_from_settings(settings)
        self.token = settings.api_token
        self.model_info: dict[str, Any] = {"name": model_store.BENTO_MODEL_NAME, "version": None,
                                           "run_id": None, "source": None}
        self.model_error: str | None = None
        self.engine: PredictionEngine | None = None
        self.delivery = alert_delivery.from_settings(settings)  # None without an Alertmanager or webhook
        if load_model:
            try:
                forecaster, info = model_store.load_forecaster()
                self.model_info = info
                self.engine = PredictionEngine(forecaster, self.store, info, delivery=self.delivery)
            except Exception as exc:  # serve the feed anyway; /health says degraded and why
                self.model_error = f"{type(exc).__name__}: {exc}"
                logger.exception("no model loaded")
        use_demo = settings.demo_fleet if demo_fleet is None else demo_fleet
        self.demo: demo.DemoFleet | None = demo.DemoFleet(self.store) if use_demo else None
        # a model from the store follows its tag (a new champion is served without a restart); a file does not
        self._swap_lock = threading.Lock()
        self._watcher = Periodic(self.reload_model, name="fleetcast-model-watch") if (
            load_model and settings.model_path is None) else None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.delivery is not None:
            self.delivery.start()
        if self.demo is not None:
            self.demo.start()
        if self.engine is not None:
            self.engine.start()
        poll = self.settings.model_poll_seconds
        if self._watcher is not None and poll > 0:
            self._watcher.start(poll)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self.demo is not None:
            self.demo.stop()
        if self.engine is not None:
            self.engine.stop()
        if self.delivery is not None:
            self.delivery.stop()
        self.store.dispose()

    def reload_model(self) -> bool:
        """Switch to the model the store's tag points at now, when that is not the one serving (a champion
        packaged since the start, or the first model after a start without one). True when it switched."""
        with self._swap_lock:
            tag = model_store.current_tag()
            if tag is None or tag == self.model_info.get("tag"):
                return False
            forecaster, info = model_store.load_forecaster(tag)
            previous = self.model_info.get("version")
            if self.engine is None:
                engine = PredictionEngine(forecaster, self.store, info, delivery=self.delivery)
                engine.start()
                self.engine = engine
            else:
                self.engine.use_model(forecaster, info)
            self.model_info, self.model_error = info, None
            logger.info("now serving %s (registry version %s, was %s)", tag, info.get("version"), previous)
            return True

    # --- write guard ---------------------------------------------------------------------------------
    def guard(self, authorization: str | None, client: str) -> Answer | None:
        """401 without the configured bearer token, 429 (Retry-After) over the client's rate; else None."""
        if not security.bearer_ok(authorization, self.token):
            return error(401, "missing or wrong bearer token: send 'Authorization: Bearer <FLEETCAST_API_TOKEN>'",
                         {"WWW-Authenticate": "Bearer"})
        wait = self.limiter.acquire(client)
        if wait > 0:
            header = security.RateLimiter.retry_after_header(wait)
            return error(429, f"rate limit exceeded for {client}: retry in {header} s "
                              "(FLEETCAST_RATE_LIMIT_PER_SECOND / FLEETCAST_RATE_LIMIT_BURST)",
                         {"Retry-After": header})
        return None

    # --- endpoints -----------------------------------------------------------------------------------
    def feed(self, body: bytes, content_type: str | None, content_encoding: str | None,
             limits: ingest.Limits | None = None) -> Answer:
        limits = limits or ingest.Limits.now()
        try:
            data = ingest.decode_body(body, content_encoding, limits.body_bytes)
            items = ingest.parse_body(data, content_type)
            result = ingest.ingest_items(self.store, items, max_records=limits.records)
        except ingest.IngestError as exc:
            return error(exc.status_code, exc.detail)
        return Answer(result.status_code, result.body())

    def predictions(self, include_history: bool = False) -> Answer:
        if self.engine is None:
            return error(503, f"no model loaded: {self.model_error}")
        return Answer(200, self.engine.predictions_json(include_history))

    def prediction(self, server_name: str) -> Answer:
        if self.engine is None:
            return error(503, f"no model loaded: {self.model_error}")
        found = self.engine.server_json(server_name)
        if found is None:
            return error(404, f"no forecast for server {server_name!r}: unknown, or under 1 h of usable history")
        return Answer(200, found)

    def alerts(self) -> Answer:
        if self.engine is None:
            return error(503, f"no model loaded: {self.model_error}")
        return Answer(200, self.engine.alerts_json())

    def forecast_metrics(self, server: str | None = None, metric: str | None = None) -> Answer:
        """``GET /metrics/forecasts``: bytes in Prometheus' text format, or an error answer."""
        if self.engine is None:
            return error(503, f"no model loaded: {self.model_error}")
        try:
            body = self.engine.forecast_metrics(server, metric)
        except ValueError as exc:
            return error(400, str(exc))
        return Answer(200, body, {"Content-Type": exposition.CONTENT_TYPE})

    def health(self) -> dict[str, Any]:
        engine = self.engine
        degraded = engine is None or engine.last_error is not None or not engine.running
        last_feed = self.store.last_received()
        return {
            "status": "degraded" if degraded else "healthy",
            "uptime_seconds": round(time.monotonic() - self.started, 2),
            "model_loaded": engine is not None,
            "predictions_served": engine.predictions_served if engine else 0,
            "last_prediction": engine.batch_time if engine else None,
            "model": {k: self.model_info.get(k) for k in ("name", "version", "run_id", "source")},
            "servers_tracked": engine.servers_tracked if engine else 0,
            "records_stored": self.store.count(),
            "last_feed_time": schema.iso(last_feed) if last_feed is not None else None,
            "demo_fleet": self.demo is not None,
            "alert_delivery": self.delivery.status() if self.delivery is not None else {"firing": None, "targets": []},
            "error": self.model_error or (engine.last_error if engine else None),
        }

    def scenario(self) -> dict[str, Any]:
        current = self.demo.scenario if self.demo is not None else {
            "scenario": "baseline", "servers": [], "duration_hours": None, "started_at": None, "expires_at": None}
        return {**current, "demo_fleet": self.demo is not None, "available": list(simulator.SCENARIOS)}

    def set_scenario(self, payload: Any) -> Answer:
        if self.demo is None:
            return error(409, "the built-in demo fleet is off, so there is no scenario to set: start the service "
                              "with FLEETCAST_DEMO_FLEET=1 (make demo does). Real servers are not simulated.")
        try:
            req = ScenarioRequest.model_validate(payload)
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
            return error(422, msgs)
        if req.scenario not in simulator.SCENARIOS:
            return error(422, f"scenario: unknown scenario {req.scenario!r}; available: "
                              f"{', '.join(simulator.SCENARIOS)}")
        try:
            active = self.demo.set_scenario(req.scenario, req.servers, req.duration_hours)
        except ValueError as exc:
            return error(422, str(exc))
        servers = sorted(active["servers"] or req.servers or self.demo.server_names)
        return Answer(200, {"status": "success", "scenario": active["scenario"],
                            "duration_hours": active["duration_hours"], "servers": servers})
