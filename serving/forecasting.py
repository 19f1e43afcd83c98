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
a naive fallback, whichever scored better on the server's recent forecasts; entries say which
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

# servers per chunk of a refresh: the history, tensors and forecasts of one chunk are in memory at a time
# (100,000 servers x 576 steps read at once would be ~10 GB of Python objects; docs/performance.md "Fleet")
REFRESH_CHUNK = 5_000
_PAGE_FIELDS = ("server_name", "profile", "risk_level")  # what pages filter and sort on (serving/pages.py)
FIRST_BATCH_WAIT = 30.0  # seconds a first request waits for a refresh in progress (BentoML times out at 60)
Serialised = tuple[dict[str, Any], bytes, bytes]  # an entry's fields, its JSON, its JSON with history


def utcnow() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


# forecasts keep a third decimal: at 2, the band of a server idling at 0.13 % CPU (values in steps of
# 0.002) collapses onto one value and its P10-P90 covered 61 % of what came instead of 73 % (ec2 trace
# 24ae8d, docs/performance.md "Rounding"); everything else is rounded to 2
FORECAST_DECIMALS = 3


def _r(values: np.ndarray, decimals: int = 2) -> list[float]:
    return np.round(np.asarray(values, dtype=float), decimals).tolist()


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
    current: dict[str, Any] = {m: (None if m in missing else round(float(last[m]), 2)) for m in schema.METRICS}
    current["timestamp"] = schema.iso(last[schema.TIMESTAMP])
    entry = _entry_fields(fc, current, server_alerts, thresholds, sources, missing, profile_source)
    entry["history"] = _history_block(history, missing)
    return entry


def _entry_fields(fc: ServerForecast, current: dict[str, Any], server_alerts: list[dict[str, Any]],
                  thresholds: dict[str, dict[str, float]], sources: dict[str, str] | None,
                  missing: tuple[str, ...], profile_source: str | None) -> dict[str, Any]:
    """Everything of a GET /predictions element but its history."""
    reported = [m for m in schema.METRICS if m not in missing]
    predicted: dict[str, Any] = {m: (None if m in missing else round(float(fc.quantiles[m][-1, 1]), FORECAST_DECIMALS))
                                 for m in schema.METRICS}
    predicted["timestamp"] = schema.iso(fc.timestamps[-1])
    forecast: dict[str, Any] = {"timestamps": schema.iso_many(fc.timestamps.to_numpy())}
    for m in reported:
        q = fc.quantiles[m]
        forecast[m] = {f"p{p}": _r(q[:, i], FORECAST_DECIMALS) for i, p in enumerate((10, 50, 90))}
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
    }


