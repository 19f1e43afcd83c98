"""The forecast guard in the prediction engine (unit level: a stub forecaster whose error we choose, the
real feed store on SQLite): it serves the best naive when the model's scored error is worse, the model
again once it is better, evaluates alerts on what it serves, and keeps its state in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models import schema
from models.tft import ServerForecast
from serving import ingest
from serving.forecast_guard import ForecastGuard
from serving.forecasting import PredictionEngine
from serving.store import FeedStore

T0 = pd.Timestamp("2025-03-01")
STEP = pd.Timedelta(minutes=5)
SERVER = "web-7"


def truth(i: np.ndarray) -> np.ndarray:
    """cpu: a daily wave on a rising trend (no naive is exact)."""
    return 30.0 + 15.0 * np.sin(2 * np.pi * i / 288.0) + 0.02 * i


class StubForecaster:
    """P50 = the truth + ``error`` on every metric (clipped to 0..100), a +-1 band around it."""

    def __init__(self, error: float) -> None:
        self.error = error

    def forecast(self, history: pd.DataFrame) -> dict[str, ServerForecast]:
        out = {}
        for name, h in history.groupby(schema.SERVER):
            origin = pd.Timestamp(h[schema.TIMESTAMP].iloc[-1])
            start = (origin - T0) // STEP
            p50 = np.clip(truth(np.arange(start + 1, start + 97)) + self.error, 0.0, 100.0)
            q = np.stack([p50 - 1.0, p50, p50 + 1.0], axis=1)
            out[name] = ServerForecast(name, "web_api", origin, pd.DatetimeIndex(origin + STEP * np.arange(1, 97)),
                                       {m: q.copy() for m in schema.METRICS}, min(len(h), 288), True)
        return out


def post(store: FeedStore, start: int, stop: int) -> None:
    i = np.arange(start, stop)
    cpu = truth(i)
    rows = [{"timestamp": (T0 + int(k) * STEP).isoformat(), "server_name": SERVER, "profile": "web_api",
             "cpu_percent": round(float(c), 3), "memory_percent": round(float(c), 3),
             "disk_percent": round(float(c), 3), "load_average": round(float(c) / 10, 3)}
            for k, c in zip(i, cpu, strict=True)]
    result = ingest.validate_items(rows, now=(T0 + int(stop) * STEP).to_pydatetime())
    assert not result.errors
    store.upsert(result.rows)


def served(engine: PredictionEngine) -> dict[str, Any]:
    import json

    return json.loads(engine.predictions_json())["predictions"][0]


def test_guard_switches_to_naive_when_the_model_is_worse_and_back_when_it_is_better(store: FeedStore) -> None:
    stub = StubForecaster(error=60.0)  # far above every naive; its P50 crosses the CPU alert thresholds
    engine = PredictionEngine(stub, store, {"name": "stub", "version": "1", "run_id": None},
                              guard=ForecastGuard(store.engine, model_info={"name": "stub"}))
    post(store, 0, 288)
    assert engine.refresh() == 1
    first = served(engine)
    # the backtest on its own history already shows the model is worse: a naive is served
    assert first["forecast_source"]["cpu_percent"] != "model", first["forecast_source"]
    cpu = first["forecast"]["cpu_percent"]
    assert max(cpu["p50"]) < 85.0  # not the stub's 90-100
    assert all(lo <= mid <= hi for lo, mid, hi in zip(cpu["p10"], cpu["p50"], cpu["p90"], strict=True))
    assert not [a for a in engine.alerts.all() if a["metric"] == "cpu_percent"]  # alerts on what is served
    status = engine.guard_status
    assert status["servers_by_source"]["cpu_percent"]["model"] == 0
    assert status["skill"]["cpu_percent"] > 1.0

    step = 288
    for _ in range(4):  # four more hours of the bad model
        post(store, step, step + 12)
        step += 12
        engine.refresh()
    assert served(engine)["forecast_source"]["cpu_percent"] != "model"

    stub.error = 0.0  # the model becomes exact: once its scored forecasts outweigh the bad ones, it is back
    switched_at = None
    for hour in range(40):
        post(store, step, step + 12)
        step += 12
        engine.refresh()
        if served(engine)["forecast_source"]["cpu_percent"] == "model":
            switched_at = hour
            break
    assert switched_at is not None, engine.guard_status
    assert engine.guard_status["servers_by_source"]["cpu_percent"]["model"] == 1
    assert engine.guard_status["skill"]["cpu_percent"] <= 1.0
    assert served(engine)["forecast"]["cpu_percent"]["p50"][0] == pytest.approx(
        float(truth(np.array([step]))[0]), abs=0.01)


def test_guard_state_survives_a_new_engine_on_the_same_store(store: FeedStore) -> None:
    """A restarted worker (a new engine) reads the logged forecasts from the store and decides the same."""
    info = {"name": "stub"}
    engine = PredictionEngine(StubForecaster(40.0), store, info, guard=ForecastGuard(store.engine, model_info=info))
    post(store, 0, 300)
    engine.refresh()
    before = served(engine)["forecast_source"]
    again = PredictionEngine(StubForecaster(40.0), store, info,
                             guard=ForecastGuard(store.engine, backtest_origins=0, model_info=info))
    again.refresh()  # no backtest: the decision comes from what the first engine logged
    assert served(again)["forecast_source"] == before and before["cpu_percent"] != "model"


def test_without_a_guard_the_model_is_always_served(store: FeedStore) -> None:
    engine = PredictionEngine(StubForecaster(60.0), store, {"name": "stub"})
    post(store, 0, 288)
    engine.refresh()
    entry = served(engine)
    assert set(entry["forecast_source"].values()) == {"model"} and engine.guard_status is None
    for step in range(288, 296):  # the alert rules' persistence: the forecast holds for 30 min of data
        post(store, step, step + 1)
        engine.refresh()
    assert [a for a in engine.alerts.all() if a["metric"] == "cpu_percent"]  # the bad forecast alerts


@pytest.mark.slow
def test_guard_through_a_real_bentoml_serve(tmp_path: Path, tiny_checkpoint: Path, h: Any) -> None:
    """Over HTTP: a server whose CPU repeats every day exactly (the seasonal naive is exact, the model is
    not) is served the seasonal naive for CPU, and its flat metrics stay flat (the model when it is as
    exact as the fallback: a tie goes to the model; else the naive ensemble); /health and BentoML's
    /metrics count it and report the skill; a server with under 2 h of history has no score yet and gets the model."""
    import os

    import httpx
    from fleetcast_testkit.serve import served as serve

    env = {**os.environ, "FLEETCAST_DATA_DIR": str(tmp_path),
           "FLEETCAST_STORE_URL": f"sqlite:///{tmp_path / 'feed.db'}",
           "FLEETCAST_MODEL_PATH": str(tiny_checkpoint), "FLEETCAST_DEMO_FLEET": "0",
           "FLEETCAST_RATE_LIMIT_PER_SECOND": "0", "FLEETCAST_REFRESH_SECONDS": "0.5"}
    env.pop("FLEETCAST_API_TOKEN", None)
    flat = {"memory_percent": 41.0, "disk_percent": 30.0, "load_average": 0.12}
    daily = {**flat, "cpu_percent": lambda i: 40.0 + 25.0 * np.sin(2 * np.pi * i / 288.0)}
    items = h.series_items("daily-01", "generic", daily, steps=576) + \
        h.series_items("young-01", "generic", {**flat, "cpu_percent": 3.0}, steps=20)
    with serve(tmp_path / "serve.log", env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/feed/data", json={"records": items})
        assert r.status_code == 200 and r.json()["records_processed"] == len(items), r.text

        def both() -> dict[str, Any] | None:
            got = {p["server_name"]: p for p in http.get("/predictions").json()["predictions"]}
            return got if {"daily-01", "young-01"} <= set(got) else None

        got = h.wait_for(both, timeout=120)
        daily_src = got["daily-01"]["forecast_source"]
        assert daily_src["cpu_percent"] == "seasonal_naive", daily_src
        for metric, value in flat.items():  # the model when it is as exact as the fallback, else that
            assert daily_src[metric] in ("model", "naive_ensemble"), daily_src
            assert got["daily-01"]["forecast"][metric]["p50"][:12] == pytest.approx([value] * 12, abs=0.011)
        expected = [round(40.0 + 25.0 * np.sin(2 * np.pi * i / 288.0), 2) for i in range(576, 576 + 12)]
        assert got["daily-01"]["forecast"]["cpu_percent"]["p50"][:12] == pytest.approx(expected, abs=0.011)
        assert set(got["young-01"]["forecast_source"].values()) == {"model"}
        guard = http.get("/health").json()["forecast_guard"]
        assert guard["enabled"] is True
        assert guard["servers_by_source"]["cpu_percent"] == {"model": 1, "naive_ensemble": 0, "last_value": 0,
                                                              "seasonal_naive": 1, "mean_24h": 0}
        assert guard["servers_scored"]["cpu_percent"] == 1 and guard["skill"]["cpu_percent"] > 1.0
        metrics = http.get("/metrics").text  # BentoML's Prometheus endpoint
        assert 'fleetcast_guard_servers{metric="cpu_percent",source="seasonal_naive"} 1.0' in metrics, metrics[-3000:]
        assert 'fleetcast_guard_servers{metric="cpu_percent",source="model"} 1.0' in metrics
        memory = {source: float(line.split()[-1]) for source in ("model", "naive_ensemble")
                  for line in metrics.splitlines()
                  if line.startswith(f'fleetcast_guard_servers{{metric="memory_percent",source="{source}"}}')}
        assert sum(memory.values()) == 2.0, memory
        cpu_skill = 'fleetcast_guard_skill{metric="cpu_percent"}'
        skill = [line for line in metrics.splitlines() if line.startswith(cpu_skill)]
        assert skill and float(skill[0].split()[-1]) == pytest.approx(guard["skill"]["cpu_percent"], rel=1e-3)


def test_servers_on_different_days_keep_their_own_scores(store: FeedStore) -> None:
    """Retention is per server (vs its own newest origin): a server whose data ends 40 days before
    another's (a backfill, a replay) keeps its backtest and is decided on it like the other."""
    for name, shift in (("now-1", 0), ("replay-1", -40 * 288)):
        i = np.arange(0, 300)
        rows = [{"timestamp": (T0 + int(k + shift) * STEP).isoformat(), "server_name": name, "profile": "web_api",
                 "cpu_percent": round(float(c), 3), "memory_percent": 40.0, "disk_percent": 30.0,
                 "load_average": 0.5} for k, c in zip(i, truth(i), strict=True)]
        result = ingest.validate_items(rows, now=(T0 + 300 * STEP).to_pydatetime())
        assert not result.errors
        store.upsert(result.rows)
    engine = PredictionEngine(StubForecaster(60.0), store, {"name": "stub"},
                              guard=ForecastGuard(store.engine, model_info={"name": "stub"}))
    engine.refresh()
    import json

    sources = {p["server_name"]: p["forecast_source"]["cpu_percent"]
               for p in json.loads(engine.predictions_json())["predictions"]}
    assert sources["now-1"] != "model" and sources["replay-1"] != "model", sources
    scores = engine.guard.metric_scores("replay-1")
    assert scores is not None and scores[0].scored_steps > 0


