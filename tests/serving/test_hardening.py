"""Issue 12 at unit level and in-process: secure defaults, no paths in answers, the write guard's parts
(loopback check, trusted proxies as uvicorn reads them, the ``limits`` rate limiter, write slots), the
scenario body, and a history query that one old server cannot drag back.

Over real HTTP against `bentoml serve`: tests/serving/test_live_service.py (slow clients, spoofed
X-Forwarded-For, schemathesis), test_durability.py (kill -9, restart, stale listener) and
test_remote_peer.py (a peer in a network namespace).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from models import schema
from serving import ingest, security
from serving.settings import ServiceSettings
from serving.store import MAX_GAP_STEPS, FeedStore, window_groups

REMOTE = "198.51.100.7"  # TEST-NET-2: an address that is not loopback (no traffic is sent to it)


# --- secure defaults: without a token, writes from loopback only -----------------------------------------
@pytest.mark.parametrize("peer", [REMOTE, "10.1.2.3", "::ffff:192.0.2.1", "2001:db8::1", "testclient"])
def test_without_a_token_a_peer_that_is_not_loopback_cannot_write(make_client: Any, h: Any, peer: str) -> None:
    client = make_client(peer=peer)
    items = h.fleet_items(n_servers=1, steps=2)
    r = client.post("/feed/data", json=items)
    assert r.status_code == 403 and "FLEETCAST_API_TOKEN" in r.json()["detail"]
    assert client.post("/scenario/set", json={"scenario": "critical"}).status_code == 403
    assert client.get("/predictions").status_code == 200  # reads stay open
    health = client.get("/health").json()
    assert health["records_stored"] == 0 and health["writes"]["refused"] == {"not_loopback": 2}


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_peers_write_without_a_token(make_client: Any, h: Any, peer: str) -> None:
    client = make_client(peer=peer)
    assert client.post("/feed/data", json=h.fleet_items(n_servers=1, steps=2)).status_code == 200


def test_a_token_or_the_explicit_setting_opens_writes_to_other_peers(make_client: Any, h: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_API_TOKEN", "s3cret")
    client = make_client(peer=REMOTE)
    items = h.fleet_items(n_servers=1, steps=2)
    assert client.post("/feed/data", json=items).status_code == 401
    assert client.post("/feed/data", json=items, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_anonymous_writes_setting_opens_writes_to_every_peer(make_client: Any, h: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_ALLOW_ANONYMOUS_WRITES", "1")
    client = make_client(peer=REMOTE)
    assert client.post("/feed/data", json=h.fleet_items(n_servers=1, steps=2)).status_code == 200


def test_a_missing_token_logs_how_to_open_writes(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="serving.runtime"):
        make_client()
    text = caplog.text
    assert "NO FLEETCAST_API_TOKEN" in text and "FLEETCAST_ALLOW_ANONYMOUS_WRITES=1" in text


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.255.0.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("0.0.0.0", False), ("::", False), ("::ffff:10.0.0.1", False), ("localhost", False),
    ("testclient", False), ("", False), (None, False), ("<script>", False)])
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert security.is_loopback(host) is loopback


# --- the client address: X-Forwarded-For only from FLEETCAST_TRUSTED_PROXIES -------------------------------
def _client_seen_by_the_app(trusted: str, peer: str, forwarded_for: str) -> tuple[str, int] | None:
    """What uvicorn's own ProxyHeadersMiddleware (the one BentoML's uvicorn runs) leaves in scope['client']
    with ``trusted`` as FORWARDED_ALLOW_IPS."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["client"] = scope["client"]

    middleware = ProxyHeadersMiddleware(app, trusted_hosts=trusted)
    scope = {"type": "http", "client": (peer, 5555), "headers": [(b"x-forwarded-for", forwarded_for.encode())]}
    asyncio.run(middleware(scope, None, None))  # type: ignore[arg-type]
    return seen["client"]


