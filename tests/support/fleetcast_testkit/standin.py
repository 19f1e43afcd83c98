"""A stand-in for the fleetcast service that is the service itself, with a synthetic forecaster.

:class:`StandinService` runs the real BentoML service (``serving.service:Fleetcast``, its ASGI app under
uvicorn in a thread) on a loopback port, with :class:`SyntheticForecaster` instead of the TFT: no
model, no training, 1,000 servers in seconds. Everything else is the product's own: routes, answers,
alert rules, severities, risk levels, the scenario list and the demo fleet. It counts the requests it
receives per route, and can garble one route's answer to test a partial failure.

For the dashboard's unit tests and benchmark, and for working on the dashboard without a model::

    PYTHONPATH=tests/support .venv/bin/python -m fleetcast_testkit.standin --servers 50 --port 8000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import numpy as np
import pandas as pd
import uvicorn

from fleetcast_testkit import RequestTally, free_port
from models import schema, simulator
from models.tft import ServerForecast

SYNTHETIC_MODEL = {"name": "fleetcast-tft", "version": "synthetic", "run_id": None, "source": "synthetic",
                   "tag": None}


class SyntheticForecaster:
    """Forecasts without a model, deterministically, so that the product's alert rules fire on some servers.

    Servers in name order: of every four, three have one percent metric (cpu, memory, disk in turn)
    climbing to 100 % within 1.5, 4 or 7 h; the fourth stays flat. Other metrics stay at their last
    value. Bands widen with the horizon. Two servers in three count as seen in training.
    """

    REACH_STEPS = (18, 48, 84)

    def forecast(self, history: pd.DataFrame) -> dict[str, ServerForecast]:
        out: dict[str, ServerForecast] = {}
        k = np.arange(1, schema.HORIZON_STEPS + 1, dtype=float)
        widen = np.sqrt(k / schema.HORIZON_STEPS + 0.1)
        steps = pd.to_timedelta(k * schema.STEP_MINUTES, unit="min")
        for i, (name, h) in enumerate(history.groupby(schema.SERVER, sort=True)):
            if len(h) < schema.MIN_ENCODER_STEPS:
                continue
            h = h.tail(schema.ENCODER_STEPS)
            origin = pd.Timestamp(h[schema.TIMESTAMP].iloc[-1])
            climbing = schema.PERCENT_METRICS[i % 3] if i % 4 != 3 else None
            quantiles = {}
            for metric in schema.METRICS:
                last = float(h[metric].iloc[-1])
                top = 100.0 if metric in schema.PERCENT_METRICS else schema.MAX_LOAD_AVERAGE
                if metric == climbing:
                    p50 = last + (100.0 - last) * np.minimum(k / self.REACH_STEPS[i % 3], 1.0)
                else:
                    p50 = np.full(k.size, last)
                spread = (3.0 if metric in schema.PERCENT_METRICS else 0.1 * max(last, 1.0)) * widen
                quantiles[metric] = np.clip(np.stack([p50 - spread, p50, p50 + spread], axis=1), 0.0, top)
            out[str(name)] = ServerForecast(
                server_name=str(name), profile=str(h[schema.PROFILE].iloc[-1]), origin=origin,
                timestamps=pd.DatetimeIndex(origin + steps), quantiles=quantiles, history_steps=len(h),
                seen_in_training=i % 3 != 0)
        return out


def predictions_answer(n_servers: int, seed: int = 0) -> dict[str, Any]:
    """``GET /predictions?include_history=true`` as the service answers it (its feed store, ingest,
    ``PredictionEngine`` and alert rules) for ``n_servers`` simulated servers, forecast by
    :class:`SyntheticForecaster`; no HTTP."""
    from serving.demo_fleet import frame_to_items
    from serving.forecasting import PredictionEngine
    from serving.ingest import ingest_items
    from serving.store import FeedStore

    with tempfile.TemporaryDirectory(prefix="fleetcast-answer-") as tmp:
        store = FeedStore(f"sqlite:///{Path(tmp) / 'feed.db'}")
        try:
            fleet = simulator.LiveFleet(servers=simulator.default_servers(n_servers), seed=seed)
            ingest_items(store, frame_to_items(fleet.history()))
            engine = PredictionEngine(SyntheticForecaster(), store, SYNTHETIC_MODEL)
            return json.loads(engine.predictions_json(include_history=True))
        finally:
            store.dispose()


def build_asgi_app() -> Any:
    """The service's ASGI app. Build it once per process (BentoML registers its metrics per build)."""
    from serving.service import Fleetcast

    return Fleetcast.to_asgi()


