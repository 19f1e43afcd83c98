"""The closed loop's data side and automation: production dataset, its check with production rules,
the retraining decision, the feed sensor (``dg.build_sensor_context``) and the weekly schedule."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from models import production, schema
from orchestration import jobs
from orchestration.assets.feed import production_dataset
from orchestration.checks import production_dataset_valid
from orchestration.definitions import defs
from orchestration.resources import PARQUET_IO_MANAGER, ParquetIOManager
from orchestration.schedules import weekly_feed_retrain
from orchestration.sensors import feed_retrain_sensor
from serving.store import FeedStore

T0 = datetime(2026, 11, 2, 0, 0)


def rows(server: str, steps: range, profile: str = "web_api", jitter_s: int = 0) -> list[dict[str, Any]]:
    return [{"timestamp": T0 + timedelta(minutes=5 * i, seconds=jitter_s), "server_name": server,
             "cpu_percent": 20.0 + (i % 7), "memory_percent": 50.0, "disk_percent": 40.0, "load_average": 1.0,
             "status": "healthy", "profile": profile} for i in steps]


def write(records: list[dict[str, Any]]) -> None:
    store = FeedStore()
    try:
        store.upsert(records)
    finally:
        store.dispose()


def test_production_dataset_is_on_the_grid_and_gaps_are_reported_not_fatal() -> None:
    raw = pd.DataFrame(rows("a", range(0, 100), jitter_s=40) + rows("a", range(102, 200), jitter_s=40)
                       + rows("a", range(230, 300)) + rows("b", range(0, 300), profile="database"))
    data = production.production_dataset(raw)
    assert (data[schema.TIMESTAMP].dt.second == 0).all()  # floored onto the grid
    a = data[data[schema.SERVER] == "a"]
    assert len(a) == 300 - 30  # the 2-step gap filled, the 30-step outage left as a gap
    report = production.validate_production(data)
    assert report.ok, report.summary()
    assert report.gaps[["server_name", "steps"]].values.tolist() == [["a", 30]]
    assert "generic" in report.missing_profiles and "database" not in report.missing_profiles
    assert report.server_days == 4  # 300 steps = 25 h: two days for each server
    # a value out of range is fatal
    bad = data.copy()
    bad.loc[5, "cpu_percent"] = 250.0
    worse = production.validate_production(bad)
    assert not worse.ok and set(worse.fatal["column"]) == {"cpu_percent"}
    assert not production.validate_production(production.production_dataset(schema.empty_frame())).ok


def test_skill_is_read_from_health_and_absence_is_unknown() -> None:
    assert production.skill_from_health({"status": "ok", "fleet_skill": 1.4}) == 1.4
    assert production.skill_from_health({"guard": {"rolling_skill": 0.8}}) == 0.8
    assert production.skill_from_health({"status": "ok"}) is None
    assert production.skill_from_health({"fleet_skill": None, "skill": float("nan")}) is None
    assert production.read_fleet_skill("http://127.0.0.1:9/health", timeout=0.5) is None  # nobody there


def test_retrain_decision() -> None:
    d = production.retrain_decision(30, 10, 14, None, 2.0, 24.0)
    assert d.launch and d.trigger == "feed_growth" and "grew by 20" in d.reason
    d = production.retrain_decision(20, 10, 14, None, None, 24.0)
    assert not d.launch and "unknown" in d.reason
    d = production.retrain_decision(20, 10, 14, 0.8, None, 24.0)
    assert d.launch and d.trigger == "skill"
    d = production.retrain_decision(20, 10, 14, 0.8, 3.0, 24.0)
    assert not d.launch and "3.0 h ago" in d.reason
    assert not production.retrain_decision(20, 10, 14, 1.2, None, 24.0).launch
    assert not production.retrain_decision(0, 0, 14, 0.5, None, 24.0).launch  # nothing to learn from


@pytest.fixture
def health_server() -> Iterator[dict[str, Any]]:
    """A real HTTP /health answering whatever the test puts in the returned dict."""
    doc: dict[str, Any] = {"status": "ok"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    doc["_url"] = f"http://127.0.0.1:{server.server_address[1]}/health"
    try:
        yield doc
    finally:
        server.shutdown()
        server.server_close()


def test_sensor_decisions(isolated_env: Path, health_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_RETRAIN_HEALTH_URL", health_server.pop("_url"))
    monkeypatch.setenv("FLEETCAST_RETRAIN_SERVER_DAYS", "4")
    monkeypatch.setenv("FLEETCAST_RETRAIN_PRESET", "tiny")
    instance = dg.DagsterInstance.ephemeral()

    # an empty store: nothing to learn from
    result = feed_retrain_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and "grew by 0 of 4" in result.skip_message

    # three server-days, skill unknown (no field in /health): not yet
    write(rows("a", range(0, 300)) + rows("b", range(0, 100)))
    result = feed_retrain_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and "unknown" in result.skip_message

    # five: launch, fine-tuning on the feed, the reason in the tags
    write(rows("c", range(0, 300)))
    context = dg.build_sensor_context(instance=instance)
    request = feed_retrain_sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert request.tags["fleetcast/trigger"] == "sensor:feed_growth"
    assert "grew by 5 server-days" in request.tags["fleetcast/reason"]
    assert request.run_config == jobs.feed_run_config("tiny")
    assert request.run_config["ops"]["tft_model"]["config"]["init_from_champion"] is True
    cursor = context.cursor
    assert json.loads(cursor)["server_days"] == 5

    # right after it: no growth, the model beats naive -> skip; the model loses to naive -> still skip
    # (a run started less than FLEETCAST_RETRAIN_MIN_HOURS ago) ...
    health_server["fleet_skill"] = 1.3
    result = feed_retrain_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    assert isinstance(result, dg.SkipReason) and "1.300" in result.skip_message
    health_server["fleet_skill"] = 0.7
    result = feed_retrain_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    assert isinstance(result, dg.SkipReason) and "ago" in result.skip_message
    # ... and launches once the cool-down is over
    monkeypatch.setenv("FLEETCAST_RETRAIN_MIN_HOURS", "0")
    request = feed_retrain_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    assert isinstance(request, dg.RunRequest) and request.tags["fleetcast/trigger"] == "sensor:skill"
    assert request.tags["fleetcast/fleet_skill"] == "0.7000"


def test_weekly_schedule_and_automation_are_registered() -> None:
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 30, 3, 0))
    request = weekly_feed_retrain(context)
    assert isinstance(request, dg.RunRequest)
    assert request.tags["fleetcast/trigger"] == "schedule:weekly" and "2026-11-30T03:00" in request.tags[
        "fleetcast/reason"]
    assert request.run_config["ops"]["experiment_split"]["config"]["source"] == "feed"
    assert weekly_feed_retrain.cron_schedule == "0 3 * * 1"
    assert defs.get_sensor_def("feed_retrain_sensor").job_name == "feed_retrain"
    assert defs.get_schedule_def("weekly_feed_retrain").job_name == "feed_retrain"
    # off until someone switches them on (UI Automation tab or `dagster sensor start`)
    assert feed_retrain_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert weekly_feed_retrain.default_status == dg.DefaultScheduleStatus.STOPPED
    job = defs.get_job_def("feed_retrain")
    assert "production_dataset" in {k.to_user_string() for k in job.asset_layer.executable_asset_keys}


def test_production_dataset_asset_and_its_check(isolated_env: Path) -> None:
    write(rows("a", range(0, 100), jitter_s=70) + rows("a", range(140, 300)) + rows("b", range(0, 300)))
    result = dg.materialize([production_dataset, production_dataset_valid],
                            resources={PARQUET_IO_MANAGER: ParquetIOManager()})
    assert result.success
    data = result.output_for_node("production_dataset")
    assert len(data) == 260 + 300 and np.isclose(data["cpu_percent"].iloc[0], 20.0)
    meta = result.asset_materializations_for_node("production_dataset")[0].metadata
    assert meta["server_days"].value == 4 and meta["feed_records"].value == 560
    check = result.get_asset_check_evaluations()[0]
    assert check.passed
    assert check.metadata["gaps"].value == 1 and check.metadata["gap_steps"].value == 40
    assert "generic" in check.metadata["missing_profiles"].value
