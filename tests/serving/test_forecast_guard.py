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
             "disk_percent": round(float(c), 3), "load_average": round(float(c) / 10, 3)} for k, c in zip(i, cpu)]
    result = ingest.validate_items(rows, now=(T0 + int(stop) * STEP).to_pydatetime())
    assert not result.errors
    store.upsert(result.rows)


def served(engine: PredictionEngine) -> dict[str, Any]:
    import json

    return json.loads(engine.predictions_json())["predictions"][0]


@pytest.fixture
def store(tmp_path: Path) -> FeedStore:
    s = FeedStore(f"sqlite:///{tmp_path / 'feed.db'}")
    yield s
    s.dispose()


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
    assert [a for a in engine.alerts.all() if a["metric"] == "cpu_percent"]  # the bad forecast alerts
