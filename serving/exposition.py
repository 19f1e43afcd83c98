"""Forecasts as Prometheus metrics: ``GET /metrics/forecasts`` (text exposition format 0.0.4).

The series are worked out once per refresh from the engine's pre-computed entries (the same numbers as
``GET /predictions``), for the servers refreshed; a scrape only renders them (``prometheus_client``, a
collector over this snapshot). A server's rendered lines are kept until its next refresh, so a scrape
renders only the servers refreshed since the last one, and the whole unfiltered answer is cached until
the next refresh.

- ``fleetcast_forecast{server, metric, quantile, horizon}``: the forecast at origin + horizon, quantile
  0.1/0.5/0.9, horizon 1h/4h/8h (not all 96 steps);
- ``fleetcast_time_to_breach_seconds{server, metric, level}``: seconds from the forecast origin until P50
  reaches the level's (warning/critical) threshold; 0 when the value is already at or above it; absent
  when P50 stays below it over the horizon;
- ``fleetcast_alert_probability{server, metric, level}``: the chance of reaching the level's threshold
  within the horizon (the highest over its steps, from P10/P50/P90 as the alert rules compute it; 1 when
  already above);
- ``fleetcast_alert_threshold{server, metric, level}``: the threshold the alert rules apply to this server
  (its profile's), so a dashboard draws the line the alerts are raised on;
- ``fleetcast_forecast_origin_timestamp_seconds{server}``: the last observation the forecast starts from;
- ``fleetcast_forecast_batch_timestamp_seconds``: when the latest batch was computed;
- ``fleetcast_model_info{name, version, run_id}``: 1, the model serving.

Per server at most 36 + 8 + 8 + 8 + 1 = 61 series (1,000 servers: about 61,000). ``?server=<prefix>`` and
``?metric=<name>`` keep a scrape to part of the fleet (one Prometheus job per shard, or fewer series).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import numpy as np

from models import schema
from models.alerts import exceed_probability

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HORIZONS: dict[str, int] = {"1h": 12, "4h": 48, "8h": 96}  # label -> steps ahead
QUANTILES: dict[str, str] = {"p10": "0.1", "p50": "0.5", "p90": "0.9"}
LEVELS: tuple[str, ...] = ("warning", "critical")

FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {  # name -> (help, labels)
    "fleetcast_forecast": ("Forecast of a metric at origin + horizon, per quantile.",
                           ("server", "metric", "quantile", "horizon")),
    "fleetcast_time_to_breach_seconds": (
        "Seconds from the forecast origin until P50 reaches the level's threshold (0: already at or above).",
        ("server", "metric", "level")),
    "fleetcast_alert_probability": ("Chance of reaching the level's threshold within the forecast horizon.",
                                    ("server", "metric", "level")),
    "fleetcast_alert_threshold": ("The threshold the alert rules apply to this server, per level.",
                                  ("server", "metric", "level")),
    "fleetcast_forecast_origin_timestamp_seconds": ("Time of the last observation the forecast starts from.",
                                                    ("server",)),
    "fleetcast_forecast_batch_timestamp_seconds": ("When the latest forecast batch was computed.", ()),
}


# the label values after ``server`` of each family's series, in the order ServerSeries stores their values
FORECAST_KEYS: tuple[tuple[str, ...], ...] = tuple(
    (m, q, h) for m in schema.METRICS for h in HORIZONS for q in QUANTILES.values())
LEVEL_KEYS: tuple[tuple[str, ...], ...] = tuple((m, level) for m in schema.METRICS for level in LEVELS)
LAYOUT: dict[str, tuple[tuple[str, ...], ...]] = {
    "fleetcast_forecast": FORECAST_KEYS,
    "fleetcast_time_to_breach_seconds": LEVEL_KEYS,
    "fleetcast_alert_probability": LEVEL_KEYS,
    "fleetcast_alert_threshold": LEVEL_KEYS,
    "fleetcast_forecast_origin_timestamp_seconds": ((),),
}


def _epoch(stamp: str) -> float:
    ts = datetime.fromisoformat(stamp)
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class ServerSeries:
    """One server's values per family, in :data:`LAYOUT` order; NaN: no such series."""

    server: str
    values: dict[str, list[float]]

    def samples(self, family: str) -> Iterator[tuple[tuple[str, ...], float]]:
        """``(label values after server, value)`` of the series ``family`` has for this server."""
        for key, value in zip(LAYOUT[family], self.values[family], strict=True):
            if value == value:  # not NaN
                yield key, value


