"""Alert explanations name the TFT inputs that drove the forecast (models/drivers.py, issue 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models import alerts as alert_rules
from models import drivers
from models.tft import Forecaster
from serving import ingest
from serving.forecasting import PredictionEngine
from serving.store import FeedStore


@pytest.fixture(scope="module")
def forecaster(tiny_checkpoint: Path) -> Forecaster:
    return Forecaster.from_checkpoint(tiny_checkpoint)


def test_variable_weights_are_the_librarys_interpretation_of_that_forecast(forecaster: Forecaster,
                                                                           tiny_fleet: Any) -> None:
    records = tiny_fleet.records
    servers = sorted(records["server_name"].unique())[:3]
    history = records[records["server_name"].isin(servers)].groupby("server_name").tail(288)
    weights = drivers.variable_weights(forecaster, history, servers[:2])
    assert sorted(weights) == servers[:2]  # only the servers asked for
    model = forecaster.model
    for w in weights.values():
        assert list(w["encoder"]) == list(model.encoder_variables)
        assert list(w["static"]) == list(model.static_variables)
        for part in ("encoder", "static", "decoder"):
            assert sum(w[part].values()) == pytest.approx(1.0, abs=1e-4)
    # the weights of one forecast: another server's history gives other weights
    a, b = (np.array(list(weights[s]["encoder"].values())) for s in servers[:2])
    assert not np.allclose(a, b)
    # the same as the library's own batch of one server
    alone = drivers.variable_weights(forecaster, history, servers[:1])[servers[0]]["encoder"]
    assert np.allclose(list(alone.values()), a, atol=1e-5)


def test_explain_ranks_the_inputs() -> None:
    w = {"encoder": {"cpu_percent": 0.1, "disk_percent": 0.6, "hour_sin": 0.3}, "static": {"profile": 1.0},
         "decoder": {"hour_sin": 0.7, "hour_cos": 0.3}}
    e = drivers.explain(w, k=2)
    assert e["history"] == [{"input": "disk_percent", "weight": 0.6}, {"input": "hour_sin", "weight": 0.3}]
    assert e["static"] == [{"input": "profile", "weight": 1.0}]
    assert e["future"] == [{"input": "hour_sin", "weight": 0.7}]
    assert e["text"] == "TFT inputs weighted most: disk_percent 0.60, hour_sin 0.30"


def test_the_book_keeps_the_drivers_of_an_alerts_opening() -> None:
    book = alert_rules.AlertBook(0, 0)
    t0 = pd.Timestamp("2026-03-02 00:00")
    alert = {"alert_type": "disk_full_predicted", "metric": "disk_percent", "severity": "low",
             "hours_to_breach": 3.0, "server_name": "s", "explanation": {"source": "trend", "text": "x"}}
    assert book.update("s", [alert], t0) == ["disk_full_predicted"]
    assert book.annotate("s", "disk_full_predicted", {"method": "tft-variable-selection", "text": "y"})
    assert not book.annotate("s", "cpu_spike_predicted", {"text": "y"})  # not active
    book.update("s", [{**alert, "explanation": {"source": "forecast", "text": "z"}}], t0 + pd.Timedelta("30min"))
    kept = book.for_server("s")[0]["explanation"]
    assert kept["source"] == "forecast" and kept["drivers"]["text"] == "y"


def test_an_alert_opened_by_the_engine_names_its_drivers(tmp_path: Path, tiny_checkpoint: Path, h: Any) -> None:
    store = FeedStore(f"sqlite:///{tmp_path / 'feed.db'}")
    config = alert_rules.load_config().with_persistence(0, 0)
    engine = PredictionEngine(Forecaster.from_checkpoint(tiny_checkpoint), store,
                              {"name": "m", "version": "1", "run_id": "r"}, alert_config=config)
    # a disk filling at 3 %/h from 70 %: the trend reaches 85 % in about 5 h; the rest flat and low
    items = h.series_items("fill-01", "web_api", {"cpu_percent": 20.0, "memory_percent": 40.0, "load_average": 1.0,
                                                  "disk_percent": lambda i: 70.0 - 0.25 * (71 - i)}, steps=72)
    store.upsert(ingest.validate_items(items).rows)
    assert engine.refresh() == 1
    alerts = [a for a in engine.alerts.all() if a["metric"] == "disk_percent"]
    assert alerts and not alerts[0]["already_above"]
    found = alerts[0]["explanation"]["drivers"]
    assert found["method"] == "tft-variable-selection"
    names = [d["input"] for d in found["history"]]
    assert names and set(names) <= set(engine.forecaster.model.encoder_variables)
    assert found["text"].startswith("TFT inputs weighted most: " + names[0])
    store.dispose()