def test_no_proxy_is_trusted_by_default_so_x_forwarded_for_is_ignored() -> None:
    trusted = security.forwarded_allow_ips(ServiceSettings())
    assert trusted == security.NO_TRUSTED_PROXY
    # uvicorn's own default would trust loopback: the finding
    assert _client_seen_by_the_app("127.0.0.1", "127.0.0.1", "203.0.113.9") == ("203.0.113.9", 0)
    assert _client_seen_by_the_app(trusted, "127.0.0.1", "203.0.113.9") == ("127.0.0.1", 5555)
    assert _client_seen_by_the_app(trusted, "10.0.0.2", "127.0.0.1") == ("10.0.0.2", 5555)


def test_a_trusted_proxy_names_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_TRUSTED_PROXIES", " 10.0.0.2, 192.168.0.0/24 ")
    trusted = security.forwarded_allow_ips(ServiceSettings())
    assert trusted == "10.0.0.2,192.168.0.0/24"
    assert _client_seen_by_the_app(trusted, "10.0.0.2", "203.0.113.9") == ("203.0.113.9", 0)
    assert _client_seen_by_the_app(trusted, "192.168.0.77", "198.51.100.1, 10.0.0.2") == ("198.51.100.1", 0)
    assert _client_seen_by_the_app(trusted, "10.0.0.3", "203.0.113.9") == ("10.0.0.3", 5555)  # not listed


