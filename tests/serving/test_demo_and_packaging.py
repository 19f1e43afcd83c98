"""The built-in demo fleet driven by the scenario endpoints, and packaging the MLflow champion for BentoML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from models import config, registry


def current(client: Any, server: str) -> dict[str, float]:
    return client.get(f"/predictions/{server}").json()["current"]


def test_scenario_changes_what_the_demo_fleet_emits(make_client: Any, h: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_DEMO_FLEET", "1")
    monkeypatch.setenv("FLEETCAST_DEMO_SERVERS", "4")
    monkeypatch.setenv("FLEETCAST_DEMO_STEP_SECONDS", "0.2")
    client = make_client()
    state = client.get("/scenario").json()
    assert state["demo_fleet"] is True and state["scenario"] == "baseline"
    preds = client.get("/predictions").json()["predictions"]  # 24 h of history: forecasts at once
    names = sorted(p["server_name"] for p in preds)
    assert len(names) == 4 and all(p["history_steps"] == 288 for p in preds)
    target, other = names[0], names[1]
    assert current(client, target)["cpu_percent"] < 90.0

    r = client.post("/scenario/set", json={"scenario": "critical", "servers": [target], "duration_hours": 2})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "success", "scenario": "critical", "duration_hours": 2.0, "servers": [target]}
    state = client.get("/scenario").json()
    assert state["scenario"] == "critical" and state["servers"] == [target] and state["expires_at"] is not None

    hot = h.wait_for(lambda: (c := current(client, target))["cpu_percent"] > 90 and c["memory_percent"] > 90 and c)
    assert hot["cpu_percent"] > 90.0
    assert current(client, other)["cpu_percent"] < 90.0  # only the chosen server
    alert = h.wait_for(lambda: [a for a in client.get("/alerts").json()["alerts"] if a["server_name"] == target])
    assert {a["alert_type"] for a in alert} & {"cpu_spike_predicted", "memory_exhaustion_predicted"}
    assert client.get("/health").json()["records_stored"] > 4 * 288  # the demo writes through the feed store

    assert client.post("/scenario/set", json={"scenario": "meltdown"}).status_code == 422
    bad_server = client.post("/scenario/set", json={"scenario": "critical", "servers": ["nope-01"]})
    assert bad_server.status_code == 422 and "nope-01" in bad_server.json()["detail"]
    assert client.post("/scenario/set", json={"scenario": "critical", "duration_hours": -1}).status_code == 422
    r = client.post("/scenario/set", json={"scenario": "baseline"})
    assert r.status_code == 200 and r.json()["servers"] == names
    assert client.get("/scenario").json()["scenario"] == "baseline"


def test_a_demo_fleet_larger_than_one_request_seeds_all_its_history(isolated_env: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.demo_fleet import DemoFleet
    from serving.store import FeedStore

    monkeypatch.setenv("FLEETCAST_MAX_RECORDS", "500")  # 3 servers x 288 steps = 864 records
    store = FeedStore()
    try:
        fleet = DemoFleet(store, servers=[("web-01", "web_api"), ("db-01", "database"), ("ml-01", "ml_compute")])
        assert fleet.seed_history() == 3 * 288
        assert store.count() == 3 * 288
    finally:
        store.dispose()


def test_packaging_asset_imports_the_registry_champion(isolated_env: Path, tiny_checkpoint: Path) -> None:
    from orchestration.assets.packaging import bento_model
    from serving import model_store

    run_id = registry.start_run({"preset": "tiny"})
    import mlflow

    mlflow.set_tracking_uri(config.mlflow_tracking_uri())
    mlflow.MlflowClient().log_metric(run_id, "val_score", 1.25)
    mv = registry.log_and_register(run_id, tiny_checkpoint)
    registry.client().set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, mv.version)

    from orchestration.mlflow_resource import MlflowResource

    result = dg.materialize([bento_model], resources={"mlflow": MlflowResource()})
    assert result.success
    meta = result.asset_materializations_for_node("bento_model")[0].metadata
    assert meta["registry_version"].value == str(mv.version) and meta["run_id"].value == run_id
    assert meta["metric/val_score"].value == 1.25

    forecaster, info = model_store.load_forecaster()
    assert (info["version"], info["run_id"]) == (str(mv.version), run_id)
    assert info["source"] == f"bentoml:{meta['bento_tag'].value}"
    assert (config.bentoml_home() / "models" / "fleetcast-tft").is_dir()
    assert forecaster.horizon == 96