def fleet_series(entries: Iterable[Mapping[str, Any]]) -> list[ServerSeries]:
    """The series of ``GET /predictions`` elements (the engine's entries, with or without history), worked
    out with arrays over all servers at once, per metric and level."""
    entries = list(entries)
    n = len(entries)
    values = {family: np.full((n, len(keys)), np.nan) for family, keys in LAYOUT.items()}
    for mi, metric in enumerate(schema.METRICS):
        by_length: dict[int, list[int]] = {}  # one model gives one horizon; grouped anyway, to stack arrays
        for i, e in enumerate(entries):
            if metric in e["forecast"]:
                by_length.setdefault(len(e["forecast"][metric]["p50"]), []).append(i)
        for rows in by_length.values():
            _metric_values(mi, metric, [entries[i] for i in rows], np.asarray(rows), values)
    values["fleetcast_forecast_origin_timestamp_seconds"][:, 0] = [_epoch(e["current"]["timestamp"]) for e in entries]
    as_lists = {family: v.tolist() for family, v in values.items()}
    return [ServerSeries(str(e["server_name"]), {family: v[i] for family, v in as_lists.items()})
            for i, e in enumerate(entries)]


def _metric_values(mi: int, metric: str, entries: list[Mapping[str, Any]], rows: np.ndarray,
                   values: dict[str, np.ndarray]) -> None:
    q = np.asarray([[e["forecast"][metric][k] for k in QUANTILES] for e in entries], dtype=float)
    q = q.transpose(0, 2, 1)  # [servers, steps, P10/P50/P90]
    for hi, ahead in enumerate(HORIZONS.values()):
        if ahead <= q.shape[1]:
            col = (mi * len(HORIZONS) + hi) * len(QUANTILES)
            values["fleetcast_forecast"][rows, col:col + len(QUANTILES)] = q[:, ahead - 1, :]
    current = np.asarray([_float((e.get("current") or {}).get(metric)) for e in entries])
    for li, level in enumerate(LEVELS):
        col = mi * len(LEVELS) + li
        threshold = np.asarray([_float(((e.get("thresholds") or {}).get(metric) or {}).get(level)) for e in entries])
        known = ~np.isnan(threshold)
        above = known & (current >= threshold)
        crossing = q[:, :, 1] >= threshold[:, None]
        seconds = np.where(above, 0.0, (crossing.argmax(axis=1) + 1) * schema.STEP_MINUTES * 60.0)
        chance = np.ones(len(entries))
        for t in np.unique(threshold[known & ~above]):  # thresholds come per profile: a few values
            sel = (threshold == t) & ~above
            chance[sel] = exceed_probability(q[sel].reshape(-1, 3), float(t)).reshape(int(sel.sum()), -1).max(axis=1)
        values["fleetcast_alert_threshold"][rows, col] = threshold
        values["fleetcast_time_to_breach_seconds"][rows, col] = np.where(above | crossing.any(axis=1), seconds, np.nan)
        values["fleetcast_alert_probability"][rows, col] = np.where(known, np.round(chance, 4), np.nan)


def server_series(entry: Mapping[str, Any]) -> ServerSeries:
    """The series of one server (:func:`fleet_series` of one entry)."""
    return fleet_series([entry])[0]