def test_a_malformed_trusted_proxy_stops_the_start_named(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_TRUSTED_PROXIES", "10.0.0.1,proxy.example")
    with pytest.raises(ValueError, match="FLEETCAST_TRUSTED_PROXIES: 'proxy.example'"):
        security.forwarded_allow_ips()
    with pytest.raises(ValueError, match="FLEETCAST_TRUSTED_PROXIES"):
        make_client()


# --- the rate limiter (limits, moving window, memory that forgets idle clients) ----------------------------
def test_rate_limiter_allows_the_burst_per_window_per_client() -> None:
    limiter = security.RateLimiter(per_second=0.01, burst=3)
    assert limiter.window_seconds == 300
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a")
    assert 0 < wait <= 600 and int(security.RateLimiter.retry_after_header(wait)) >= 1
    assert limiter.acquire("b") == 0.0  # another client has its own window
    assert security.RateLimiter(per_second=0, burst=3).acquire("a") == 0.0  # off


def test_rate_limiter_memory_follows_active_clients_only() -> None:
    limiter = security.RateLimiter(per_second=1, burst=1)  # one request per 1 s window
    for i in range(5000):
        assert limiter.acquire(f"10.0.{i // 250}.{i % 250}") == 0.0
    assert limiter.entries() == 5000
    time.sleep(2.2)  # two windows
    limiter.acquire("late")
    deadline = time.monotonic() + 5
    while limiter.entries() > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limiter.entries() <= 2  # the 5,000 idle clients are forgotten; "late" holds at most two counters


def test_write_slots_cap_each_client_and_all_together() -> None:
    slots = security.WriteSlots(total=3, per_client=2)
    assert slots.acquire("a") is None and slots.acquire("a") is None
    assert slots.acquire("a") == "per_client"
    assert slots.acquire("b") is None
    assert slots.acquire("c") == "total"
    assert (slots.in_flight, slots.clients, slots.peak) == (3, 2, 3)
    slots.release("a")
    assert slots.acquire("c") is None
    for client in ("a", "b", "c"):
        slots.release(client)
    assert (slots.in_flight, slots.clients) == (0, 0)


def test_health_reports_the_write_load(client: Any, h: Any) -> None:
    client.post("/feed/data", json=h.fleet_items(n_servers=1, steps=2))
    writes = client.get("/health").json()["writes"]
    assert writes == {"in_flight": 0, "in_flight_peak": 1, "in_flight_limit": 64, "in_flight_limit_per_client": 4,
                      "clients_in_flight": 0, "rate_limit_entries": 0, "refused": {}}


# --- errors never show filesystem paths -------------------------------------------------------------------
def _all_answers(client: Any, h: Any) -> list[Any]:
    return [client.get("/health"), client.get("/predictions"), client.get("/predictions?include_history=true"),
            client.get("/predictions/web-01"), client.get("/alerts"), client.get("/scenario"),
            client.post("/feed/data", json=h.fleet_items(n_servers=1, steps=2)),
            client.post("/feed/data", content=b"{", headers={"Content-Type": "application/json"}),
            client.post("/scenario/set", json={"scenario": "x"}), client.get("/openapi.json")]


@pytest.mark.parametrize("broken", ["model file", "alerts file"])
def test_no_answer_shows_the_data_dir_path(make_client: Any, h: Any, service_env: Path, broken: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A model file or alert rules missing under the data dir: the reason is logged in full; answers say
    what failed and where to look, never the path."""
    missing = service_env / "models" / "champion" / "tft.pt"
    if broken == "model file":
        monkeypatch.setenv("FLEETCAST_MODEL_PATH", str(missing))
    else:
        monkeypatch.setenv("FLEETCAST_ALERTS_FILE", str(missing.with_name("alerts.yaml")))
    client = make_client()
    answers = _all_answers(client, h)
    assert answers[1].status_code == 503 and "could not be loaded" in answers[1].json()["detail"]
    assert "details in the service log" in answers[0].json()["error"]
    for r in answers:
        assert r.status_code != 500
        assert str(service_env) not in r.text and "champion" not in r.text, (r.request.url, r.text)


def test_a_failed_refresh_shows_its_kind_not_its_text(make_client: Any, h: Any, service_env: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing:
        training_servers: list[str] = []

        def forecast(self, history: Any) -> Any:
            raise FileNotFoundError(f"no such file: {service_env}/feed/feed.db")

    info = {"name": "fleetcast-tft", "version": "1", "run_id": None, "source": "test", "tag": None}
    monkeypatch.setattr("serving.model_store.load_forecaster", lambda *a, **k: (Failing(), info))
    client = make_client()
    client.post("/feed/data", json=h.fleet_items(n_servers=1, steps=24))
    h.wait_for(lambda: client.get("/health").json()["status"] == "degraded", timeout=20)
    health = client.get("/health")
    assert "FileNotFoundError" in health.json()["error"] and str(service_env) not in health.text


# --- POST /scenario/set reads its body like the feed -----------------------------------------------------
@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b"[" * 1000, 400, "JSON nested too deeply"),
    (b'{"scenario": ' + b"[" * 1000, 400, "JSON nested too deeply"),
    (b'{"scenario": "critical"', 400, "malformed JSON"),
    (b"\xff", 400, "not UTF-8"),
    (b'{"scenario": "' + b"x" * 2000 + b'"}', 413, "FLEETCAST_MAX_BODY_BYTES"),
    (b'{"scenario": "critical"}', 409, "FLEETCAST_DEMO_FLEET=1"),
])
def test_scenario_body_errors(client: Any, monkeypatch: pytest.MonkeyPatch, body: bytes, status: int,
                              fragment: str) -> None:
    monkeypatch.setenv("FLEETCAST_MAX_BODY_BYTES", "1500")
    r = client.post("/scenario/set", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and fragment in r.json()["detail"], r.text


def test_scenario_errors_with_the_demo_fleet_on(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_DEMO_FLEET", "1")
    monkeypatch.setenv("FLEETCAST_DEMO_SERVERS", "3")
    client = make_client()
    r = client.post("/scenario/set", json={"scenario": "critical", "x" * 500: 1})
    assert r.status_code == 422 and "Extra inputs are not permitted" in r.json()["detail"]
    assert len(r.json()["detail"]) < 200  # a long unknown key is not repeated whole
    r = client.post("/scenario/set", json={"scenario": "critical", "duration_hours": -1})
    assert r.status_code == 422 and "duration_hours" in r.json()["detail"]
    assert client.post("/scenario/set", json={"scenario": "critical"}).status_code == 200


# --- duplicates inside one batch -----------------------------------------------------------------------------
def test_a_duplicate_in_one_batch_counts_once_and_the_later_one_wins(client: Any, h: Any) -> None:
    items = h.fleet_items(n_servers=1, steps=3)
    later = {**items[0], "cpu_percent": 99.0}
    r = client.post("/feed/data", json=[*items, later])
    body = r.json()
    assert body["records_processed"] == 3 and body["status"] == "success"
    assert body["warnings"] == [{"index": 3, "warning": "same server_name and timestamp as record 0: merged, "
                                                        "the values this later one carries kept"}]
    assert client.get("/health").json()["records_stored"] == 3


def test_validate_items_uses_the_window_of_its_limits() -> None:
    limits = ingest.Limits(1000, 10, pd.Timedelta(days=1).to_pytimedelta(), pd.Timedelta(minutes=1).to_pytimedelta())
    now = datetime(2025, 10, 12, 12, 0)
    base = {"server_name": "a", "cpu_percent": 1, "memory_percent": 1, "disk_percent": 1, "load_average": 1}
    items = [{**base, "timestamp": t} for t in ("2025-10-12T12:00:30", "2025-10-11T12:30:00", "2025-10-11T11:30:00",
                                                 "2025-10-12T12:02:00")]
    result = ingest.validate_items(items, now=now, limits=limits)
    assert [e["index"] for e in result.errors] == [2, 3]
    assert "more than 1 day old" in result.errors[0]["error"] and "1 minute in the future" in result.errors[1]["error"]


# --- the history query cannot be dragged back by one server ----------------------------------------------
def _frame(server: str, end: pd.Timestamp, steps: int) -> list[dict[str, Any]]:
    stamps = pd.date_range(end=end, periods=steps, freq="5min")
    return [{schema.TIMESTAMP: t.to_pydatetime(), schema.SERVER: server, "cpu_percent": 10.0, "memory_percent": 20.0,
             "disk_percent": 30.0, "load_average": 1.0, schema.STATUS: "healthy", schema.PROFILE: "generic"}
            for t in stamps]


def test_window_groups_keep_close_servers_together_and_a_relic_apart() -> None:
    now = pd.Timestamp("2025-10-12 12:00")
    window = pd.Timedelta(hours=24)
    lasts = pd.DataFrame({schema.SERVER: ["a", "b", "relic", "c", "d"],
                          "last": [now, now - pd.Timedelta(hours=2), pd.Timestamp("1970-01-02"),
                                   now - pd.Timedelta(hours=23), now - pd.Timedelta(days=3)]})
    groups = window_groups(lasts, window)
    assert [g[0] for g in groups] == [["relic"], ["d"], ["c", "b", "a"]]
    assert groups[2][1:] == (now - pd.Timedelta(hours=23), now)
    assert window_groups(lasts.iloc[:2], window) == [(["b", "a"], now - pd.Timedelta(hours=2), now)]


def test_one_old_server_does_not_drag_the_history_query_back(tmp_path: Path) -> None:
    store = FeedStore(f"sqlite:///{tmp_path / 'feed.db'}")
    now = pd.Timestamp.now().floor("5min")
    relic_end = pd.Timestamp("1970-01-02")
    rows = [r for s in ("web-01", "web-02", "db-01") for r in _frame(s, now, 600)] + _frame("relic", relic_end, 600)
    store.upsert(rows)  # straight into the store: ingest would refuse 1970 today
    lower_bounds: list[datetime] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "records.timestamp >" in statement:
            lower_bounds.append(min(p for p in params if isinstance(p, str | datetime) and str(p)[:2] in "1920"))

    sa.event.listen(store.engine, "before_cursor_execute", record)
    raw = store.raw_window()
    window = pd.Timedelta(minutes=5 * (schema.ENCODER_STEPS + MAX_GAP_STEPS + 1))
    per_server = raw.groupby(schema.SERVER)[schema.TIMESTAMP].agg(["min", "max", "count"])
    assert per_server.loc["relic", "max"] == relic_end and per_server.loc["web-01", "max"] == now
    assert (per_server["count"] == schema.ENCODER_STEPS + MAX_GAP_STEPS + 1).all()
    bounds = sorted(pd.Timestamp(b) for b in lower_bounds)
    assert len(bounds) == 2  # the live fleet in one query, the relic in one of its own
    assert bounds[0] == relic_end - window and bounds[1] == now - window  # nobody reads back to 1970
    history = store.history(["web-01", "relic"])
    assert history.groupby(schema.SERVER).size().to_dict() == {"relic": 288, "web-01": 288}
    store.dispose()