def test_a_server_that_streamed_in_is_backtested_once_it_has_a_day(store: FeedStore) -> None:
    """A backfill posted in parts: the first refresh sees an hour (its forecast is logged, no actuals
    yet, no score); once a day of history is in, the guard backtests it instead of waiting for actuals."""
    engine = PredictionEngine(StubForecaster(60.0), store, {"name": "stub"},
                              guard=ForecastGuard(store.engine, model_info={"name": "stub"}))
    post(store, 0, 12)
    engine.refresh()
    assert served(engine)["forecast_source"]["cpu_percent"] == "model"  # no evidence yet
    post(store, 12, 300)  # the rest of the backfill: 288 steps later, no logged forecast has 8 h of actuals
    engine.refresh()
    assert served(engine)["forecast_source"]["cpu_percent"] != "model"
    assert engine.guard.metric_scores(SERVER)[0].scored_steps >= guard_min_steps()


def guard_min_steps() -> int:
    from models import guard

    return guard.MIN_SCORED_STEPS


def test_a_logged_refresh_computes_the_fallbacks_once_and_serves_the_same(store: FeedStore) -> None:
    """The hour's ledger row and the forecast served come from one ``naive_points`` per server, and what is
    served equals the fallback computed on its own (``guard.naive_quantiles``)."""
    from unittest import mock

    from models import guard

    info = {"name": "stub"}
    engine = PredictionEngine(StubForecaster(60.0), store, info,
                              guard=ForecastGuard(store.engine, backtest_origins=1, model_info=info))
    post(store, 0, 288)
    with mock.patch.object(guard, "naive_points", wraps=guard.naive_points) as points, \
            mock.patch.object(guard, "ensemble_points", wraps=guard.ensemble_points) as ensemble, \
            mock.patch.object(guard, "_baseline_points", wraps=guard._baseline_points) as base:
        engine.refresh()
    # one backtest cut + this origin, each once; before, serving a fallback computed it a third time
    calls = (points.call_count, ensemble.call_count, base.call_count)
    assert calls == (2, 2, 2), calls
    entry = served(engine)
    source = entry["forecast_source"]["cpu_percent"]
    assert source != "model"
    history = store.history([SERVER], steps=576)
    values = history[list(schema.METRICS)].to_numpy(dtype=float)
    expected = guard.naive_quantiles(values, source)[:, 0, :]
    assert entry["forecast"]["cpu_percent"]["p50"] == np.round(expected[:, 1], 3).tolist()
    assert entry["forecast"]["cpu_percent"]["p90"] == np.round(expected[:, 2], 3).tolist()
