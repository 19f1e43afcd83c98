"""Fixtures for the dashboard tests.

- ``standin`` (function): :class:`fleetcast_testkit.standin.StandinService` with 12 servers: the real
  service with a synthetic forecaster (no model) over real HTTP on a free port, counting the requests
  it receives; ``make_standin(n_servers, demo_fleet=..., port=...)`` makes others (one at a time).
- ``sent`` (function): the requests the dashboard's client sent from this process
  (:func:`fleetcast_testkit.count_dashboard_requests`; AppTest runs the app in-process).
- ``live_service`` (session): the REAL service, ``bentoml serve serving.service:Fleetcast`` in a
  subprocess on a free port, loading the ``tiny_checkpoint`` model, with its demo fleet on and one
  extra server fed through POST /feed/data; every bit of state in a temporary dir. Yields a
  :class:`LiveService`; the subprocess is always terminated.
- ``app_env`` (function): points the dashboard at a URL and turns auto-refresh off for the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import streamlit as st
from fleetcast_testkit import RequestTally, count_dashboard_requests, free_port
from fleetcast_testkit.standin import StandinService

from models import simulator
from orchestration.cli import stop as stop_process_groups

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "dashboard" / "app.py"
VENV_BIN = Path(sys.executable).parent
SERVICE_START_TIMEOUT_S = 300.0
FED_SERVER = ("fed-web-01", "web_api")  # a server that reaches the service through POST /feed/data


@dataclass
class LiveService:
    url: str
    servers: list[str]  # server names of /predictions, in its order, once the fixture saw them all
    log_path: Path
    fed_server: str = FED_SERVER[0]


@pytest.fixture
def make_standin(asgi_app: object) -> Callable[..., StandinService]:
    def make(n_servers: int = 6, demo_fleet: bool = True, port: int = 0,
             env: dict[str, str] | None = None) -> StandinService:
        return StandinService(asgi_app, n_servers=n_servers, demo_fleet=demo_fleet, port=port, env=env)

    return make


@pytest.fixture
def standin(make_standin: Callable[..., StandinService]) -> Iterator[StandinService]:
    with make_standin(n_servers=12) as service:
        yield service


@pytest.fixture
def sent() -> Iterator[RequestTally]:
    with count_dashboard_requests() as tally:
        yield tally


@pytest.fixture(autouse=True)
def _fresh_dashboard_state() -> Iterator[None]:
    """Each test starts with no cached HTTP clients."""
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - returns a setter
    """``app_env(url)`` points the dashboard at ``url``; auto-refresh is pushed out of the test's way."""

    def point_at(url: str) -> None:
        monkeypatch.setenv("FLEETCAST_API_URL", url)
        monkeypatch.setenv("FLEETCAST_DASHBOARD_REFRESH_SECONDS", "3600")

    return point_at


def _wait_until(check, timeout_s: float, what: str, proc: subprocess.Popen, log_path: Path):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode} while waiting for {what}:\n"
                               + log_path.read_text(errors="replace")[-4000:])
        try:
            value = check()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            value = None
        if value:
            return value
        time.sleep(1.0)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what} ({last_error}):\n"
                       + log_path.read_text(errors="replace")[-4000:])


def _feed_records() -> list[dict]:
    """24 h of simulated history for one extra server, as a log shipper would post it."""
    fleet = simulator.LiveFleet(servers=[FED_SERVER], seed=3)
    frame = fleet.history()
    frame = frame.assign(timestamp=frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S"))
    return json.loads(frame.to_json(orient="records"))


@pytest.fixture(scope="session")
def live_service(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    state = tmp_path_factory.mktemp("live_service")
    port = free_port()
    env = {
        **os.environ,
        "FLEETCAST_MODEL_PATH": str(tiny_checkpoint),
        "FLEETCAST_DEMO_FLEET": "1",
        "FLEETCAST_DEMO_STEP_SECONDS": "3600",  # the demo fleet's 24 h of history, then (nearly) still
        "FLEETCAST_REFRESH_SECONDS": "1",  # the service's forecast refresh, not the dashboard's
        "FLEETCAST_RATE_LIMIT_PER_SECOND": "0",
        "FLEETCAST_DATA_DIR": str(state),
        "FLEETCAST_STORE_URL": f"sqlite:///{state / 'feed.db'}",
        "BENTOML_HOME": str(state / "bentoml"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FLEETCAST_API_TOKEN", None)
    log_path = state / "service.log"
    command = [str(VENV_BIN / "bentoml"), "serve", "serving.service:Fleetcast",
               "--port", str(port), "--host", "127.0.0.1"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30.0) as http:
            _wait_until(lambda: http.get("/readyz").status_code == 200, SERVICE_START_TIMEOUT_S, "/readyz",
                        proc, log_path)
            fed = http.post("/feed/data", json={"records": _feed_records()})
            assert fed.status_code == 200, fed.text
            assert fed.json()["records_processed"] > 0

            def all_forecast() -> list[str] | None:
                names = [p["server_name"] for p in http.get("/predictions").json()["predictions"]]
                return names if FED_SERVER[0] in names and len(names) > 1 else None

            servers = _wait_until(all_forecast, SERVICE_START_TIMEOUT_S, "non-empty /predictions", proc, log_path)
        yield LiveService(url=url, servers=servers, log_path=log_path)
    finally:
        stop_process_groups([proc], timeout=20)
