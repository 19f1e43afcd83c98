"""Everything one service worker holds, and what each endpoint does, as plain testable code.

:class:`ServiceRuntime` owns the feed store, the model and its :class:`PredictionEngine`, the optional
demo fleet and the write guard (bearer token, loopback-only writes without one, rate limit, write
slots; ``serving/security.py``). ``serving/service.py`` maps HTTP routes onto its methods in a few
lines each.

Answers never carry an exception's text: a missing model file's message names its full path, a
database error its file. Those go to the log; clients get a reason and where to look.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from models import schema
from models.simulator.live import baseline_scenario
from models.simulator.server import SCENARIOS
from serving import agents, exposition, ingest, model_store, pages, security
from serving import delivery as alert_delivery
from serving import demo_fleet as demo
from serving.background import Periodic
from serving.forecast_guard import ForecastGuard
from serving.forecasting import PredictionEngine
from serving.openapi import ScenarioRequest
from serving.profiles import ProfileMap
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


@functools.cache
def _write_metrics() -> tuple[Any, Any]:
    """The write path's Prometheus series on BentoML's ``GET /metrics``: POSTs in flight (a gauge summed
    over live workers) and refusals by reason. Made on first use, in the worker (prometheus_client must
    be imported after BentoML set its multiprocess directory), once per process."""
    from prometheus_client import Counter as PromCounter
    from prometheus_client import Gauge

    return (Gauge("fleetcast_writes_in_flight", "POSTs being received or ingested now",
                  multiprocess_mode="livesum"),
            PromCounter("fleetcast_write_refusals", "POSTs refused before ingest, by reason", ["reason"]))


def _public_reason(exc: Exception, what: str) -> str:
    """What a client may read about ``exc``: ``what`` and the exception's type, never its text (which
    names files under the data dir); the log has the whole of it."""
    return f"{what} ({type(exc).__name__}; details in the service log)"


def _refresh_reason(last_error: str | None) -> str | None:
    """The engine's last refresh error as a client may read it (its type only, see above)."""
    if last_error is None:
        return None
    kind = last_error.split(":", 1)[0].strip()
    kind = kind if kind.isidentifier() else "error"
    return f"the last forecast refresh failed ({kind}; details in the service log)"


def _when(value: Any) -> str:
    try:
        return schema.iso(schema.to_utc_naive(value))
    except (ValueError, TypeError):
        return repr(value)[:40]


def _ignored_text(decoded: agents.Decoded) -> str:
    top = decoded.ignored.most_common(5)
    shown = ", ".join(f"{name} ({n})" for name, n in top)
    more = f" and {len(decoded.ignored) - 5} more" if len(decoded.ignored) > 5 else ""
    return f"{decoded.ignored_samples} samples of {shown}{more}"


