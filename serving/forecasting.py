"""The service's forecasting state: batched forecasts of every server with new data, alerts, and the
pre-serialised answers of GET /predictions and GET /alerts.

One :class:`PredictionEngine` per worker process. :meth:`PredictionEngine.refresh` reads the servers
written since the last batch from the feed store, forecasts them in one batched
``Forecaster.forecast`` call (the model's own tensors), evaluates the alert rules and re-serialises
the answers (JSON bytes per server, joined per batch), so a GET answers at once whatever the fleet
size. :meth:`start` runs the refresh in a background thread every ``FLEETCAST_REFRESH_SECONDS``
(default 5 s) when new data arrived. After each refresh the active alerts go to the alert delivery
(``serving/delivery.py``: Alertmanager, webhooks; when configured) and the new entries to the Prometheus
exposition (``serving/exposition.py``: ``GET /metrics/forecasts``).

With a forecast guard (``serving/forecast_guard.py``, on unless ``FLEETCAST_GUARD=0``) the refresh reads
a day more history than the encoder takes, and each server's metric is served the model's forecast or
the best naive one, whichever scored better on the server's recent forecasts; entries say which
(``forecast_source``) and the alerts are evaluated on what is served.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from models import alerts as alert_rules
from models import drivers, schema
from models.guard import MODEL as MODEL_SOURCE
from models.tft import ServerForecast
from serving import pages
from serving.background import Periodic
from serving.exposition import ForecastExposition
from serving.forecast_guard import ForecastGuard
from serving.settings import get_settings

logger = logging.getLogger(__name__)

def utcnow() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


def _r(values: np.ndarray) -> list[float]:
    return np.round(np.asarray(values, dtype=float), 2).tolist()


def confidence(quantiles: dict[str, np.ndarray], history_steps: int, seen_in_training: bool = True,
               full_history: int = schema.ENCODER_STEPS) -> float:
    """0..1: narrower P10-P90 bands and longer history give more confidence.

    band: mean P90-P10 width of the percent metrics over the horizon, in percentage points /100;
    history: 1 h of history keeps ~62 % of the band's confidence, 24 h all of it; a server the model
    never saw keeps 90 %.
    """
    widths = [np.mean(q[:, 2] - q[:, 0]) / 100.0 for m, q in quantiles.items() if m in schema.PERCENT_METRICS]
    band = float(np.mean(widths)) if widths else 0.5
    band_factor = float(np.clip(1.0 - 1.5 * band, 0.05, 1.0))
    history_factor = 0.6 + 0.4 * min(1.0, history_steps / float(full_history))
    value = band_factor * history_factor * (1.0 if seen_in_training else 0.9)
    return round(float(np.clip(value, 0.0, 1.0)), 2)


def _history_block(history: pd.DataFrame, missing: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "timestamps": schema.iso_many(history[schema.TIMESTAMP].to_numpy()),
        **{m: (None if m in missing else _r(history[m].to_numpy())) for m in schema.METRICS},
    }


MISSING_NOTE = "never reported by this server: no forecast and no alert for it"


def fill_missing_metrics(history: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[str, ...]]]:
    """Partial records leave NaN in the aligned history. A metric a server reported at some steps is carried
    to its other steps (forward, then back); one it never reported in the window is *missing*: the model
    still needs an input there, so it gets the fleet's median of that metric (or 0), and the server's answer
    then has no forecast, no value and no alert for it. Returns the filled history and the missing metrics
    per server."""
    metrics = list(schema.METRICS)
    if history.empty or not history[metrics].isna().to_numpy().any():
        return history, {}
    out = history.copy()
    grouped = out.groupby(schema.SERVER, sort=False)[metrics]
    never = grouped.count().eq(0)
    out[metrics] = grouped.ffill()
    out[metrics] = out[metrics].fillna(out.groupby(schema.SERVER, sort=False)[metrics].bfill())
    for m in metrics:
        median = out[m].median()
        out[m] = out[m].fillna(0.0 if pd.isna(median) else float(median))
    missing = {str(server): tuple(m for m in metrics if row[m]) for server, row in never.iterrows() if row.any()}
    return out, missing


def rule_thresholds(config: alert_rules.AlertConfig, profile: str | None) -> dict[str, dict[str, float]]:
    """``{metric: {"warning": w, "critical": c}}``: the thresholds ``config`` applies to a server of ``profile``."""
    return {rule.metric: config.thresholds(rule, profile) for rule in config.rules}


def build_entry(fc: ServerForecast, history: pd.DataFrame, server_alerts: list[dict[str, Any]],
                thresholds: dict[str, dict[str, float]] | None = None,
                sources: dict[str, str] | None = None, missing: tuple[str, ...] = (),
                profile_source: str | None = None) -> dict[str, Any]:
    """One element of GET /predictions (with ``history``) from a forecast and its server's history.

    ``thresholds``: the alert thresholds the service applies to this server (:func:`rule_thresholds`),
    so a client draws the same lines the alerts are raised on (default: the rules in force now).
    ``sources``: per metric, the forecast served (``model`` or a naive's name; default: the model).
    ``missing``: metrics the server never reported (null in ``current``/``predicted``/``history``, absent
    from ``forecast`` and ``forecast_source``, listed in ``missing_metrics``). ``profile_source``: where
    the profile came from."""
    if thresholds is None:
        thresholds = rule_thresholds(alert_rules.load_config(), fc.profile)
    last = history.iloc[-1]
    reported = [m for m in schema.METRICS if m not in missing]
    current: dict[str, Any] = {m: (None if m in missing else round(float(last[m]), 2)) for m in schema.METRICS}
    current["timestamp"] = schema.iso(last[schema.TIMESTAMP])
    predicted: dict[str, Any] = {m: (None if m in missing else round(float(fc.quantiles[m][-1, 1]), 2))
                                 for m in schema.METRICS}
    predicted["timestamp"] = schema.iso(fc.timestamps[-1])
    forecast: dict[str, Any] = {"timestamps": schema.iso_many(fc.timestamps.to_numpy())}
    for m in reported:
        q = fc.quantiles[m]
        forecast[m] = {"p10": _r(q[:, 0]), "p50": _r(q[:, 1]), "p90": _r(q[:, 2])}
    return {
        "server_name": fc.server_name,
        "profile": fc.profile,
        "profile_source": profile_source or "default",
        "missing_metrics": {m: MISSING_NOTE for m in missing},
        "current": current,
        "predicted": predicted,
        "confidence": confidence({m: fc.quantiles[m] for m in reported}, fc.history_steps, fc.seen_in_training),
        "risk_level": alert_rules.risk_level(server_alerts),
        "thresholds": thresholds,
        "seen_in_training": bool(fc.seen_in_training),
        "history_steps": int(fc.history_steps),
        "forecast_source": {m: (sources or {}).get(m, "model") for m in reported},
        "forecast": forecast,
        "history": _history_block(history, missing),
    }


def _sort_key(entry: dict[str, Any]) -> tuple[int, str]:
    return alert_rules.severity_rank(entry["risk_level"]), entry["server_name"]


class PredictionEngine:
    """Latest forecasts, alerts and their serialised answers; thread-safe; refreshed in the background."""

    def __init__(self, forecaster: Any, store: Any, model_info: dict[str, Any],
                 alert_config: alert_rules.AlertConfig | None = None,
                 history_steps: int = schema.ENCODER_STEPS, delivery: Any = None,
                 guard: ForecastGuard | None = None) -> None:
        self.forecaster = forecaster
        self.store = store
        self.model_info = {k: model_info.get(k) for k in ("name", "version", "run_id")}
        self.alert_config = alert_config or alert_rules.load_config()
        self.history_steps = history_steps
        self.alerts = alert_rules.AlertBook(self.alert_config.open_minutes, self.alert_config.close_minutes)
        self.delivery = delivery  # serving.delivery.AlertDelivery (or None): told the active alerts per refresh
        self.exposition = ForecastExposition()  # the latest entries as Prometheus series
        self.guard = guard  # model or best naive per server and metric (None: always the model)
        self.read_steps = history_steps + (schema.STEPS_PER_DAY if guard is not None else 0)
        self._sources: dict[str, dict[str, str]] = {}  # server -> metric -> forecast source served
        self.guard_status: dict[str, Any] | None = None  # /health's "forecast_guard"
        self._entries: dict[str, dict[str, Any]] = {}  # server -> entry without history
        self._fragments: dict[str, bytes] = {}  # server -> JSON of entry without history
        self._full: dict[str, bytes] = {}  # server -> JSON of entry with history
        self._predictions: bytes | None = None
        self._predictions_full: bytes | None = None
        self._order: list[str] = []
        self._alerts_list: list[dict[str, Any]] = []  # the batch's active alerts, in answer order
        self._alerts_json: bytes = self._alerts_document(None)
        self._seen: datetime | None = None  # store watermark (received_at) covered by the last batch
        self._lock = threading.Lock()  # guards the answers
        self._refresh_lock = threading.Lock()  # one refresh at a time
        self._refresher = Periodic(self.refresh, name="fleetcast-refresh", on_error=self._refresh_failed)
        self.batch_time: str | None = None
        self.last_error: str | None = None
        self.last_refresh_seconds: float | None = None
        self.predictions_served = 0

    # --- refresh -------------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> int:
        """Forecast the servers written since the last batch; returns how many were forecast."""
        with self._refresh_lock:
            watermark = self.store.last_received()
            if watermark is None or (not force and self._seen is not None and watermark <= self._seen):
                return 0
            started = time.perf_counter()
            servers = self.store.servers_received_since(None if force else self._seen)
            history, missing = fill_missing_metrics(self.store.history(servers, steps=self.read_steps))
            forecasts = self.forecaster.forecast(history) if not history.empty else {}
            profile_sources = self.store.profile_sources(forecasts) if forecasts and hasattr(
                self.store, "profile_sources") else {}
            now = utcnow()
            by_server = dict(tuple(history.groupby(schema.SERVER, sort=False))) if forecasts else {}
            sources: dict[str, dict[str, str]] = {}
            if self.guard is not None:  # serve the better of the model and the best naive
                forecasts, sources = self.guard.apply(forecasts, by_server, self.forecaster)
            entries: dict[str, dict[str, Any]] = {}
            thresholds: dict[str, dict[str, dict[str, float]]] = {}  # per profile
            opened: dict[str, list[str]] = {}  # server -> alert types that opened on the model's forecast
            for name, fc in forecasts.items():
                h = by_server[name]
                gone = missing.get(name, ())  # never reported: no alert on a value that was filled in
                current = {m: float(h[m].iloc[-1]) for m in schema.METRICS if m not in gone}
                quantiles = {m: q for m, q in fc.quantiles.items() if m not in gone}
                recent = {m: h[m].to_numpy(dtype=float) for m in schema.METRICS if m not in gone}  # trend
                server_alerts = alert_rules.evaluate_forecast(name, fc.profile, quantiles, fc.timestamps,
                                                              fc.origin, current, self.alert_config, recent)
                types = self.alerts.update(name, server_alerts, fc.origin)  # data time: as in models.backtest
                by_type = {a["alert_type"]: a for a in self.alerts.for_server(name)}
                new = [t for t in types if t in by_type and not by_type[t].get("already_above")
                       and sources.get(name, {}).get(by_type[t]["metric"], MODEL_SOURCE) == MODEL_SOURCE]
                if new:
                    opened[name] = new
            self._add_drivers(history, opened)
            for name, fc in forecasts.items():
                h = by_server[name]
                gone = missing.get(name, ())
                server_alerts = self.alerts.for_server(name)  # what the book holds open (persistence)
                if fc.profile not in thresholds:
                    thresholds[fc.profile] = rule_thresholds(self.alert_config, fc.profile)
                entries[name] = build_entry(fc, h.tail(self.history_steps), server_alerts, thresholds[fc.profile],
                                            sources.get(name), gone, profile_sources.get(name))
            dropped = [s for s in servers if s not in forecasts]  # too little usable history now
            for name in dropped:
                self.alerts.clear(name)
            self._publish(entries, dropped, now)
            self._guard_report(sources, dropped)
            self._deliver()
            self._seen = watermark
            self.last_error = None
            self.last_refresh_seconds = time.perf_counter() - started
            logger.info("forecast %d servers in %.2f s", len(entries), self.last_refresh_seconds)
            return len(entries)

    def _add_drivers(self, history: pd.DataFrame, opened: dict[str, list[str]]) -> None:
        """Name the inputs that drove each alert that just opened on the model's forecast: the TFT's
        variable-selection weights of that forecast (:mod:`models.drivers`, the library's forward for these
        few servers only). Never costs a refresh: without them the explanation keeps the trend or band."""
        if not opened or getattr(self.forecaster, "model", None) is None:  # a stand-in without a TFT
            return
        try:
            weights = drivers.variable_weights(self.forecaster, history, opened)
        except Exception:  # the explanation is an extra: the alerts stand without it
            logger.exception("could not compute the variable weights of %d servers", len(opened))
            return
        for name, types in opened.items():
            if name in weights:
                explained = drivers.explain(weights[name])
                for alert_type in types:
                    self.alerts.annotate(name, alert_type, explained)

    def _guard_report(self, sources: dict[str, dict[str, str]], dropped: list[str]) -> None:
        """Keep the sources served per server; /health's and /metrics' guard figures."""
        if self.guard is None:
            return
        for name in dropped:
            self._sources.pop(name, None)
        self.guard.forget(dropped)
        self._sources.update(sources)
        self.guard_status = self.guard.summary(self._sources)
        try:
            self.guard.export(self.guard_status)
        except Exception:  # the gauges must never cost a refresh
            logger.exception("could not update the guard's Prometheus gauges")

    def use_model(self, forecaster: Any, model_info: dict[str, Any]) -> int:
        """Serve with another model from now on: every stored server is forecast again with it at once
        (answers and alerts then come from the new model only). Returns how many were forecast."""
        with self._refresh_lock:
            self.forecaster = forecaster
            self.model_info = {k: model_info.get(k) for k in ("name", "version", "run_id")}
            if self.guard is not None:
                self.guard.use_model(model_info)
        return self.refresh(force=True)

    def _publish(self, entries: dict[str, dict[str, Any]], dropped: list[str], now: pd.Timestamp) -> None:
        fragments = {}
        full = {}
        for name, entry in entries.items():
            full[name] = json.dumps(entry, separators=(",", ":")).encode()
            slim = {k: v for k, v in entry.items() if k != "history"}
            fragments[name] = json.dumps(slim, separators=(",", ":")).encode()
            entries[name] = slim
        with self._lock:
            for name in dropped:
                for d in (self._entries, self._fragments, self._full):
                    d.pop(name, None)
            self._entries.update(entries)
            self._fragments.update(fragments)
            self._full.update(full)
            self.batch_time = schema.iso(now)
            order = sorted(self._entries.values(), key=_sort_key)
            names = [e["server_name"] for e in order]
            self._order = names
            self._predictions = self._document(b",".join(self._fragments[n] for n in names))
            self._predictions_full = None  # built on first request with include_history
            self._alerts_list = self.alerts.all()
            self._alerts_json = self._alerts_document(self.batch_time)
        self.exposition.update(entries.values(), dropped, self.model_info, self.batch_time)

    def _deliver(self) -> None:
        """Hand the active alerts to the delivery (it queues what opened and resolved; never blocks)."""
        if self.delivery is None:
            return
        try:
            self.delivery.observe(self.alerts.all())
        except Exception:  # delivery must never cost a forecast
            logger.exception("alert delivery could not take this refresh's alerts")

    def _document(self, body: bytes, page: pages.Page | None = None) -> bytes:
        fields: dict[str, Any] = {"timestamp": self.batch_time, "model": self.model_info}
        if page is not None:
            fields.update(total=page.total, next_offset=page.next_offset)
        tail = json.dumps(fields, separators=(",", ":"))
        return b'{"predictions":[' + body + b"]," + tail[1:].encode()

    def _alerts_document(self, stamp: str | None) -> bytes:
        return json.dumps({"alerts": self.alerts.all(), "timestamp": stamp}, separators=(",", ":")).encode()

    # --- answers -------------------------------------------------------------------------------------
    def ensure_batch(self) -> None:
        """First request: compute a batch now when none exists yet but the store holds data."""
        if self._predictions is None:
            try:
                self.refresh()
            except Exception as exc:  # answer with what there is; /health reports degraded
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("forecast refresh failed")

    def predictions_json(self, include_history: bool = False) -> bytes:
        self.ensure_batch()
        with self._lock:
            self.predictions_served += 1
            if self._predictions is None:
                return self._document(b"")
            if not include_history:
                return self._predictions
            if self._predictions_full is None:
                self._predictions_full = self._document(b",".join(self._full[n] for n in self._order))
            return self._predictions_full

    def predictions_page(self, query: pages.Query, include_history: bool = False) -> bytes:
        """One page of ``GET /predictions`` (``serving/pages.py``): joined from the per-server fragments."""
        self.ensure_batch()
        with self._lock:
            self.predictions_served += 1
            page = pages.select(self._order, query, self._entries.__getitem__, "risk_level")
            source = self._full if include_history else self._fragments
            return self._document(b",".join(source[n] for n in page.items), page)

    def server_json(self, server_name: str) -> bytes | None:
        self.ensure_batch()
        with self._lock:
            found = self._full.get(server_name)
            if found is not None:
                self.predictions_served += 1
            return found

    def forecast_metrics(self, server: str | None = None, metric: str | None = None) -> bytes:
        """``GET /metrics/forecasts``: the latest forecasts in Prometheus' text format (ValueError: bad filter)."""
        self.ensure_batch()
        return self.exposition.render(server, metric)

    def alerts_json(self) -> bytes:
        self.ensure_batch()
        with self._lock:
            return self._alerts_json

    def alerts_page(self, query: pages.Query) -> bytes:
        """One page of ``GET /alerts`` (filtered by severity, profile, server prefix)."""
        self.ensure_batch()
        with self._lock:
            page = pages.select(self._alerts_list, query, lambda alert: alert, "severity")
            stamp = self.batch_time
        return json.dumps({"alerts": page.items, "timestamp": stamp, "total": page.total,
                           "next_offset": page.next_offset}, separators=(",", ":")).encode()

    @property
    def servers_tracked(self) -> int:
        with self._lock:
            return len(self._entries)

    # --- background ----------------------------------------------------------------------------------
    def _refresh_failed(self, exc: Exception) -> None:
        """Keep serving the last batch; /health reports degraded."""
        self.last_error = f"{type(exc).__name__}: {exc}"

    def start(self, interval: float | None = None) -> None:
        self._refresher.start(interval or get_settings().refresh_seconds)

    def stop(self) -> None:
        self._refresher.stop()

    @property
    def running(self) -> bool:
        return self._refresher.running
