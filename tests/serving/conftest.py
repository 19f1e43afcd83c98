"""Fixtures for the service tests: an isolated, model-loaded service run in-process (``to_asgi``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from starlette.testclient import TestClient

from models import schema, simulator
from serving.demo_fleet import frame_to_items
from serving.store import FeedStore

N_SERVERS = 4


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedStore]:
    """A fresh feed store on SQLite in the test's directory."""
    s = FeedStore(f"sqlite:///{tmp_path / 'feed.db'}")
    yield s
    s.dispose()


def now_floor() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None).floor("5min")


def fleet_items(n_servers: int = N_SERVERS, steps: int = 288, end: pd.Timestamp | None = None,
                seed: int = 3) -> list[dict[str, Any]]:
    """``steps`` records per server ending at ``end`` (default: now), as a shipper would post them."""
    fleet = simulator.LiveFleet(servers=simulator.default_servers(n_servers), seed=seed,
                                start=end if end is not None else now_floor(), history_steps=steps)
    return frame_to_items(fleet.history())


def series_items(server: str, profile: str, values: dict[str, Any], steps: int = 288,
                 end: pd.Timestamp | None = None) -> list[dict[str, Any]]:
    """One server's records; ``values`` maps metric -> constant or a callable of the step index."""
    end = end if end is not None else now_floor()
    out = []
    for i in range(steps):
        ts = end - pd.Timedelta(minutes=5 * (steps - 1 - i))
        rec = {"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S"), "server_name": server, "profile": profile,
               "status": "healthy"}
        for metric, v in values.items():
            rec[metric] = round(float(v(i) if callable(v) else v), 2)
        out.append(rec)
    return out


def shift_to_recent(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame of old records (the NAB traces are from 2014) moved forward by whole weeks, so its newest
    record falls in the last week: inside the service's accepted window (400 days), with weekday,
    time of day and any off-grid seconds kept."""
    last = pd.Timestamp(frame[schema.TIMESTAMP].max())
    weeks = (now_floor() - last) // pd.Timedelta(weeks=1)
    out = frame.copy()
    out[schema.TIMESTAMP] = out[schema.TIMESTAMP] + pd.Timedelta(weeks=int(weeks))
    return out


@pytest.fixture
def service_env(isolated_env: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolated state, the tiny model by path, fast refresh, no rate limit, no token, no demo fleet."""
    monkeypatch.setenv("FLEETCAST_MODEL_PATH", str(tiny_checkpoint))
    monkeypatch.setenv("FLEETCAST_REFRESH_SECONDS", "0.2")
    monkeypatch.setenv("FLEETCAST_RATE_LIMIT_PER_SECOND", "0")
    monkeypatch.delenv("FLEETCAST_API_TOKEN", raising=False)
    monkeypatch.setenv("FLEETCAST_DEMO_FLEET", "0")
    return isolated_env


@pytest.fixture
def make_client(service_env: Path, asgi_app: Any) -> Iterator[Callable[[], TestClient]]:
    """Start the real BentoML service in-process (lifespan and all) with the environment set so far.
    One running client per test: the app holds one service instance at a time. ``peer`` is the client
    address the service sees (loopback by default, as a shipper on the same host; writes from other
    peers need a token)."""
    clients: list[TestClient] = []

    def start(peer: str = "127.0.0.1") -> TestClient:
        assert not clients, "one service instance per test"
        client = TestClient(asgi_app, client=(peer, 50000))
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[[], TestClient]) -> TestClient:
    return make_client()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def prediction_of(client: TestClient, server: str) -> dict[str, Any] | None:
    r = client.get(f"/predictions/{server}")
    return r.json() if r.status_code == 200 else None


class Helpers:
    """The helpers above, handed to tests as the ``h`` fixture (importlib mode: no conftest imports)."""

    now_floor = staticmethod(now_floor)
    fleet_items = staticmethod(fleet_items)
    series_items = staticmethod(series_items)
    wait_for = staticmethod(wait_for)
    prediction_of = staticmethod(prediction_of)
    shift_to_recent = staticmethod(shift_to_recent)


@pytest.fixture
def h() -> type[Helpers]:
    return Helpers