def _server_rows(history: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{server: (first row, end row)}`` of a history sorted by server (each server's rows contiguous)."""
    names = history[schema.SERVER].to_numpy()
    if not len(names):
        return {}
    cuts = np.flatnonzero(names[1:] != names[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(names)]])
    out = {str(names[a]): (int(a), int(b)) for a, b in zip(starts, ends, strict=True)}
    if len(out) != len(starts):
        raise ValueError("history rows of a server are not contiguous")
    return out


class _StampCache:
    """JSON of a run of regular 5-minute timestamps (what every server of a live fleet shares), by run."""

    def __init__(self) -> None:
        self._runs: dict[tuple[int, int], str] = {}

    def json(self, ts_ns: np.ndarray) -> str:
        n = len(ts_ns)
        regular = n > 0 and int(ts_ns[-1]) - int(ts_ns[0]) == (n - 1) * int(schema.STEP.value)
        if not regular:
            return json.dumps(schema.iso_many(ts_ns.astype("datetime64[ns]")), separators=(",", ":"))
        key = (int(ts_ns[-1]), n)
        if key not in self._runs:
            self._runs[key] = json.dumps(schema.iso_many(ts_ns.astype("datetime64[ns]")), separators=(",", ":"))
        return self._runs[key]


def _serialised_entry(fc: ServerForecast, ts_ns: np.ndarray, last: np.ndarray, rounded: np.ndarray,
                      server_alerts: list[dict[str, Any]], thresholds: dict[str, dict[str, float]],
                      sources: dict[str, str] | None, missing: tuple[str, ...], profile_source: str | None,
                      stamps: _StampCache) -> tuple[dict[str, Any], bytes, bytes]:
    """:func:`build_entry` from arrays, serialised: (entry without history, its JSON, JSON with history).

    ``ts_ns`` (int64 ns) and ``rounded`` (values rounded to 2 places, [steps, metric]) are the server's
    history rows the answer shows, ``last`` its latest unrounded values. Gives the same bytes as
    ``json.dumps(build_entry(...))`` (``tests/serving/test_forecasting.py``) with one encoding of the
    forecast instead of two, the history's timestamps encoded once per distinct run, no per-server frame."""
    last_ts = pd.Timestamp(int(ts_ns[-1]))
    current: dict[str, Any] = {m: (None if m in missing else round(float(last[k]), 2))
                               for k, m in enumerate(schema.METRICS)}
    current["timestamp"] = schema.iso(last_ts)
    entry = _entry_fields(fc, current, server_alerts, thresholds, sources, missing, profile_source)
    slim = json.dumps(entry, separators=(",", ":")).encode()
    parts = [f'{{"timestamps":{stamps.json(ts_ns)}']
    for k, m in enumerate(schema.METRICS):
        parts.append(f',"{m}":' + ("null" if m in missing else json.dumps(rounded[:, k].tolist(),
                                                                           separators=(",", ":"))))
    parts.append("}")
    full = slim[:-1] + b',"history":' + "".join(parts).encode() + b"}"
    return entry, slim, full


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
        self._entries: dict[str, dict[str, Any]] = {}  # server -> the entry's _PAGE_FIELDS
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
            now = utcnow()
            entries: dict[str, tuple[dict[str, Any], bytes, bytes]] = {}
            sources: dict[str, dict[str, str]] = {}
            for first in range(0, len(servers), REFRESH_CHUNK):  # bounded memory whatever the fleet size
                part_entries, part_sources = self._refresh_part(servers[first:first + REFRESH_CHUNK], now)
                entries.update(part_entries)
                sources.update(part_sources)
            forecasts = entries  # the servers forecast
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

    def _refresh_part(self, servers: list[str], now: pd.Timestamp) -> tuple[dict[str, Serialised],
                                                                            dict[str, dict[str, str]]]:
        """History, forecasts, guard, alerts and serialised entries of some servers (one chunk of a refresh).

        Entries come back as (the fields pages filter and sort on, JSON, JSON with history): the whole entry
        goes to the Prometheus exposition here, so a refresh holds one chunk's entries as objects at a time."""
        history, missing = fill_missing_metrics(self.store.history(servers, steps=self.read_steps))
        forecasts = self.forecaster.forecast(history) if not history.empty else {}
        profile_sources = self.store.profile_sources(forecasts) if forecasts and hasattr(
            self.store, "profile_sources") else {}
        rows = _server_rows(history) if forecasts else {}
        sources: dict[str, dict[str, str]] = {}
        if self.guard is not None:  # serve the better of the model and the best naive
            by_server = {name: history.iloc[a:b] for name, (a, b) in rows.items()}
            forecasts, sources = self.guard.apply(forecasts, by_server, self.forecaster)
        ts_ns = history[schema.TIMESTAMP].to_numpy(dtype="datetime64[ns]").astype(np.int64) if forecasts else None
        values = history[list(schema.METRICS)].to_numpy(dtype=float) if forecasts else None
        rounded = np.round(values, 2) if values is not None else None
        entries: dict[str, tuple[dict[str, Any], bytes, bytes]] = {}
        thresholds: dict[str, dict[str, dict[str, float]]] = {}  # per profile
        stamps = _StampCache()
        opened: dict[str, list[str]] = {}  # server -> alert types that opened on the model's forecast
        for name, fc in forecasts.items():
            start, end = rows[name]
            gone = missing.get(name, ())  # never reported: no alert on a value that was filled in
            current = {m: float(values[end - 1, k]) for k, m in enumerate(schema.METRICS) if m not in gone}
            quantiles = {m: q for m, q in fc.quantiles.items() if m not in gone}
            recent = {m: values[start:end, k] for k, m in enumerate(schema.METRICS) if m not in gone}  # trend
            server_alerts = alert_rules.evaluate_forecast(name, fc.profile, quantiles, fc.timestamps,
                                                          fc.origin, current, self.alert_config, recent)
            types = self.alerts.update(name, server_alerts, fc.origin)  # data time: as in models.backtest
            if not types:  # nothing opened: the book is read once, in the second pass
                continue
            by_type = {a["alert_type"]: a for a in self.alerts.for_server(name)}
            new = [t for t in types if t in by_type and not by_type[t].get("already_above")
                   and sources.get(name, {}).get(by_type[t]["metric"], MODEL_SOURCE) == MODEL_SOURCE]
            if new:
                opened[name] = new
        self._add_drivers(history, opened)
        for name, fc in forecasts.items():
            start, end = rows[name]
            gone = missing.get(name, ())
            server_alerts = self.alerts.for_server(name)  # what the book holds open (persistence)
            if fc.profile not in thresholds:
                thresholds[fc.profile] = rule_thresholds(self.alert_config, fc.profile)
            first = max(start, end - self.history_steps)
            entries[name] = _serialised_entry(fc, ts_ns[first:end], values[end - 1], rounded[first:end],
                                              server_alerts, thresholds[fc.profile], sources.get(name), gone,
                                              profile_sources.get(name), stamps)
        self.exposition.update([e[0] for e in entries.values()], [], self.model_info, schema.iso(now))
        return {name: ({k: e[0][k] for k in _PAGE_FIELDS}, e[1], e[2]) for name, e in entries.items()}, sources

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

    def _publish(self, entries: dict[str, tuple[dict[str, Any], bytes, bytes]], dropped: list[str],
                 now: pd.Timestamp) -> None:
        """Swap in the new answers. The dicts are replaced, never changed in place, so a reader that took
        them under the lock joins its page outside it; the whole unpaged document is built on its first
        request (at 100,000 servers it is about a gigabyte that a paging client never asks for)."""
        slim = {name: e[0] for name, e in entries.items()}
        with self._lock:
            current = (self._entries, self._fragments, self._full)
        new_entries, new_fragments, new_full = (dict(d) for d in current)
        for name in dropped:
            for d in (new_entries, new_fragments, new_full):
                d.pop(name, None)
        new_entries.update(slim)
        new_fragments.update((name, e[1]) for name, e in entries.items())
        new_full.update((name, e[2]) for name, e in entries.items())
        order = [e["server_name"] for e in sorted(new_entries.values(), key=_sort_key)]
        alerts_list = self.alerts.all()
        with self._lock:
            self._entries, self._fragments, self._full = new_entries, new_fragments, new_full
            self.batch_time = schema.iso(now)
            self._order = order
            self._predictions = None  # built on the first unpaged request
            self._predictions_full = None  # built on first request with include_history
            self._alerts_list = alerts_list
            self._alerts_json = self._alerts_document(self.batch_time)
        self.exposition.update((), dropped, self.model_info, self.batch_time)

    def _deliver(self) -> None:
        """Hand the active alerts to the delivery (it queues what opened and resolved; never blocks)."""
        if self.delivery is None:
            return
        try:
            self.delivery.observe(self.alerts.all())
        except Exception:  # delivery must never cost a forecast
            logger.exception("alert delivery could not take this refresh's alerts")

    def _document_fields(self) -> dict[str, Any]:
        return {"timestamp": self.batch_time, "model": self.model_info}

    def _document(self, body: bytes, page: pages.Page | None = None, fields: dict[str, Any] | None = None) -> bytes:
        fields = dict(fields if fields is not None else self._document_fields())
        if page is not None:
            fields.update(total=page.total, next_offset=page.next_offset)
        tail = json.dumps(fields, separators=(",", ":"))
        return b'{"predictions":[' + body + b"]," + tail[1:].encode()

    def _alerts_document(self, stamp: str | None) -> bytes:
        return json.dumps({"alerts": self.alerts.all(), "timestamp": stamp}, separators=(",", ":")).encode()

    # --- answers -------------------------------------------------------------------------------------
    def ensure_batch(self) -> None:
        """First request: compute a batch now when none exists yet but the store holds data. A refresh in
        progress is waited for up to ``FIRST_BATCH_WAIT`` seconds, then the answer is empty (a first batch of
        100,000 servers takes minutes: an empty answer, not a gateway timeout)."""
        if self.batch_time is None:
            if not self._refresh_lock.acquire(timeout=FIRST_BATCH_WAIT):
                return
            self._refresh_lock.release()
            try:
                self.refresh()
            except Exception as exc:  # answer with what there is; /health reports degraded
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("forecast refresh failed")

    def predictions_json(self, include_history: bool = False) -> bytes:
        self.ensure_batch()
        with self._lock:
            self.predictions_served += 1
            if self.batch_time is None:
                return self._document(b"")
            if not include_history:
                if self._predictions is None:
                    self._predictions = self._document(b",".join(self._fragments[n] for n in self._order))
                return self._predictions
            if self._predictions_full is None:
                self._predictions_full = self._document(b",".join(self._full[n] for n in self._order))
            return self._predictions_full

    def predictions_page(self, query: pages.Query, include_history: bool = False) -> bytes:
        """One page of ``GET /predictions`` (``serving/pages.py``): joined from the per-server fragments.

        The batch's answers are taken under the lock and the page is selected outside it (a refresh
        replaces them, never changes them in place); a page without filters is a slice of the answer order."""
        self.ensure_batch()
        with self._lock:
            self.predictions_served += 1
            order, entries = self._order, self._entries
            source = self._full if include_history else self._fragments
            fields = self._document_fields()
        if query.levels is None and query.profiles is None and query.server_prefix is None:
            end = len(order) if query.limit is None else query.offset + query.limit
            page = pages.Page(order[query.offset:end], len(order), end if end < len(order) else None)
        else:
            page = pages.select(order, query, entries.__getitem__, "risk_level")
        return self._document(b",".join(source[n] for n in page.items), page, fields)

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
