"""Prediction engine units: confidence, incremental batches, ingest parsing details."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.tft import Forecaster
from serving import forecasting, ingest, pages
from serving.forecasting import PredictionEngine, build_entry, confidence, fill_missing_metrics, rule_thresholds
from serving.store import FeedStore


def quantiles(width: float) -> dict[str, np.ndarray]:
    p50 = np.full(96, 50.0)
    q = np.stack([p50 - width / 2, p50, p50 + width / 2], axis=1)
    return {"cpu_percent": q, "memory_percent": q, "disk_percent": q, "load_average": q / 10}


def test_confidence_falls_with_band_width_short_history_and_unseen_servers() -> None:
    base = confidence(quantiles(10.0), 288)
    assert 0.0 < base <= 1.0
    assert confidence(quantiles(40.0), 288) < base
    assert confidence(quantiles(10.0), 12) < confidence(quantiles(10.0), 144) < base
    assert confidence(quantiles(10.0), 288, seen_in_training=False) < base
    assert confidence(quantiles(200.0), 288) >= 0.0


class CountingForecaster:
    """The real forecaster, recording which servers each batch asked for."""

    def __init__(self, inner: Forecaster) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    def forecast(self, history: Any) -> Any:
        self.calls.append(sorted(history["server_name"].unique()))
        return self.inner.forecast(history)


def test_engine_forecasts_only_servers_with_new_data(tmp_path: Path, tiny_checkpoint: Path, h: Any) -> None:
    store = FeedStore(f"sqlite:///{tmp_path / 'feed.db'}")
    fc = CountingForecaster(Forecaster.from_checkpoint(tiny_checkpoint))
    engine = PredictionEngine(fc, store, {"name": "m", "version": "1", "run_id": "r"})
    items = h.fleet_items(n_servers=3, steps=48)
    store.upsert(ingest.validate_items(items).rows)
    assert engine.refresh() == 3
    assert engine.refresh() == 0  # nothing new: no forecast call
    one = [i for i in h.fleet_items(n_servers=3, steps=1, seed=5) if i["server_name"] == items[0]["server_name"]]
    store.upsert(ingest.validate_items(one).rows)
    assert engine.refresh() == 1
    assert fc.calls == [sorted({i["server_name"] for i in items}), [items[0]["server_name"]]]
    assert engine.servers_tracked == 3  # the others keep their forecasts
    store.dispose()


def test_engine_answers_are_build_entry_serialised(tmp_path: Path, tiny_checkpoint: Path, h: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The refresh serialises entries from arrays (serving/forecasting.py, ``_serialised_entry``), in chunks of
    servers: the bytes are those of ``json.dumps(build_entry(...))`` on each chunk's history, a partial
    server included, and pages without filters are slices of the unpaged answer."""
    monkeypatch.setattr(forecasting, "REFRESH_CHUNK", 3)  # 4 servers: two chunks
    store = FeedStore(f"sqlite:///{tmp_path / 'feed.db'}")
    forecaster = Forecaster.from_checkpoint(tiny_checkpoint)
    engine = PredictionEngine(forecaster, store, {"name": "m", "version": "1", "run_id": "r"})
    items = h.fleet_items(n_servers=4, steps=300)
    partial = items[0]["server_name"]
    for item in items:
        if item["server_name"] == partial:
            item.pop("disk_percent")  # never reported: null in the answer, no forecast for it
    store.upsert(ingest.validate_items(items).rows)
    assert engine.refresh() == 4
    names = store.servers()
    assert partial in names[:3]
    for chunk in (names[:3], names[3:]):
        history, missing = fill_missing_metrics(store.history(chunk, steps=engine.read_steps))
        assert missing == ({partial: ("disk_percent",)} if partial in chunk else {})
        check_entries(engine, store, forecaster.forecast(history), history, missing)
    whole = json.loads(engine.predictions_json())["predictions"]
    page = json.loads(engine.predictions_page(pages.Query.parse(limit=3, offset=1)))
    assert page["predictions"] == whole[1:4] and page["total"] == 4 and page["next_offset"] is None
    assert json.loads(engine.predictions_page(pages.Query.parse(limit=2)))["next_offset"] == 2
    store.dispose()


def check_entries(engine: PredictionEngine, store: FeedStore, forecasts: dict[str, Any], history: Any,
                  missing: dict[str, tuple[str, ...]]) -> None:
    assert forecasts
    for name, fc in forecasts.items():
        server_history = history[history["server_name"] == name].tail(engine.history_steps)
        expected = build_entry(fc, server_history, engine.alerts.for_server(name),
                               rule_thresholds(engine.alert_config, fc.profile), None, missing.get(name, ()),
                               store.profile_sources([name]).get(name))
        assert engine.server_json(name) == json.dumps(expected, separators=(",", ":")).encode()
        assert len(expected["history"]["timestamps"]) == engine.history_steps


@pytest.mark.parametrize(("content_type", "body", "n"), [
    ("application/json", b'{"records": [{"a": 1}, {"b": 2}]}', 2),
    ("application/json; charset=utf-8", b'[{"a": 1}]', 1),
    ("application/json", b'{"server_name": "x"}', 1),
    ("application/x-ndjson", b'{"a": 1}\n\n{"b": 2}\n', 2),
    ("text/plain", b'{"a": 1}\n{"b": 2}', 2),
    ("", b'{"a": 1}\n{"b": 2}', 2),
    ("application/vnd.fleetcast+json", b"[{}]", 1),
])
def test_parse_body_accepts_the_documented_shapes(content_type: str, body: bytes, n: int) -> None:
    assert len(ingest.parse_body(body, content_type)) == n


def test_ndjson_bad_line_is_a_record_error_not_a_request_error() -> None:
    items = ingest.parse_body(b'{"a": 1}\n{oops\n', "application/x-ndjson")
    result = ingest.validate_items(items)
    assert result.errors[1]["index"] == 1 and result.errors[1]["error"].startswith("line 2: malformed JSON")


def test_aliases_only_fill_missing_contract_fields() -> None:
    out = ingest.apply_aliases({"hostname": "h1", "server_name": "s1", "cpu": 5, "host": {"name": "x"}})
    assert out["server_name"] == "s1" and out["cpu_percent"] == 5
    assert ingest.apply_aliases({"host": {"name": "ecs-host"}})["server_name"] == "ecs-host"


def test_an_idle_servers_band_survives_the_answers_rounding() -> None:
    import pandas as pd

    from models import schema
    from models.tft import ServerForecast

    # a server idling at 0.134 % CPU, its band a few thousandths of a point wide (as on NAB trace 24ae8d)
    band = np.tile([0.1312, 0.134, 0.1344], (96, 1))
    q = {m: band for m in schema.METRICS}
    origin = pd.Timestamp("2026-01-01 00:00")
    fc = ServerForecast("idle-1", "generic", origin, pd.date_range(origin, periods=97, freq="5min")[1:], q, 288, False)
    history = pd.DataFrame({schema.TIMESTAMP: [origin], schema.SERVER: ["idle-1"], schema.PROFILE: ["generic"],
                            schema.STATUS: ["normal"], **{m: [0.134] for m in schema.METRICS}})
    entry = build_entry(fc, history, [], thresholds={})
    cpu = entry["forecast"]["cpu_percent"]
    assert cpu["p10"][0] < cpu["p90"][0] and cpu["p10"][0] <= 0.134 <= cpu["p90"][0]  # 2 decimals: 0.13-0.13
    assert entry["predicted"]["cpu_percent"] == cpu["p50"][-1] == 0.134
    assert entry["current"]["cpu_percent"] == 0.13  # everything else keeps 2 decimals