class ServiceRuntime:
    def __init__(self, store: FeedStore | None = None, load_model: bool = True,
                 demo_fleet: bool | None = None) -> None:
        self.started = time.monotonic()
        self.settings = settings = get_settings()  # as when this runtime started (body caps: per request)
        self.store = store or FeedStore()
        self.limiter = security.limiter_from_settings(settings)
        self.token = settings.api_token
        self.anonymous_writes = settings.allow_anonymous_writes
        self.writes = security.WriteSlots(settings.max_writes_in_flight, settings.max_writes_in_flight_per_client)
        self.refused: Counter[str] = Counter()  # write refusals by reason, for /health
        self._refused_lock = threading.Lock()
        security.trusted_proxy_list(settings.trusted_proxies)  # a malformed entry stops the start, named
        self.profiles = ProfileMap(settings.profiles_file)  # a bad mapping file stops the start, named
        self.remote_write_config = agents.RemoteWriteConfig(settings.remote_write_server_label,
                                                            settings.remote_write_profile_label,
                                                            settings.remote_write_root_mount)
        self.agent_limits = ingest.Limits.of(settings)  # caps of /api/v1/write and /v1/metrics, read at start
        self.combiners = {fmt: agents.Combiner() for fmt in ("remote_write", "otlp", "collectd")}
        self.agent_counts: dict[str, Counter[str]] = {fmt: Counter() for fmt in self.combiners}
        self._agent_lock = threading.Lock()
        if not self.token:
            logger.warning(
                "NO FLEETCAST_API_TOKEN: POST /feed/data and /scenario/set accept writes from this host only "
                "(loopback peers; others get 403). To take writes from other hosts set FLEETCAST_API_TOKEN "
                "(shippers send 'Authorization: Bearer <token>'), or FLEETCAST_ALLOW_ANONYMOUS_WRITES=1 on a "
                "trusted network%s.", " (now set: writes are open to every peer)" if self.anonymous_writes else "")
        self.model_info: dict[str, Any] = {"name": model_store.BENTO_MODEL_NAME, "version": None,
                                           "run_id": None, "source": None}
        self.model_error: str | None = None
        self.engine: PredictionEngine | None = None
        self.delivery = alert_delivery.from_settings(settings)  # None without an Alertmanager or webhook
        if load_model:
            try:
                forecaster, info = model_store.load_forecaster()
                self.model_info = info
                self.engine = self._engine(forecaster, info)
            except Exception as exc:  # serve the feed anyway; /health says degraded and why
                self.model_error = _public_reason(exc, "the model could not be loaded")
                logger.exception("no model loaded")
        use_demo = settings.demo_fleet if demo_fleet is None else demo_fleet
        self.demo: demo.DemoFleet | None = demo.DemoFleet(self.store) if use_demo else None
        # a model from the store follows its tag (a new champion is served without a restart); a file does not
        self._swap_lock = threading.Lock()
        self._watcher = Periodic(self.reload_model, name="fleetcast-model-watch") if (
            load_model and settings.model_path is None) else None

    def _engine(self, forecaster: Any, info: dict[str, Any]) -> PredictionEngine:
        settings = self.settings
        guard = ForecastGuard(self.store.engine, settings.guard_backtest_origins, info) if settings.guard else None
        return PredictionEngine(forecaster, self.store, info, delivery=self.delivery, guard=guard)

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
                engine = self._engine(forecaster, info)
                engine.start()
                self.engine = engine
            else:
                self.engine.use_model(forecaster, info)
            self.model_info, self.model_error = info, None
            logger.info("now serving %s (registry version %s, was %s)", tag, info.get("version"), previous)
            return True

    # --- write guard ---------------------------------------------------------------------------------
    def guard(self, authorization: str | None, client: str) -> Answer | None:
        """401 without the configured bearer token; 403 for a non-loopback peer when no token is configured
        (unless FLEETCAST_ALLOW_ANONYMOUS_WRITES); 429 (Retry-After) over the client's rate; else None.
        ``client`` is the peer address (uvicorn's, after the trusted proxies only)."""
        if not security.bearer_ok(authorization, self.token):
            self._count_refusal("token")
            return error(401, "missing or wrong bearer token: send 'Authorization: Bearer <FLEETCAST_API_TOKEN>'",
                         {"WWW-Authenticate": "Bearer"})
        if not self.token and not self.anonymous_writes and not security.is_loopback(client):
            self._count_refusal("not_loopback")
            return error(403, "writes without a token are accepted from this host only (loopback): set "
                              "FLEETCAST_API_TOKEN on the service and send 'Authorization: Bearer <token>', or "
                              "FLEETCAST_ALLOW_ANONYMOUS_WRITES=1 on a trusted network")
        wait = self.limiter.acquire(client)
        if wait > 0:
            self._count_refusal("rate_limit")
            header = security.RateLimiter.retry_after_header(wait)
            return error(429, f"rate limit exceeded for this client: retry in {header} s "
                              "(FLEETCAST_RATE_LIMIT_PER_SECOND / FLEETCAST_RATE_LIMIT_BURST)",
                         {"Retry-After": header})
        return None

    def take_write_slot(self, client: str) -> Answer | None:
        """Take one of the write slots (total and per client) before reading a body: None when taken
        (give it back with :meth:`release_write_slot`), else a 429 to answer at once."""
        refused = self.writes.acquire(client)
        if refused is None:
            _write_metrics()[0].inc()
            return None
        self._count_refusal(f"in_flight_{refused}")
        if refused == "per_client":
            detail = (f"this client already has {self.writes.per_client} writes in flight: wait for their answers "
                      "(FLEETCAST_MAX_WRITES_IN_FLIGHT_PER_CLIENT)")
        else:
            detail = (f"{self.writes.total} writes are in flight, the most the service takes at once: retry "
                      "shortly (FLEETCAST_MAX_WRITES_IN_FLIGHT)")
        return error(429, detail, {"Retry-After": "1"})

    def release_write_slot(self, client: str) -> None:
        self.writes.release(client)
        _write_metrics()[0].dec()

    def count_refusal(self, reason: str) -> None:
        """Count a refusal decided by the HTTP layer (``body_timeout``)."""
        self._count_refusal(reason)

    def _count_refusal(self, reason: str) -> None:
        with self._refused_lock:
            self.refused[reason] += 1
        _write_metrics()[1].labels(reason=reason).inc()

    # --- endpoints -----------------------------------------------------------------------------------
    def feed(self, body: bytes, content_type: str | None, content_encoding: str | None,
             limits: ingest.Limits | None = None) -> Answer:
        """``POST /feed/data``: records in fleetcast's JSON (whole or partial), or collectd's ``write_http``
        JSON, recognised by its shape."""
        limits = limits or ingest.Limits.now()
        try:
            data = ingest.decode_body(body, content_encoding, limits.body_bytes)
            items = ingest.parse_body(data, content_type)
            if agents.is_collectd(items):
                return self._collectd(items, limits)
            result = ingest.ingest_items(self.store, items, limits=limits, profiles=self.profiles)
        except ingest.IngestError as exc:
            return error(exc.status_code, exc.detail)
        return Answer(result.status_code, result.body())

    def _collectd(self, items: list[Any], limits: ingest.Limits) -> Answer:
        if len(items) > limits.records:
            raise ingest.IngestError(413, f"{len(items)} value lists in one request; at most {limits.records} "
                                          "(FLEETCAST_MAX_RECORDS): lower collectd's BufferSize")
        decoded, errors = agents.decode_collectd(items, self.combiners["collectd"], self.remote_write_config.root_mount)
        result = self._store_decoded("collectd", decoded, limits)
        for e in result.errors:  # the records built, named by server and time (not by value-list index)
            errors.append({"index": None, "error": e["error"], **({"kept": e["kept"]} if "kept" in e else {})})
        body = result.body() if decoded.items else {"status": "error" if errors else "success",
                                                    "records_processed": 0, "records_rejected": 0,
                                                    "errors": [], "warnings": []}
        body["errors"] = errors
        body["records_rejected"] = sum(1 for e in errors if "kept" not in e)
        body["status"] = ("error" if not result.rows and errors else "partial" if errors else "success")
        body["values_read"], body["values_ignored"] = decoded.samples, decoded.ignored_samples
        if decoded.ignored:
            body["warnings"] = [*body["warnings"], {"index": None, "warning": "ignored (not used by fleetcast): " +
                                                    _ignored_text(decoded)}]
        return Answer(200 if result.rows or not errors else 422, body)

    def _store_decoded(self, fmt: str, decoded: agents.Decoded, limits: ingest.Limits) -> ingest.IngestResult:
        """Decoded agent records through the one ingest path (validation, profiles, store); counted."""
        result = ingest.validate_items(decoded.items, limits=limits, profiles=self.profiles, trusted_sources=True)
        for e in result.errors:
            item = decoded.items[e["index"]]
            e["error"] = (f"server {str(item.get(schema.SERVER))[:60]!r} at "
                          f"{_when(item.get(schema.TIMESTAMP))}: {e['error']}")
        result.stored = self.store.upsert(result.rows)
        with self._agent_lock:
            counts = self.agent_counts[fmt]
            counts["requests"] += 1
            counts["samples"] += decoded.samples
            counts["samples_ignored"] += decoded.ignored_samples
            counts["records_stored"] += result.stored
            counts["records_rejected"] += len(result.errors)
            for name, n in decoded.ignored.items():
                counts[f"ignored:{name}"] += n
        return result

    def remote_write(self, body: bytes, content_encoding: str | None, limits: ingest.Limits | None = None) -> Answer:
        """``POST /api/v1/write`` (Prometheus remote write 1.0): 204 when every record was stored; 400 with
        the reasons for a malformed body or rejected records (the valid ones are stored all the same:
        a 4xx tells Prometheus not to retry the batch)."""
        limits = limits or ingest.Limits.now()
        try:
            encoding = (content_encoding or "snappy").strip().lower()
            if encoding != "snappy":
                raise ingest.IngestError(415, "remote write bodies are snappy-compressed: send "
                                              "'Content-Encoding: snappy' (protocol 1.0)")
            request = agents.parse_write_request(agents.decode_snappy(body, limits.body_bytes))
            decoded = agents.decode_remote_write(request, self.combiners["remote_write"], self.remote_write_config)
            if len(decoded.items) > limits.records:
                raise ingest.IngestError(413, f"{len(decoded.items)} records in one request; at most "
                                              f"{limits.records} (FLEETCAST_MAX_RECORDS): lower max_samples_per_send")
            result = self._store_decoded("remote_write", decoded, limits)
        except ingest.IngestError as exc:
            return error(exc.status_code, exc.detail)
        if result.errors:
            shown = "; ".join(e["error"] for e in result.errors[:5])
            more = f" (and {len(result.errors) - 5} more)" if len(result.errors) > 5 else ""
            return error(400, f"{len(result.errors)} of {len(decoded.items)} records rejected, the others stored: "
                              f"{shown}{more}")
        return Answer(204, b"")

    def otlp(self, body: bytes, content_type: str | None, content_encoding: str | None,
             limits: ingest.Limits | None = None) -> Answer:
        """``POST /v1/metrics`` (OTLP/HTTP, protobuf or JSON): 200 with an ``ExportMetricsServiceResponse``
        (``partial_success`` names rejected points and ignored metrics); 400 with a ``google.rpc.Status``
        for a body that cannot be read; 415 for another Content-Type."""
        limits = limits or ingest.Limits.now()
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media not in (agents.OTLP_PROTOBUF, agents.OTLP_JSON):
            body_bytes, kind = agents.otlp_status(agents.OTLP_JSON, 415, "unsupported Content-Type: send "
                                                  "application/x-protobuf or application/json (OTLP/HTTP)")
            return Answer(415, body_bytes, {"Content-Type": kind})
        try:
            data = ingest.decode_body(body, content_encoding, limits.body_bytes)
            decoded = agents.decode_otlp(agents.parse_otlp(data, media), self.combiners["otlp"],
                                         self.remote_write_config.root_mount)
            if len(decoded.items) > limits.records:
                raise ingest.IngestError(413, f"{len(decoded.items)} records in one request; at most "
                                              f"{limits.records} (FLEETCAST_MAX_RECORDS): export smaller batches")
            result = self._store_decoded("otlp", decoded, limits)
        except ingest.IngestError as exc:
            body_bytes, kind = agents.otlp_status(media, exc.status_code, exc.detail)
            return Answer(exc.status_code, body_bytes, {"Content-Type": kind})
        parts = [e["error"] for e in result.errors[:5]]
        if decoded.ignored:
            parts.append("ignored (not used by fleetcast): " + _ignored_text(decoded))
        rejected = sum(1 for e in result.errors if "kept" not in e)
        body_bytes, kind = agents.otlp_response(media, rejected, "; ".join(parts))
        return Answer(200, body_bytes, {"Content-Type": kind})

    def agent_status(self) -> dict[str, Any]:
        """Per agent format: requests, samples read and ignored (by metric), records stored and rejected."""
        with self._agent_lock:
            return {fmt: dict(sorted(c.items())) for fmt, c in self.agent_counts.items()}

    def predictions(self, include_history: bool = False, query: pages.Query | None = None) -> Answer:
        if self.engine is None:
            return self._no_model()
        if query is not None and query.paged:
            return Answer(200, self.engine.predictions_page(query, include_history))
        return Answer(200, self.engine.predictions_json(include_history))

    def prediction(self, server_name: str) -> Answer:
        if self.engine is None:
            return self._no_model()
        found = self.engine.server_json(server_name)
        if found is None:
            shown = server_name if schema.is_valid_server_name(server_name) else "(not a valid server name)"
            return error(404, f"no forecast for server {shown!r}: unknown, or under 1 h of usable history")
        return Answer(200, found)

    def alerts(self, query: pages.Query | None = None) -> Answer:
        if self.engine is None:
            return self._no_model()
        if query is not None and query.paged:
            return Answer(200, self.engine.alerts_page(query))
        return Answer(200, self.engine.alerts_json())

    def forecast_metrics(self, server: str | None = None, metric: str | None = None) -> Answer:
        """``GET /metrics/forecasts``: bytes in Prometheus' text format, or an error answer."""
        if self.engine is None:
            return self._no_model()
        try:
            body = self.engine.forecast_metrics(server, metric)
        except ValueError as exc:
            return error(400, str(exc))
        return Answer(200, body, {"Content-Type": exposition.CONTENT_TYPE})

    def _no_model(self) -> Answer:
        return error(503, f"no model loaded: {self.model_error or 'none packaged yet'}")

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
            "last_refresh_seconds": (round(engine.last_refresh_seconds, 2)
                                     if engine and engine.last_refresh_seconds is not None else None),
            "model": {k: self.model_info.get(k) for k in ("name", "version", "run_id", "source")},
            "servers_tracked": engine.servers_tracked if engine else 0,
            "records_stored": self.store.count(),
            "last_feed_time": schema.iso(last_feed) if last_feed is not None else None,
            "demo_fleet": self.demo is not None,
            "alert_delivery": self.delivery.status() if self.delivery is not None else {"firing": None, "targets": []},
            "error": self.model_error or (_refresh_reason(engine.last_error) if engine else None),
            "writes": self.write_load(),
            "forecast_guard": self.guard_status(),
            "agents": self.agent_status(),
        }

    def guard_status(self) -> dict[str, Any]:
        """/health's ``forecast_guard``: servers per forecast source and metric, the fleet's rolling skill."""
        engine = self.engine
        status = engine.guard_status if engine is not None else None
        enabled = engine is not None and engine.guard is not None
        return {"enabled": enabled, **(status or {"servers_by_source": None, "skill": None, "servers_scored": None,
                                                   "window_hours": None})}

    def write_load(self) -> dict[str, Any]:
        """Saturation of the write path: POSTs in flight now (and the most at once), the caps, the counters
        the rate limiter holds, and refusals by reason since the start."""
        with self._refused_lock:
            refused = dict(sorted(self.refused.items()))
        return {"in_flight": self.writes.in_flight, "in_flight_peak": self.writes.peak,
                "in_flight_limit": self.writes.total, "in_flight_limit_per_client": self.writes.per_client,
                "clients_in_flight": self.writes.clients, "rate_limit_entries": self.limiter.entries(),
                "refused": refused}

    def scenario(self) -> dict[str, Any]:
        current = self.demo.scenario if self.demo is not None else baseline_scenario()
        return {**current, "demo_fleet": self.demo is not None, "available": list(SCENARIOS)}

    def set_scenario(self, payload: Any) -> Answer:
        if self.demo is None:
            return error(409, "the built-in demo fleet is off, so there is no scenario to set: start the service "
                              "with FLEETCAST_DEMO_FLEET=1 (make demo does). Real servers are not simulated.")
        try:
            req = ScenarioRequest.model_validate(payload)
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(str(x)[:40] for x in e['loc']) or 'body'}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False))
            return error(422, msgs)
        if req.scenario not in SCENARIOS:
            return error(422, f"scenario: unknown scenario {req.scenario!r}; available: "
                              f"{', '.join(SCENARIOS)}")
        try:
            active = self.demo.set_scenario(req.scenario, req.servers, req.duration_hours)
        except ValueError as exc:
            return error(422, str(exc))
        servers = sorted(active["servers"] or req.servers or self.demo.server_names)
        return Answer(200, {"status": "success", "scenario": active["scenario"],
                            "duration_hours": active["duration_hours"], "servers": servers})
