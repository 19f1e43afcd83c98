"""The real BentoML service in-process (``Fleetcast.to_asgi()`` + Starlette TestClient)."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import pytest

from models import schema
from models.tft import Forecaster

METRICS = list(schema.METRICS)


def ndjson(items: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(i) for i in items).encode()


def assert_prediction_shape(p: dict[str, Any], with_history: bool) -> None:
    assert set(p["current"]) == {*METRICS, "timestamp"}
    assert set(p["predicted"]) == {*METRICS, "timestamp"}
    assert 0.0 <= p["confidence"] <= 1.0
    assert p["risk_level"] in ("low", "medium", "high", "critical")
    assert len(p["forecast"]["timestamps"]) == 96
    assert p["predicted"]["timestamp"] == p["forecast"]["timestamps"][-1]
    for m in METRICS:
        q = p["forecast"][m]
        assert len(q["p10"]) == len(q["p50"]) == len(q["p90"]) == 96
        assert all(lo <= mid <= hi for lo, mid, hi in zip(q["p10"], q["p50"], q["p90"], strict=True))
        assert p["predicted"][m] == q["p50"][-1]
    assert set(p["thresholds"]) == set(METRICS)  # every metric has a rule in models/alerts.yaml
    assert all(t["warning"] < t["critical"] for t in p["thresholds"].values())
    assert ("history" in p) is with_history
    if with_history:
        assert 12 <= len(p["history"]["timestamps"]) <= 288
        assert all(len(p["history"][m]) == len(p["history"]["timestamps"]) for m in METRICS)


@pytest.mark.parametrize("fmt", ["wrapped", "array", "ndjson", "ndjson-as-text", "gzip"])
def test_feed_24h_in_each_format_then_predictions(client: Any, h: Any, fmt: str) -> None:
    items = h.fleet_items()
    if fmt == "wrapped":
        r = client.post("/feed/data", json={"records": items})
    elif fmt == "array":
        r = client.post("/feed/data", json=items)
    elif fmt == "ndjson":
        r = client.post("/feed/data", content=ndjson(items), headers={"Content-Type": "application/x-ndjson"})
    elif fmt == "ndjson-as-text":
        r = client.post("/feed/data", content=ndjson(items), headers={"Content-Type": "text/plain"})
    else:
        r = client.post("/feed/data", content=gzip.compress(json.dumps({"records": items}).encode()),
                        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "success", "records_processed": len(items), "records_rejected": 0,
                        "errors": [], "warnings": []}

    r = client.get("/predictions")
    assert r.status_code == 200
    body = r.json()
    names = sorted({i["server_name"] for i in items})
    assert sorted(p["server_name"] for p in body["predictions"]) == names
    assert set(body["model"]) == {"name", "version", "run_id"}
    for p in body["predictions"]:
        assert_prediction_shape(p, with_history=False)
        assert p["history_steps"] == 288
        assert p["current"]["timestamp"] == h.now_floor().strftime("%Y-%m-%dT%H:%M:%S")
    order = [(["critical", "high", "medium", "low"].index(p["risk_level"]), p["server_name"])
             for p in body["predictions"]]
    assert order == sorted(order)

    full = client.get("/predictions", params={"include_history": "true"}).json()
    for p in full["predictions"]:
        assert_prediction_shape(p, with_history=True)
        assert len(p["history"]["timestamps"]) == 288
    one = client.get(f"/predictions/{names[0]}")
    assert one.status_code == 200
    assert_prediction_shape(one.json(), with_history=True)


def test_retried_batch_does_not_duplicate(client: Any, h: Any) -> None:
    items = h.fleet_items(n_servers=2, steps=24)
    assert client.post("/feed/data", json=items).status_code == 200
    assert client.post("/feed/data", json=items).status_code == 200
    assert client.get("/health").json()["records_stored"] == 48


def test_memory_already_high_and_rising_raises_an_alert(client: Any, h: Any) -> None:
    hot = h.series_items("hot-db-01", "database", {
        "cpu_percent": 30.0, "memory_percent": lambda i: 90.0 + 7.0 * i / 287, "disk_percent": 50.0,
        "load_average": 4.0})
    calm = h.fleet_items(n_servers=2)
    assert client.post("/feed/data", json={"records": hot + calm}).status_code == 200
    body = client.get("/alerts").json()
    mine = [a for a in body["alerts"] if a["server_name"] == "hot-db-01"
            and a["alert_type"] == "memory_exhaustion_predicted"]
    assert len(mine) == 1
    a = mine[0]
    assert a["severity"] == "critical" and a["threshold"] == 95.0 and a["current_value"] == 97.0
    assert a["hours_to_breach"] == 0.0 and "Memory" in a["message"]
    assert {"timestamp", "prediction_time", "probability", "predicted_value", "metric", "profile"} <= set(a)
    preds = client.get("/predictions").json()["predictions"]
    assert preds[0]["server_name"] == "hot-db-01" and preds[0]["risk_level"] == "critical"


def test_health_reports_model_store_and_traffic(client: Any, h: Any) -> None:
    before = client.get("/health").json()
    assert before["model_loaded"] is True and before["demo_fleet"] is False
    assert before["records_stored"] == 0 and before["last_feed_time"] is None
    assert before["model"]["source"].startswith("file:")
    client.post("/feed/data", json=h.fleet_items(n_servers=2))
    client.get("/predictions")
    after = client.get("/health").json()
    assert after["status"] == "healthy"
    assert after["records_stored"] == 576 and after["servers_tracked"] == 2
    assert after["predictions_served"] == 1 and after["last_prediction"] is not None
    assert after["uptime_seconds"] >= before["uptime_seconds"]
    assert client.get("/readyz").status_code == 200 and client.get("/livez").status_code == 200


def test_new_unknown_server_with_unknown_profile_gets_a_forecast(client: Any, h: Any,
                                                                 tiny_checkpoint: Path) -> None:
    assert client.post("/feed/data", json=h.fleet_items(n_servers=2)).status_code == 200
    assert client.get("/predictions").status_code == 200  # first batch
    newcomer = h.series_items("brand-new-host-77", "quantum_box", {
        "cpu_percent": lambda i: 20 + 10 * (i % 12) / 12, "memory_percent": 40.0, "disk_percent": 30.0,
        "load_average": 1.5}, steps=36)  # 3 h of history only
    r = client.post("/feed/data", json=newcomer)
    assert r.status_code == 200
    assert r.json()["warnings"][0] == {"index": 0, "warning": "unknown profile 'quantum_box' mapped to 'generic'"}
    p = h.wait_for(lambda: h.prediction_of(client, "brand-new-host-77"))
    assert "brand-new-host-77" not in Forecaster.from_checkpoint(tiny_checkpoint).training_servers
    assert p["seen_in_training"] is False and p["profile"] == "generic" and p["history_steps"] == 36
    assert_prediction_shape(p, with_history=True)


def test_mixed_batch_stores_valid_records_and_names_bad_ones(client: Any, h: Any) -> None:
    items = h.fleet_items(n_servers=1, steps=5)
    items[1] = {**items[1], "cpu_percent": 140}
    items[3] = {**items[3], "server_name": "bad name!"}
    r = client.post("/feed/data", json={"records": items})
    assert r.status_code == 200
    body = r.json()
    # a bad value costs only itself (record 1 keeps its other metrics); a bad server name costs its record
    assert body["status"] == "partial" and body["records_processed"] == 4 and body["records_rejected"] == 1
    assert body["errors"][0] == {"index": 1, "error": "cpu_percent: Input should be less than or equal to 100",
                                 "kept": ["memory_percent", "disk_percent", "load_average"]}
    assert body["errors"][1]["index"] == 3 and body["errors"][1]["error"].startswith("server_name:")
    assert client.get("/health").json()["records_stored"] == 4


def test_logstash_style_fields_are_mapped(client: Any, h: Any) -> None:
    ts = h.now_floor().strftime("%Y-%m-%dT%H:%M:%S.000Z")
    event = {"@timestamp": ts, "hostname": "ls-web-01", "cpu": 45.2, "memory": 62.1, "disk": 35.8, "load": 2.3,
             "status": "healthy", "server_profile": "web_api", "@version": "1"}
    r = client.post("/feed/data", json=event)  # Logstash http output, format => "json": one event
    assert r.status_code == 200 and r.json()["records_processed"] == 1


# The bad-input table (every refused input, its status and message, with a valid record beside it) is
# tests/serving/test_input_table.py.


def test_predictions_carry_the_thresholds_of_the_alerts_file_in_force(make_client: Any, h: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """FLEETCAST_ALERTS_FILE elsewhere: each entry's thresholds (what the dashboard draws) and the alerts
    follow that file, per profile."""
    rules = tmp_path / "alerts.yaml"
    rules.write_text("""
