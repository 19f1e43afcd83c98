"""The dashboard's HTTP client against the stand-in (the service with a synthetic forecaster, real HTTP)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fleetcast_testkit import RequestTally, free_port
from fleetcast_testkit.standin import StandinService

from dashboard.client import FleetcastClient, ServiceError


def test_one_snapshot_is_exactly_four_gets(standin: StandinService, sent: RequestTally) -> None:
    client = FleetcastClient(standin.url)
    snap = client.fetch_snapshot()
    assert snap.errors == {}
    assert not snap.unreachable
    assert dict(standin.counts) == {"GET /health": 1, "GET /predictions": 1, "GET /alerts": 1, "GET /scenario": 1}
    assert sent.total == 4
    assert len(snap.fleet) == 12
    assert snap.fleet.has_history  # include_history=true was asked for
    assert snap.demo_fleet


def test_snapshot_is_the_riskiest_page_and_search_asks_by_prefix(standin: StandinService,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    everything = FleetcastClient(standin.url).fetch_snapshot()
    monkeypatch.setenv("FLEETCAST_DASHBOARD_MAX_SERVERS", "5")
    client = FleetcastClient(standin.url)
    page = client.fetch_snapshot()
    assert page.fleet.servers == everything.fleet.servers[:5]  # the riskiest five, in the service's order
    assert page.servers_matching == 12 and page.fleet.has_history
    name = everything.fleet.servers[-1]
    found = client.fetch_snapshot(search=name)
    assert found.search == name and name in found.fleet.servers
    assert all(s.startswith(name) for s in found.fleet.servers) and found.servers_matching == len(found.fleet)


def test_closed_port_is_unreachable_not_an_exception() -> None:
    snap = FleetcastClient(f"http://127.0.0.1:{free_port()}", timeout=2).fetch_snapshot()
    assert snap.unreachable
    assert set(snap.errors) == {"health", "predictions", "alerts", "scenario"}
    assert "ConnectError" in snap.errors["health"]


def test_scenario_set_and_service_errors(standin: StandinService) -> None:
    client = FleetcastClient(standin.url)
    target = client.predictions(include_history=False)["predictions"][0]["server_name"]
    answer = client.set_scenario("memory_leak", 6, [target])
    assert answer == {"status": "success", "scenario": "memory_leak", "duration_hours": 6, "servers": [target]}
    assert client.scenario()["scenario"] == "memory_leak"
    with pytest.raises(ServiceError) as err:
        client.set_scenario("meteor_strike", 1)
    assert err.value.status == 422 and "meteor_strike" in str(err.value)
    with pytest.raises(ServiceError) as err:
        client.get_json("/predictions/nope")
    assert err.value.status == 404 and not err.value.unreachable


def test_scenario_set_without_a_demo_fleet_is_409(make_standin: Callable[..., StandinService]) -> None:
    with make_standin(n_servers=2, demo_fleet=False) as service:
        client = FleetcastClient(service.url)
        with pytest.raises(ServiceError) as err:
            client.set_scenario("baseline", 1)
        assert err.value.status == 409 and "demo fleet is off" in str(err.value)


def test_token_is_sent_on_writes_only(standin: StandinService, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str | None]] = []
    monkeypatch.setenv("FLEETCAST_API_TOKEN", "s3cret")
    client = FleetcastClient(standin.url)
    client._http.event_hooks["request"].append(
        lambda request: seen.append((request.method, request.headers.get("authorization")))
    )
    client.health()
    client.set_scenario("baseline", 2)
    assert seen == [("GET", None), ("POST", "Bearer s3cret")]