class CountingApp:
    """ASGI wrapper: counts requests by ``METHOD path``; answers garbled paths with a fixed non-JSON body."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts = RequestTally()
        self.garbled: dict[str, bytes] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.counts.record(scope["method"], scope["path"])
            body = self.garbled.get(scope["path"])
            if body is not None:
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class StandinService:
    """The real service with a synthetic forecaster on ``http://127.0.0.1:<port>``; a context manager.

    ``n_servers`` servers of the service's demo fleet (``demo_fleet=True``: scenarios work) or, with the
    demo fleet off, the same simulated servers posted once through ``POST /feed/data``. The demo fleet
    stands still after its 24 h of history, so every answer stays the same during a test. Requests
    made while starting are not counted. One stand-in per ASGI app at a time.
    """

    def __init__(self, asgi_app: Any, n_servers: int = 6, demo_fleet: bool = True, port: int = 0,
                 forecaster: Any = None, env: dict[str, str] | None = None) -> None:
        self.n_servers = n_servers
        self.extra_env = dict(env or {})  # more service settings, e.g. FLEETCAST_ALERTS_FILE
        self.demo_fleet = demo_fleet
        self.port = port or free_port()
        self.forecaster = forecaster or SyntheticForecaster()
        self.app = CountingApp(asgi_app)
        self._state = tempfile.TemporaryDirectory(prefix="fleetcast-standin-")
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, lifespan="on",
                                                     log_level="warning", access_log=False))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def counts(self) -> dict[str, int]:
        return self.app.counts.by_route()

    @property
    def total(self) -> int:
        return self.app.counts.total

    def garble(self, path: str, body: bytes = b"not json") -> None:
        """Answer ``GET path`` with ``body`` (status 200) from now on."""
        self.app.garbled[path] = body

    def _environment(self) -> dict[str, str]:
        state = Path(self._state.name)
        return {
            "FLEETCAST_DATA_DIR": str(state),
            "FLEETCAST_STORE_URL": f"sqlite:///{state / 'feed.db'}",
            "FLEETCAST_DEMO_FLEET": "1" if self.demo_fleet and self.n_servers else "0",
            "FLEETCAST_DEMO_SERVERS": str(max(self.n_servers, 1)),
            "FLEETCAST_DEMO_STEP_SECONDS": "86400",  # 24 h of history, then still
            "FLEETCAST_REFRESH_SECONDS": "86400",  # one batch, computed on the first request
            "FLEETCAST_MODEL_POLL_SECONDS": "0",
            "FLEETCAST_RATE_LIMIT_PER_SECOND": "0",
            "FLEETCAST_API_TOKEN": "",
            "FLEETCAST_MODEL_PATH": "",
            # the synthetic climbs are there to fire alerts; the forecast guard would replace them with the
            # naive forecasts that beat them (the guard has tests of its own: tests/serving/test_forecast_guard.py)
            "FLEETCAST_GUARD": "0",
            **self.extra_env,
        }

    def start(self) -> StandinService:
        env = self._environment()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the service reads its settings when its runtime starts, i.e. now
        try:
            with mock.patch("serving.model_store.load_forecaster",
                            lambda *args, **kwargs: (self.forecaster, dict(SYNTHETIC_MODEL))):
                self._thread = threading.Thread(target=self._server.run, name="standin", daemon=True)
                self._thread.start()
                deadline = time.monotonic() + 300
                while not self._server.started:
                    if not self._thread.is_alive() or time.monotonic() > deadline:
                        raise RuntimeError(f"stand-in service did not start on {self.url}")
                    time.sleep(0.05)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        with httpx.Client(base_url=self.url, timeout=300) as http:
            if not self.demo_fleet and self.n_servers:
                from serving.demo_fleet import frame_to_items

                history = simulator.LiveFleet(servers=simulator.default_servers(self.n_servers), seed=0).history()
                http.post("/feed/data", json={"records": frame_to_items(history)}).raise_for_status()
            http.get("/predictions").raise_for_status()  # the first batch, before anyone counts
        self.app.counts.reset()
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._state.cleanup()

    def __enter__(self) -> StandinService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="The fleetcast service with a synthetic forecaster.")
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-demo", action="store_true", help="feed the servers once; no demo fleet")
    args = parser.parse_args()
    with StandinService(build_asgi_app(), args.servers, demo_fleet=not args.no_demo, port=args.port) as service:
        print(f"stand-in service with {args.servers} servers on {service.url}; Ctrl-C stops it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