rules:
  - {alert_type: cpu_spike_predicted, metric: cpu_percent, warning: 10.0, critical: 20.0}
  - {alert_type: load_surge_predicted, metric: load_average, warning: 50.0, critical: 60.0}
profiles:
  database:
    load_average: {warning: 70.0, critical: 80.0}
""")
    monkeypatch.setenv("FLEETCAST_ALERTS_FILE", str(rules))
    client = make_client()
    web = h.series_items("web-01", "web_api", {"cpu_percent": 30.0, "memory_percent": 40.0, "disk_percent": 40.0,
                                               "load_average": 1.0})
    db = h.series_items("db-01", "database", {"cpu_percent": 5.0, "memory_percent": 40.0, "disk_percent": 40.0,
                                              "load_average": 1.0})
    assert client.post("/feed/data", json=web + db).status_code == 200
    web_p = h.wait_for(lambda: h.prediction_of(client, "web-01"))
    db_p = h.wait_for(lambda: h.prediction_of(client, "db-01"))
    assert web_p["thresholds"] == {"cpu_percent": {"warning": 10.0, "critical": 20.0},
                                   "load_average": {"warning": 50.0, "critical": 60.0}}
    assert db_p["thresholds"]["load_average"] == {"warning": 70.0, "critical": 80.0}
    listed = {p["server_name"]: p for p in client.get("/predictions").json()["predictions"]}
    assert listed["web-01"]["thresholds"] == web_p["thresholds"]
    web_alerts = [a for a in client.get("/alerts").json()["alerts"] if a["server_name"] == "web-01"]
    assert [(a["alert_type"], a["threshold"]) for a in web_alerts] == [("cpu_spike_predicted", 20.0)]


def test_unknown_server_is_404(client: Any) -> None:
    r = client.get("/predictions/nobody-here")
    assert r.status_code == 404 and "nobody-here" in r.json()["detail"]


def test_no_model_is_503_and_degraded_health(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_MODEL_PATH", "/nonexistent/tft.pt")
    broken = make_client()
    r = broken.get("/predictions")
    assert r.status_code == 503 and "could not be loaded" in r.json()["detail"]
    health = broken.get("/health").json()
    assert health["status"] == "degraded" and health["model_loaded"] is False
    assert "could not be loaded" in health["error"] and "nonexistent" not in health["error"]  # no path


def test_scenario_set_is_409_with_demo_fleet_off(client: Any) -> None:
    r = client.post("/scenario/set", json={"scenario": "critical"})
    assert r.status_code == 409 and "FLEETCAST_DEMO_FLEET=1" in r.json()["detail"]
    state = client.get("/scenario").json()
    assert state["demo_fleet"] is False and state["scenario"] == "baseline" and "memory_leak" in state["available"]


def test_write_endpoints_need_the_token_when_set(make_client: Any, h: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_API_TOKEN", "s3cret")
    client = make_client()
    items = h.fleet_items(n_servers=1, steps=2)
    assert client.post("/feed/data", json=items).status_code == 401
    r = client.post("/feed/data", json=items, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert client.post("/scenario/set", json={"scenario": "baseline"}).status_code == 401
    assert client.post("/feed/data", json=items, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200  # reads stay open


def test_write_endpoints_are_rate_limited_per_client(make_client: Any, h: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_RATE_LIMIT_PER_SECOND", "0.01")
    monkeypatch.setenv("FLEETCAST_RATE_LIMIT_BURST", "3")
    client = make_client()
    items = h.fleet_items(n_servers=1, steps=1)
    codes = [client.post("/feed/data", json=items).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = client.post("/feed/data", json=items)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "rate limit" in r.json()["detail"]
    assert client.get("/predictions").status_code == 200  # reads are not limited


def test_service_loads_the_champion_from_the_bentoml_model_store(make_client: Any, tiny_checkpoint: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import model_store

    monkeypatch.delenv("FLEETCAST_MODEL_PATH")
    model = model_store.import_checkpoint(tiny_checkpoint, {"name": "fleetcast-tft", "version": "7",
                                                            "run_id": "run-abc", "metrics": {"mae_cpu": 3.2}})
    assert model.info.labels["registry_version"] == "7"
    again = model_store.import_checkpoint(tiny_checkpoint, {"version": "7", "run_id": "run-abc"})
    assert again.tag == model.tag  # same registry version: no second copy
    health = make_client().get("/health").json()
    assert health["model"] == {"name": "fleetcast-tft", "version": "7", "run_id": "run-abc",
                               "source": f"bentoml:{model.tag}"}
    assert health["model_loaded"] is True


def test_service_switches_to_a_newly_packaged_champion_without_a_restart(
        make_client: Any, h: Any, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import model_store

    monkeypatch.delenv("FLEETCAST_MODEL_PATH")
    monkeypatch.setenv("FLEETCAST_MODEL_POLL_SECONDS", "0.2")
    client = make_client()
    health = client.get("/health").json()  # started before any model was packaged: feed only
    assert health["model_loaded"] is False and health["status"] == "degraded"
    assert client.post("/feed/data", json=h.fleet_items(n_servers=3)).status_code == 200
    assert client.get("/predictions").status_code == 503

    first = model_store.import_checkpoint(tiny_checkpoint, {"name": "fleetcast-tft", "version": "7", "run_id": "r7"})
    h.wait_for(lambda: client.get("/health").json()["model"]["version"] == "7", timeout=30)
    doc = h.wait_for(lambda: (d := client.get("/predictions").json())["predictions"] and d)
    assert doc["model"]["version"] == "7" and len(doc["predictions"]) == 3

    second = model_store.import_checkpoint(tiny_checkpoint, {"name": "fleetcast-tft", "version": "8", "run_id": "r8"})
    assert second.tag != first.tag and model_store.current_tag() == str(second.tag)
    h.wait_for(lambda: client.get("/health").json()["model"]["version"] == "8", timeout=30)
    health = client.get("/health").json()
    assert health["model"] == {"name": "fleetcast-tft", "version": "8", "run_id": "r8",
                               "source": f"bentoml:{second.tag}"}
    assert health["status"] == "healthy" and health["servers_tracked"] == 3
    doc = client.get("/predictions").json()  # every server forecast again by the new model, no new data needed
    assert doc["model"] == {"name": "fleetcast-tft", "version": "8", "run_id": "r8"}
    assert len(doc["predictions"]) == 3


def test_a_model_file_pins_the_service(make_client: Any, tiny_checkpoint: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import model_store

    monkeypatch.setenv("FLEETCAST_MODEL_POLL_SECONDS", "0.1")
    client = make_client()  # FLEETCAST_MODEL_PATH is set by the fixture
    model_store.import_checkpoint(tiny_checkpoint, {"name": "fleetcast-tft", "version": "9", "run_id": "r9"})
    time.sleep(1.0)  # ten polls' worth: a watcher, if there were one, would have switched
    assert client.get("/health").json()["model"]["source"] == f"file:{tiny_checkpoint.name}"


def test_real_cloudwatch_traces_through_the_feed(client: Any, h: Any, nab_traces: list[Path],
                                                 nab_records: Any) -> None:
    """Five AWS CPU traces (NAB), posted as NDJSON with their own timestamps moved forward by whole weeks
    (2014 is older than the accepted window): one trace runs 4 minutes off the 5-minute grid and has 15-
    and 20-minute gaps; every server gets a full-history forecast."""
    from serving.demo_fleet import frame_to_items

    frames = {csv: h.shift_to_recent(nab_records(csv, profile).tail(2 * 288))
              for csv, profile in zip(nab_traces, schema.PROFILES, strict=False)}
    items = [item for frame in frames.values() for item in frame_to_items(frame)]
    r = client.post("/feed/data", content=ndjson(items), headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["records_processed"] == len(items) and body["records_rejected"] == 0
    names = sorted(frame[schema.SERVER].iloc[0] for frame in frames.values())
    doc = h.wait_for(lambda: (d := client.get("/predictions").json())
                     and sorted(p["server_name"] for p in d["predictions"]) == names and d)
    by_name = {p["server_name"]: p for p in doc["predictions"]}
    for frame in frames.values():
        name = frame[schema.SERVER].iloc[0]
        p = by_name[name]
        assert_prediction_shape(p, with_history=False)
        last = frame[schema.TIMESTAMP].iloc[-1].floor("5min")  # off-grid samples land in their bucket
        assert p["current"]["timestamp"] == last.strftime("%Y-%m-%dT%H:%M:%S"), name
        assert p["history_steps"] == 288, name  # short gaps are filled, not cutting the history
        cpu = frame.loc[frame[schema.TIMESTAMP].dt.floor("5min") == last, "cpu_percent"].mean()
        assert p["current"]["cpu_percent"] == pytest.approx(cpu, abs=0.01)