class _Families:
    """A prometheus_client collector over a list of metric families (what ``generate_latest`` reads)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        yield from self.families


def _generate(families: list[Any]) -> bytes:
    # imported at first scrape, not with the service module (BentoML's workers set prometheus_client's
    # multiprocess directory after importing the service; an early import would break BentoML's /metrics)
    from prometheus_client.exposition import generate_latest

    return generate_latest(_Families(families))  # type: ignore[arg-type]


def _gauge(name: str, **kwargs: Any) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    doc, labels = FAMILIES[name]
    return GaugeMetricFamily(name, doc, labels=list(labels) if labels else None, **kwargs)


_HELP_LINE = re.compile(rb"(?m)^# HELP ")  # label values cannot start a line: newlines in them are escaped
Fragments = dict[tuple[str, str | None], bytes]  # (family, metric or None) -> the server's sample lines


def render_fragments(series: ServerSeries) -> Fragments:
    """One server's sample lines, per family and metric, in the text format (prometheus_client renders them;
    the headers it writes per family are cut, the scrape writes each family's once)."""
    by_key: dict[tuple[str, str | None], Any] = {}
    for name, layout in LAYOUT.items():
        for metric in ([None] if layout == ((),) else schema.METRICS):
            by_key[(name, metric)] = _gauge(name)
        for values, value in series.samples(name):
            by_key[(name, values[0] if values else None)].add_metric([series.server, *values], value)
    keys, families = list(by_key), list(by_key.values())
    chunks = _HELP_LINE.split(_generate(families))[1:]  # one per family: rest of HELP line, TYPE line, samples
    assert len(chunks) == len(keys)
    return {key: chunk.split(b"\n", 2)[2] for key, chunk in zip(keys, chunks, strict=True)}


class ForecastExposition:
    """The latest series of every server; :meth:`render` gives the exposition text. Thread-safe.

    Each server's sample lines are rendered once per refresh of that server, at the first scrape that
    needs them, and kept; a scrape joins them under each family's header. The whole unfiltered answer is
    cached until the next refresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, ServerSeries] = {}
        self._fragments: dict[str, Fragments] = {}  # server -> its rendered lines, while its series hold
        self._model: dict[str, Any] = {}
        self._batch: float | None = None
        self._cache: bytes | None = None
        self._version = 0  # one per update: a rendering of an older snapshot is not cached

    def update(self, entries: Iterable[Mapping[str, Any]], dropped: Iterable[str], model_info: Mapping[str, Any],
               batch_time: str | None) -> None:
        """After a refresh: the new entries' series replace their servers' (``dropped`` servers go)."""
        fresh = {s.server: s for s in fleet_series(entries)}
        with self._lock:
            for name in [*dropped, *fresh]:
                self._servers.pop(name, None)
                self._fragments.pop(name, None)
            self._servers.update(fresh)
            self._model = {k: model_info.get(k) for k in ("name", "version", "run_id")}
            self._batch = _epoch(batch_time) if batch_time else None
            self._cache = None
            self._version += 1

    def render(self, server: str | None = None, metric: str | None = None) -> bytes:
        """Text exposition 0.0.4 of the servers whose name starts with ``server``, of ``metric`` only if given.

        ValueError for an unknown metric."""
        if metric is not None and metric not in schema.METRICS:
            raise ValueError(f"metric: unknown metric {metric!r}; one of {', '.join(schema.METRICS)}")
        whole = not server and metric is None
        with self._lock:
            if whole and self._cache is not None:
                return self._cache
            names = sorted(n for n in self._servers if not server or n.startswith(server))
            stale = [self._servers[n] for n in names if n not in self._fragments]
            fragments = {n: self._fragments[n] for n in names if n in self._fragments}
            model, batch, version = dict(self._model), self._batch, self._version
        fresh = {s.server: render_fragments(s) for s in stale}  # outside the lock: scrapes never block a refresh
        fragments.update(fresh)
        with self._lock:
            for s in stale:
                if self._servers.get(s.server) is s:  # not refreshed meanwhile
                    self._fragments[s.server] = fresh[s.server]
        metrics = schema.METRICS if metric is None else (metric,)
        out = []
        for name, layout in LAYOUT.items():
            out.append(_header(name))
            wanted = [(name, None)] if layout == ((),) else [(name, m) for m in metrics]
            out += [fragments[n][key] for n in names for key in wanted]
        tail = []
        if batch is not None:
            tail.append(_gauge("fleetcast_forecast_batch_timestamp_seconds", value=batch))
        if model:
            from prometheus_client.core import InfoMetricFamily

            info = InfoMetricFamily("fleetcast_model", "The model serving the forecasts.")
            info.add_metric([], {k: "" if v is None else str(v) for k, v in model.items()})
            tail.append(info)
        out.append(_generate(tail))
        text = b"".join(out)
        if whole:
            with self._lock:
                if self._version == version:
                    self._cache = text
        return text


@cache
def _header(name: str) -> bytes:
    """``# HELP`` and ``# TYPE`` of a family, as prometheus_client writes them."""
    return _generate([_gauge(name)])
