"""fleetcast against the real peers it talks to: Debian's Alertmanager and Prometheus, started on free
loopback ports with temporary storage and stopped after; the real service (tiny model) under uvicorn on
a loopback port. The Alertmanager, Prometheus and rule snippets of docs/operations.md are checked with
``amtool``/``promtool`` and run for real.

The alert comes from a server whose memory ramps to 98 % and stays above 95 % for two hours: the
service's alert rules raise it from the value itself (the tiny model, trained for seconds, does not carry
a ramp forward, so a forecast-only breach would depend on its training); it is cleared by a day of
memory at 40 %, which the model forecasts flat.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from fleetcast_testkit import free_port
from fleetcast_testkit.promstack import (
    AMTOOL_BIN,
    PROMTOOL_BIN,
    Alertmanager,
    LiveService,
    Prometheus,
    Receiver,
    require,
)

from models.config import PROJECT_ROOT

pytestmark = pytest.mark.slow

OPERATIONS = PROJECT_ROOT / "docs" / "operations.md"
HOT = "hot-db-01"
ALERT = "memory_exhaustion_predicted"


def doc_block(heading: str, lang: str = "yaml") -> str:
    """The first ```lang block under ``heading`` in docs/operations.md."""
    text = OPERATIONS.read_text(encoding="utf-8")
    assert heading in text, f"docs/operations.md has no {heading!r}"
    section = text.split(heading, 1)[1]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no {lang} block under {heading!r}"
    return match.group(1)


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def hot_items(h: Any, end: Any = None) -> list[dict[str, Any]]:
    return h.series_items(HOT, "database", {"cpu_percent": 30.0, "memory_percent": lambda i: 60.0 + 38.0 * i / 287,
                                            "disk_percent": 50.0, "load_average": 4.0}, end=end)


def calm_items(h: Any) -> list[dict[str, Any]]:
    return h.series_items(HOT, "database", {"cpu_percent": 30.0, "memory_percent": 40.0, "disk_percent": 50.0,
                                            "load_average": 4.0})


@pytest.fixture
def start_service(service_env: Path, asgi_app: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Start the real service (tiny model) on a loopback port with these extra settings."""
    running: list[LiveService] = []

    def start(**env: str) -> tuple[LiveService, httpx.Client]:
        assert not running, "one service per test"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        service = LiveService(asgi_app).start()
        running.append(service)
        return service, httpx.Client(base_url=service.url, timeout=120)

    yield start
    for service in running:
        service.stop()


def delivery_target(http: httpx.Client) -> dict[str, Any]:
    return http.get("/health").json()["alert_delivery"]["targets"][0]


def test_documented_configs_are_valid(tmp_path: Path) -> None:
    """The Alertmanager config, Prometheus config and rules of docs/operations.md, as their own tools see them."""
    (tmp_path / "alertmanager.yml").write_text(doc_block("### Alertmanager configuration"))
    checked = subprocess.run([require(AMTOOL_BIN, "prometheus-alertmanager"), "check-config",
                              str(tmp_path / "alertmanager.yml")], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "fleetcast-rules.yml").write_text(doc_block("### Prometheus rules"))
    (tmp_path / "prometheus.yml").write_text(doc_block("### Prometheus scrape configuration"))
    for args in (["check", "rules", "fleetcast-rules.yml"], ["check", "config", "prometheus.yml"]):
        checked = subprocess.run([require(PROMTOOL_BIN, "prometheus"), *args], capture_output=True, text=True,
                                 cwd=tmp_path, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS" in checked.stdout + checked.stderr


def test_an_alert_reaches_alertmanager_with_its_labels_and_is_resolved_there(
        start_service: Callable[..., Any], h: Any, tmp_path: Path) -> None:
    with Receiver() as rx, Alertmanager(tmp_path / "am", config=f"""
route:
  receiver: hook
  group_by: [alertname, server]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {rx.url}/from-alertmanager
        send_resolved: true
""") as am:
        _, http = start_service(FLEETCAST_ALERTMANAGER_URL=am.url,
                                FLEETCAST_ALERT_WEBHOOK_URL=f"{rx.url}/from-fleetcast",
                                FLEETCAST_EXTERNAL_URL="http://fleetcast.test:8000")
        day_ago = h.now_floor() - pd.Timedelta(hours=24)
        fed = http.post("/feed/data", json={"records": hot_items(h, end=day_ago) + h.fleet_items(n_servers=2)})
        assert fed.status_code == 200, fed.text
        ours = h.wait_for(lambda: [a for a in http.get("/alerts").json()["alerts"]
                                   if a["server_name"] == HOT and a["alert_type"] == ALERT], timeout=60)[0]

        found = h.wait_for(lambda: am.alerts(alertname=ALERT, server=HOT), timeout=30)
        assert len(found) == 1
        got = found[0]
        assert got["labels"] == {"alertname": ALERT, "server": HOT, "metric": "memory_percent",
                                 "severity": ours["severity"], "profile": "database", "level": ours["level"]}
        assert ours["level"] == "critical" and ours["current_value"] == 98.0
        ann = got["annotations"]
        assert ann["summary"] == ours["message"] and "Memory" in ann["summary"]
        assert ann["time_to_breach"] == "now" and ann["probability"] == f"{ours['probability']:.2f}"
        assert ann["threshold"] == "95" and ann["current_value"] == "98"
        if ours.get("explanation"):  # the alert rules' explanation, when they give one (issue 10's backtest)
            assert json.loads(ann["explanation"]) == ours["explanation"]
        assert parse_time(ann["breach_time"]) == datetime.fromisoformat(ours["prediction_time"]).replace(tzinfo=UTC)
        assert parse_time(got["startsAt"]) == datetime.fromisoformat(ours["first_seen"]).replace(tzinfo=UTC)
        assert (parse_time(got["endsAt"]) - datetime.now(UTC)).total_seconds() > 180  # 4 x 60 s resend ahead
        assert got["generatorURL"] == f"http://fleetcast.test:8000/predictions/{HOT}"
        assert got["status"]["state"] == "active"
        # Alertmanager routed it on fleetcast's labels to its receiver
        h.wait_for(lambda: [b for b in rx.bodies("/from-alertmanager") if b["status"] == "firing"
                            and b["commonLabels"].get("server") == HOT], timeout=30)
        target = h.wait_for(lambda: (t := delivery_target(http))["last_success"] and t, timeout=30)
        assert target["last_error"] is None and target["queue"] == 0

        # a day of memory at 40 %: the service clears the alert, and tells Alertmanager at once (its endsAt
        # was 4 minutes ahead, so only the resolve can end it within this test)
        assert http.post("/feed/data", json={"records": calm_items(h)}).status_code == 200
        h.wait_for(lambda: not [a for a in http.get("/alerts").json()["alerts"] if a["server_name"] == HOT],
                   timeout=60)
        h.wait_for(lambda: not am.alerts(server=HOT), timeout=30)
        resolved = h.wait_for(lambda: [b for b in rx.bodies("/from-alertmanager") if b["status"] == "resolved"
                                       and b["commonLabels"].get("server") == HOT], timeout=30)
        assert parse_time(resolved[0]["alerts"][0]["endsAt"]) <= datetime.now(UTC)

        # the plain webhook got fleetcast's own notifications: opened, then resolved
        hooks = [(b["status"], a["labels"]["server"]) for b in rx.bodies("/from-fleetcast") for a in b["alerts"]]
        assert hooks.index(("firing", HOT)) < hooks.index(("resolved", HOT))


def test_alertmanager_down_the_service_keeps_forecasting_and_delivers_once_it_is_back(
        start_service: Callable[..., Any], h: Any, tmp_path: Path) -> None:
    port = free_port()  # Alertmanager's, before it runs
    _, http = start_service(FLEETCAST_ALERTMANAGER_URL=f"http://127.0.0.1:{port}",
                            FLEETCAST_ALERT_RETRY_MAX_SECONDS="0.5")
    assert http.post("/feed/data", json={"records": hot_items(h)}).status_code == 200
    h.wait_for(lambda: [a for a in http.get("/alerts").json()["alerts"] if a["server_name"] == HOT], timeout=60)
    down = h.wait_for(lambda: (t := delivery_target(http))["consecutive_failures"] >= 2 and t, timeout=30)
    assert down["queue"] >= 1 and down["sent"] == 0 and down["last_success"] is None
    assert "ConnectError" in down["last_error"]

    # forecasting goes on meanwhile: a new server is forecast, health stays healthy
    newcomer = h.fleet_items(n_servers=1, seed=11)
    assert http.post("/feed/data", json={"records": newcomer}).status_code == 200
    h.wait_for(lambda: http.get(f"/predictions/{newcomer[0]['server_name']}").status_code == 200, timeout=60)
    assert http.get("/health").json()["status"] == "healthy"

    with Alertmanager(tmp_path / "am", port=port) as am:
        found = h.wait_for(lambda: am.alerts(alertname=ALERT, server=HOT), timeout=30)
        assert found[0]["labels"]["metric"] == "memory_percent"
        back = h.wait_for(lambda: (t := delivery_target(http))["queue"] == 0 and t["last_success"] and t,
                          timeout=30)
        assert back["sent"] >= 1 and back["consecutive_failures"] == 0


def test_prometheus_scrapes_the_forecasts_and_its_rules_use_them(
        start_service: Callable[..., Any], h: Any, tmp_path: Path) -> None:
    service, http = start_service()
    assert http.post("/feed/data", json={"records": hot_items(h) + h.fleet_items(n_servers=2)}).status_code == 200
    served = h.wait_for(lambda: h.prediction_of(http, HOT), timeout=60)

    # the documented scrape job and rules, pointed at this service, every second
    config = yaml.safe_load(doc_block("### Prometheus scrape configuration"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "fleetcast-forecasts")
    job.update(scrape_interval="1s", static_configs=[{"targets": [f"127.0.0.1:{service.port}"]}])
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(tmp_path / "prom" / "rules.yml")], "scrape_configs": [job]}
    with Prometheus(tmp_path / "prom", yaml.safe_dump(config), rules=doc_block("### Prometheus rules")) as prom:
        p50 = h.wait_for(lambda: prom.query(
            f'fleetcast_forecast{{server="{HOT}", metric="memory_percent", quantile="0.5", horizon="1h"}}'), timeout=30)
        assert float(p50[0]["value"][1]) == served["forecast"]["memory_percent"]["p50"][11]
        assert p50[0]["metric"]["job"] == "fleetcast-forecasts"
        band = prom.query(f'fleetcast_forecast{{server="{HOT}", metric="cpu_percent", horizon="8h"}}')
        assert {r["metric"]["quantile"]: float(r["value"][1]) for r in band} == {
            "0.1": served["forecast"]["cpu_percent"]["p10"][95], "0.5": served["forecast"]["cpu_percent"]["p50"][95],
            "0.9": served["forecast"]["cpu_percent"]["p90"][95]}
        breach = prom.query(f'fleetcast_time_to_breach_seconds{{server="{HOT}", metric="memory_percent"}}')
        assert {r["metric"]["level"]: float(r["value"][1]) for r in breach} == {"warning": 0.0, "critical": 0.0}
        assert len(prom.query('count by (server) (fleetcast_forecast_origin_timestamp_seconds)')) == 3
        assert prom.query('up{job="fleetcast-forecasts"}')[0]["value"][1] == "1"

        # the documented recording rule and alerting rule, evaluated by Prometheus on fleetcast's series
        hours = h.wait_for(lambda: prom.query(f'fleetcast:time_to_breach_hours:min{{server="{HOT}"}}'), timeout=30)
        assert {r["metric"]["metric"]: float(r["value"][1]) for r in hours} == {"memory_percent": 0.0}
        pending = h.wait_for(lambda: [a for a in prom.api("alerts")["alerts"] if a["labels"]["server"] == HOT
                                      and a["labels"]["alertname"] == "FleetcastCriticalBreachSoon"], timeout=30)
        assert {(a["labels"]["server"], a["labels"]["metric"], a["state"]) for a in pending} == {
            (HOT, "memory_percent", "pending")}  # held for 10 minutes before it fires
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        assert rules and all(r["health"] in ("ok", "unknown") for r in rules), rules
