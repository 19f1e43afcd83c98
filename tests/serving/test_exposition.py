"""Forecasts as Prometheus metrics (serving/exposition.py, GET /metrics/forecasts) at unit level and through
the in-process service. A real Prometheus scraping it is in test_alert_peers.py."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models import schema
from serving.exposition import ForecastExposition, server_series

STEPS = schema.HORIZON_STEPS


def entry(server: str = "db-01", ramp_to: float = 97.0, current: float = 61.0) -> dict[str, Any]:
    """A GET /predictions element: memory climbing linearly from ``current`` to ``ramp_to`` over 8 h, the
    other metrics flat (cpu and disk at 25 %, load at 2); origin 2025-10-12T21:40:00."""
    k = np.arange(1, STEPS + 1)
    flat = {"p10": [20.0] * STEPS, "p50": [25.0] * STEPS, "p90": [30.0] * STEPS}
    p50 = current + (ramp_to - current) * k / STEPS
    forecast = {m: flat for m in schema.METRICS}
    forecast["memory_percent"] = {"p10": list(p50 - 4), "p50": list(p50), "p90": list(p50 + 4)}
    forecast["load_average"] = {"p10": [1.5] * STEPS, "p50": [2.0] * STEPS, "p90": [2.5] * STEPS}
    return {
        "server_name": server, "profile": "database",
        "current": {"cpu_percent": 25.0, "memory_percent": current, "disk_percent": 25.0, "load_average": 2.0,
                    "timestamp": "2025-10-12T21:40:00"},
        "thresholds": {m: {"warning": 85.0, "critical": 95.0} for m in schema.PERCENT_METRICS}
        | {"load_average": {"warning": 8.0, "critical": 10.0}},
        "forecast": forecast,
    }


def families(text: bytes) -> dict[str, list[Any]]:
    """Parsed with prometheus_client's own parser: name -> samples (fails on malformed exposition)."""
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def sample(fams: dict[str, list[Any]], family: str, **labels: str) -> float | None:
    found = [s.value for s in fams.get(family, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (family, labels, found)
    return found[0] if found else None


def test_a_ramp_has_its_time_to_breach_where_p50_crosses_and_its_forecast_series() -> None:
    # P50 rises 0.375 points a step from 61: it reaches 85 at step 64 (5 h 20 min) and 95 at step 91
    e = entry(current=61.0, ramp_to=97.0)
    s = server_series(e)
    ttb = dict(s.samples("fleetcast_time_to_breach_seconds"))
    assert ttb[("memory_percent", "warning")] == 64 * 300.0
    assert ttb[("memory_percent", "critical")] == 91 * 300.0
    assert ("cpu_percent", "warning") not in ttb  # P50 stays below: no series
    prob = dict(s.samples("fleetcast_alert_probability"))
    assert prob[("memory_percent", "warning")] == pytest.approx(0.9 + 0.1 * min(1.0, (93.0 - 85.0) / 4.0))
    assert 0.5 < prob[("memory_percent", "critical")] < 0.9 and prob[("cpu_percent", "critical")] == 0.0
    forecast = dict(s.samples("fleetcast_forecast"))
    p50 = e["forecast"]["memory_percent"]["p50"]
    assert forecast[("memory_percent", "0.5", "1h")] == p50[11]
    assert forecast[("memory_percent", "0.9", "4h")] == e["forecast"]["memory_percent"]["p90"][47]
    assert forecast[("memory_percent", "0.1", "8h")] == e["forecast"]["memory_percent"]["p10"][95]
    assert len(forecast) == 4 * 3 * 3
    assert list(s.samples("fleetcast_forecast_origin_timestamp_seconds")) == [((), 1760305200.0)]  # 21:40:00Z


def test_already_above_is_zero_seconds_with_certainty() -> None:
    s = server_series(entry(current=96.0, ramp_to=70.0))
    assert dict(s.samples("fleetcast_time_to_breach_seconds"))[("memory_percent", "critical")] == 0.0
    assert dict(s.samples("fleetcast_time_to_breach_seconds"))[("memory_percent", "warning")] == 0.0
    assert dict(s.samples("fleetcast_alert_probability"))[("memory_percent", "critical")] == 1.0


def test_render_is_valid_exposition_with_filters_and_a_cache_per_refresh() -> None:
    exp = ForecastExposition()
    model = {"name": "fleetcast-tft", "version": "3", "run_id": "abc"}
    exp.update([entry("db-01"), entry("db-02"), entry("web-01", current=30.0, ramp_to=40.0)], [], model,
               "2025-10-12T21:40:05")
    whole = exp.render()
    assert exp.render() is whole  # cached until the next refresh
    fams = families(whole)
    assert set(fams) == {"fleetcast_forecast", "fleetcast_time_to_breach_seconds", "fleetcast_alert_probability",
                         "fleetcast_alert_threshold", "fleetcast_forecast_origin_timestamp_seconds",
                         "fleetcast_forecast_batch_timestamp_seconds", "fleetcast_model_info"}
    assert sample(fams, "fleetcast_alert_threshold", server="db-01", metric="load_average", level="critical") == 10.0
    assert sample(fams, "fleetcast_model_info", version="3", run_id="abc", name="fleetcast-tft") == 1.0
    assert sample(fams, "fleetcast_forecast_batch_timestamp_seconds") == 1760305205.0
    assert sample(fams, "fleetcast_time_to_breach_seconds", server="db-02", metric="memory_percent",
                  level="critical") == 91 * 300.0
    assert sample(fams, "fleetcast_time_to_breach_seconds", server="web-01", metric="memory_percent",
                  level="warning") is None
    assert len(fams["fleetcast_forecast"]) == 3 * 36
    # one series per (server, metric, level) at most: at most 61 per server (the documented cardinality)
    per_server = [s for f in ("fleetcast_forecast", "fleetcast_time_to_breach_seconds", "fleetcast_alert_probability",
                              "fleetcast_alert_threshold", "fleetcast_forecast_origin_timestamp_seconds")
                  for s in fams[f] if s.labels["server"] == "db-01"]
    assert len(per_server) == 36 + 2 + 8 + 8 + 1  # memory crosses both levels; the other metrics never

    part = families(exp.render(server="db-", metric="memory_percent"))
    assert {s.labels["server"] for s in part["fleetcast_forecast"]} == {"db-01", "db-02"}
    assert {s.labels["metric"] for s in part["fleetcast_forecast"]} == {"memory_percent"}
    assert {s.labels["server"] for s in part["fleetcast_forecast_origin_timestamp_seconds"]} == {"db-01", "db-02"}
    with pytest.raises(ValueError, match="metric: unknown metric 'mem'"):
        exp.render(metric="mem")

    exp.update([entry("db-01", current=20.0, ramp_to=30.0)], ["db-02"], model, "2025-10-12T21:45:05")
    fams = families(exp.render())
    assert {s.labels["server"] for s in fams["fleetcast_forecast_origin_timestamp_seconds"]} == {"db-01", "web-01"}
    assert sample(fams, "fleetcast_time_to_breach_seconds", server="db-01", metric="memory_percent",
                  level="warning") is None  # the new forecast no longer crosses
    assert not math.isnan(sample(fams, "fleetcast_forecast_batch_timestamp_seconds") or math.nan)


def test_the_service_serves_its_forecasts_as_prometheus_metrics(client: Any, h: Any) -> None:
    hot = h.series_items("hot-db-01", "database", {
        "cpu_percent": 30.0, "memory_percent": lambda i: 60.0 + 38.0 * i / 287, "disk_percent": 50.0,
        "load_average": 4.0})
    assert client.post("/feed/data", json={"records": hot + h.fleet_items(n_servers=2)}).status_code == 200
    r = client.get("/metrics/forecasts")
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    fams = families(r.content)
    served = client.get("/predictions/hot-db-01").json()
    for horizon, step in (("1h", 11), ("4h", 47), ("8h", 95)):
        for quantile, key in (("0.1", "p10"), ("0.5", "p50"), ("0.9", "p90")):
            assert sample(fams, "fleetcast_forecast", server="hot-db-01", metric="memory_percent", quantile=quantile,
                          horizon=horizon) == served["forecast"]["memory_percent"][key][step]
    assert sample(fams, "fleetcast_time_to_breach_seconds", server="hot-db-01", metric="memory_percent",
                  level="critical") == 0.0  # 98 % now
    assert len({s.labels["server"] for s in fams["fleetcast_forecast_origin_timestamp_seconds"]}) == 3
    assert client.get("/metrics/forecasts", params={"metric": "nope"}).status_code == 400
    only = families(client.get("/metrics/forecasts", params={"server": "hot-", "metric": "disk_percent"}).content)
    assert {(s.labels["server"], s.labels["metric"]) for s in only["fleetcast_forecast"]} == {
        ("hot-db-01", "disk_percent")}
    health = client.get("/health").json()
    assert health["alert_delivery"] == {"firing": None, "targets": []}  # none configured
