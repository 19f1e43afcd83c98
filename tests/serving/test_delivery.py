"""Alert delivery (serving/delivery.py) at unit level: the Alertmanager mapping, the event diff, the bounded
queue, retries and resends against a local HTTP receiver. The real Alertmanager is in
test_alert_peers.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleetcast_testkit.promstack import Receiver

from serving import delivery as d


def alert(server: str = "db-01", severity: str = "critical", hours: float = 1.5, **extra: Any) -> dict[str, Any]:
    """An element of GET /alerts as the service lists it."""
    return {"server_name": server, "profile": "database", "alert_type": "memory_exhaustion_predicted",
            "severity": severity, "level": "critical", "message": "Memory expected to reach 95% in 1 hour 30 minutes",
            "timestamp": "2025-10-12T21:40:05", "first_seen": "2025-10-12T21:10:05",
            "prediction_time": "2025-10-12T23:10:00", "metric": "memory_percent", "threshold": 95.0,
            "current_value": 88.4, "predicted_value": 95.3, "probability": 0.71, "hours_to_breach": hours, **extra}


def wait_for(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def receiver() -> Any:
    with Receiver() as r:
        yield r


def test_an_alert_as_alertmanager_sees_it() -> None:
    am = d.alertmanager_alert(alert(server="web 01/a", explanation={"evidence": "forecast", "probability": 0.7}),
                              "http://fleetcast.example:8000/")
    assert am["labels"] == {"alertname": "memory_exhaustion_predicted", "server": "web 01/a",
                            "metric": "memory_percent", "severity": "critical", "profile": "database",
                            "level": "critical"}
    ann = am["annotations"]
    assert ann["summary"] == "Memory expected to reach 95% in 1 hour 30 minutes"
    assert ann["time_to_breach"] == "1 hour 30 minutes"
    assert ann["probability"] == "0.71" and ann["breach_time"] == "2025-10-12T23:10:00.000Z"
    assert (ann["threshold"], ann["current_value"], ann["predicted_value"]) == ("95", "88.4", "95.3")
    assert ann["explanation"] == '{"evidence":"forecast","probability":0.7}'
    assert am["startsAt"] == "2025-10-12T21:10:05.000Z"
    assert am["generatorURL"] == "http://fleetcast.example:8000/predictions/web%2001%2Fa"
    assert "endsAt" not in am
    already = d.alertmanager_alert(alert(hours=0.0), "http://x")
    assert already["annotations"]["time_to_breach"] == "now" and "explanation" not in already["annotations"]


def test_observe_tells_opened_updated_and_resolved_by_label_set() -> None:
    now = [datetime(2025, 10, 12, 22, 0, tzinfo=UTC)]
    delivery = d.AlertDelivery(clock=lambda: now[0])
    assert [k for k, _ in delivery.observe([alert("a"), alert("b")])] == ["opened", "opened"]
    assert delivery.observe([alert("a"), alert("b")]) == []  # nothing changed
    events = delivery.observe([alert("a", hours=1.0), alert("b")])
    assert [(k, a["labels"]["server"]) for k, a in events] == [("updated", "a")]
    assert events[0][1]["annotations"]["time_to_breach"] == "1 hour"
    now[0] += timedelta(minutes=5)
    # b gone: resolved now; a's severity changed: in Alertmanager another alert, so the old one resolves
    events = delivery.observe([alert("a", severity="high", hours=1.0)])
    kinds = sorted((k, a["labels"]["server"], a["labels"]["severity"]) for k, a in events)
    assert kinds == [("opened", "a", "high"), ("resolved", "a", "critical"), ("resolved", "b", "critical")]
    resolved = [a for k, a in events if k == "resolved"]
    assert all(a["endsAt"] == "2025-10-12T22:05:00.000Z" for a in resolved)
    assert all(a["startsAt"] == "2025-10-12T21:10:05.000Z" for a in resolved)
    # a resend carries the firing alert and, for 15 minutes, the resolved ones
    assert sorted(a["labels"]["severity"] + "/" + a["labels"]["server"] for a in delivery.snapshot()) == [
        "critical/a", "critical/b", "high/a"]
    now[0] += timedelta(minutes=16)
    delivery.observe([alert("a", severity="high", hours=1.0)])
    assert [a["labels"]["server"] for a in delivery.snapshot()] == ["a"]
    assert delivery.firing == 1


def test_the_queue_keeps_the_latest_state_and_never_drops_a_resolve() -> None:
    q = d.PendingQueue(capacity=3)

    def am(server: str, resolved: bool = False, note: str = "") -> dict[str, Any]:
        a = {"labels": {"alertname": "x", "server": server}, "annotations": {"summary": note}}
        return {**a, "endsAt": "2025-10-12T22:00:00.000Z"} if resolved else a

    def key(server: str) -> d.Key:
        return d.alert_key(am(server))

    assert q.put(key("r1"), am("r1", resolved=True)) == 0
    assert q.put(key("f1"), am("f1")) == 0
    assert q.put(key("f2"), am("f2")) == 0
    assert q.put(key("f1"), am("f1", note="newer")) == 0  # replaces, moves to the back: still 3
    assert [k[1][1] for k, _ in q.peek(10)] == ["r1", "f2", "f1"]
    assert q.put(key("r2"), am("r2", resolved=True)) == 1  # full: the oldest firing (f2) goes, not r1
    assert [k[1][1] for k, _ in q.peek(10)] == ["r1", "f1", "r2"]
    assert q.peek(10)[1][1].alert["annotations"]["summary"] == "newer"
    assert q.put(key("r3"), am("r3", resolved=True)) == 1  # f1 goes
    assert q.put(key("r4"), am("r4", resolved=True)) == 0  # only resolves left: kept beyond the size
    assert len(q) == 4 and q.dropped == 2
    batch = q.peek(2)
    q.put(key("r1"), am("r1", resolved=True, note="again"))  # a newer state arrives while r1 is in flight
    q.ack(batch)
    assert [k[1][1] for k, _ in q.peek(10)] == ["r3", "r4", "r1"]


def test_alertmanager_gets_firing_alerts_with_endsat_ahead_and_resolves_with_their_end(receiver: Receiver) -> None:
    delivery = d.AlertDelivery([receiver.url + "/am"], resend_seconds=30.0, external_url="http://fc:8000")
    delivery.start()
    try:
        delivery.observe([alert("a")])
        body = wait_for(lambda: receiver.bodies("/am/api/v2/alerts"))[0]
        assert [a["labels"]["server"] for a in body] == ["a"]
        ends = datetime.fromisoformat(body[0]["endsAt"].replace("Z", "+00:00"))
        ahead = (ends - datetime.now(UTC)).total_seconds()
        assert 100 < ahead <= 120  # four resend intervals, as Prometheus' rule manager sends them
        assert body[0]["generatorURL"] == "http://fc:8000/predictions/a"
        delivery.observe([])
        resolved = wait_for(lambda: receiver.bodies("/am/api/v2/alerts")[1:])[0]
        assert resolved[0]["labels"]["server"] == "a"
        assert abs((datetime.fromisoformat(resolved[0]["endsAt"].replace("Z", "+00:00"))
                    - datetime.now(UTC)).total_seconds()) < 5
        # the receiver records a body before it answers; the target counts it once answered
        status = wait_for(lambda: (t := delivery.status()["targets"][0])["queue"] == 0 and t)
        assert status["sent"] == 2 and status["last_error"] is None
        assert status["last_success"] is not None and status["kind"] == "alertmanager"
    finally:
        delivery.stop()


def test_firing_alerts_are_resent_with_fresh_annotations_and_resolves_for_a_while(receiver: Receiver) -> None:
    delivery = d.AlertDelivery([receiver.url], resend_seconds=0.3)
    delivery.start()
    try:
        delivery.observe([alert("a"), alert("b")])
        delivery.observe([alert("a", hours=0.5)])  # b resolved, a updated: the update travels with a resend
        sent = wait_for(lambda: len(receiver.bodies()) >= 4 and receiver.bodies())
        last = {a["labels"]["server"]: a for a in sent[-1]}
        assert set(last) == {"a", "b"}  # the resend: firing a, and b resolved less than 15 min ago
        assert last["a"]["annotations"]["time_to_breach"] == "30 minutes"
        assert datetime.fromisoformat(last["b"]["endsAt"].replace("Z", "+00:00")) < datetime.now(UTC)
        assert datetime.fromisoformat(last["a"]["endsAt"].replace("Z", "+00:00")) > datetime.now(UTC)
    finally:
        delivery.stop()


def test_a_down_target_is_retried_with_backoff_and_gets_everything_once_back(receiver: Receiver) -> None:
    receiver.status = 503
    delivery = d.AlertDelivery([receiver.url], webhook_urls=[receiver.url + "/hook"], resend_seconds=600,
                               retry_max_seconds=0.2)
    delivery.start()
    try:
        delivery.observe([alert("a"), alert("b")])
        delivery.observe([alert("a")])  # b resolves while the targets are down
        wait_for(lambda: all(t["consecutive_failures"] >= 2 for t in delivery.status()["targets"]))
        for target in delivery.status()["targets"]:
            assert target["queue"] == 2 and target["sent"] == 0
            assert target["last_error"].startswith("HTTP 503") and target["last_success"] is None
        assert receiver.bodies() == []
        receiver.status = 200
        wait_for(lambda: all(t["queue"] == 0 for t in delivery.status()["targets"]))
        am = {a["labels"]["server"]: a for a in receiver.bodies("/api/v2/alerts")[0]}
        assert set(am) == {"a", "b"} and "endsAt" in am["b"]
        assert datetime.fromisoformat(am["b"]["endsAt"].replace("Z", "+00:00")) < datetime.now(UTC)
        hook = receiver.bodies("/hook")[0]
        assert hook["version"] == "4" and hook["status"] == "firing" and hook["receiver"] == "fleetcast"
        states = {a["labels"]["server"]: (a["status"], a["endsAt"]) for a in hook["alerts"]}
        assert states["a"] == ("firing", d.ZERO_TIME) and states["b"][0] == "resolved"
        assert hook["commonLabels"] == {"alertname": "memory_exhaustion_predicted", "metric": "memory_percent",
                                        "severity": "critical", "profile": "database", "level": "critical"}
        assert all(len(a["fingerprint"]) == 16 for a in hook["alerts"])
        assert all(t["last_success"] is not None for t in delivery.status()["targets"])
    finally:
        delivery.stop()


def test_an_alert_the_target_refuses_is_dropped_not_retried_for_ever(receiver: Receiver) -> None:
    receiver.status = 400
    delivery = d.AlertDelivery([], webhook_urls=[receiver.url], retry_max_seconds=0.1)
    delivery.start()
    try:
        delivery.observe([alert("a")])
        status = wait_for(lambda: [t for t in delivery.status()["targets"] if t["dropped"] == 1])[0]
        assert status["queue"] == 0 and status["last_error"].startswith("HTTP 400")
        receiver.status = 200
        delivery.observe([])  # the next change goes through
        wait_for(lambda: receiver.bodies())
        assert receiver.bodies()[0]["status"] == "resolved"
    finally:
        delivery.stop()


def test_settings_give_targets_and_hide_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.settings import get_settings

    assert d.from_settings(get_settings()) is None  # nothing configured: no delivery, no thread
    monkeypatch.setenv("FLEETCAST_ALERTMANAGER_URL", " http://am1:9093/ , http://u:secret@am2:9093")
    monkeypatch.setenv("FLEETCAST_ALERT_WEBHOOK_URL", "https://hooks.example/fleetcast")
    monkeypatch.setenv("FLEETCAST_ALERT_RESEND_SECONDS", "15")
    delivery = d.from_settings(get_settings())
    assert delivery is not None and delivery.resend_seconds == 15.0
    assert [(t.kind, t.endpoint) for t in delivery.targets] == [
        ("alertmanager", "http://am1:9093/api/v2/alerts"), ("alertmanager", "http://u:secret@am2:9093/api/v2/alerts"),
        ("webhook", "https://hooks.example/fleetcast")]
    assert [t["url"] for t in delivery.status()["targets"]] == [
        "http://am1:9093", "http://am2:9093", "https://hooks.example/fleetcast"]
    delivery.stop()
    monkeypatch.setenv("FLEETCAST_ALERTMANAGER_URL", "alertmanager-host:9093")  # no scheme
    with pytest.raises(ValueError, match="FLEETCAST_ALERTMANAGER_URL: 'alertmanager-host:9093' is not an http"):
        d.from_settings(get_settings())


def test_a_failing_delivery_never_costs_a_forecast(tmp_path: Any) -> None:
    from fleetcast_testkit.standin import SYNTHETIC_MODEL, SyntheticForecaster

    from models import simulator
    from serving.demo_fleet import frame_to_items
    from serving.forecasting import PredictionEngine
    from serving.ingest import ingest_items
    from serving.store import FeedStore

    class Broken:
        calls = 0

        def observe(self, alerts: Any) -> None:
            Broken.calls += 1
            raise RuntimeError("boom")

    store = FeedStore(f"sqlite:///{tmp_path / 'feed.db'}")
    try:
        ingest_items(store, frame_to_items(simulator.LiveFleet(servers=simulator.default_servers(4)).history()))
        engine = PredictionEngine(SyntheticForecaster(), store, SYNTHETIC_MODEL, delivery=Broken())
        assert engine.refresh() == 4 and Broken.calls == 1
        assert engine.last_error is None and engine.servers_tracked == 4
    finally:
        store.dispose()
