"""The closed loop end to end: records posted to a running service's feed -> production_dataset (+ its
check) -> a tiny fine-tune of the champion -> evaluation and the gate on held-out production windows ->
bento_model -> the same running service serving the new version (it follows the packaged champion)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from models import config, registry
from orchestration import checks, jobs
from orchestration.assets import evaluation as evaluation_assets
from orchestration.assets import feed, packaging, promotion, training
from orchestration.mlflow_resource import MlflowResource
from orchestration.resources import PARQUET_IO_MANAGER, ParquetIOManager
from serving import model_store

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

FEED_DAYS = 4


def served_version(client: Any) -> str | None:
    return client.get("/health").json()["model"]["version"]


def test_feed_to_fine_tune_to_gate_to_the_running_service(service_env: Path, tiny_checkpoint: Path,
                                                          make_client: Callable[[], Any], h: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # the service follows BentoML's model store (not a file), checking for a new champion twice a second
    monkeypatch.delenv("FLEETCAST_MODEL_PATH")
    monkeypatch.setenv("FLEETCAST_MODEL_POLL_SECONDS", "0.5")
    first_run = registry.start_run({"preset": "tiny"}, run_name="simulated champion")
    v1 = registry.log_and_register(first_run, tiny_checkpoint)
    registry.client().set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, v1.version)
    model_store.import_champion()
    client = make_client()
    assert served_version(client) == str(v1.version)

    # production shippers post four days of three servers through the real feed endpoint
    items = h.fleet_items(n_servers=3, steps=FEED_DAYS * 288, seed=11)
    for start in range(0, len(items), 2000):
        assert client.post("/feed/data", json={"records": items[start:start + 2000]}).status_code == 200

    # the feed_retrain job's assets, tiny preset, fine-tuned from the champion
    run_config = jobs.feed_run_config("tiny")
    run_config["ops"]["tft_model"]["config"]["max_epochs"] = 1
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [feed.production_dataset, checks.production_dataset_valid, training.experiment_split, training.tft_model,
         evaluation_assets.model_evaluation, promotion.registered_model, promotion.champion_model,
         packaging.bento_model],
        run_config=run_config,
        resources={PARQUET_IO_MANAGER: ParquetIOManager(), "mlflow": MlflowResource()},
        instance=instance,
        tags={"fleetcast/trigger": "test", "fleetcast/reason": "integration test"},
    )
    assert result.success
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.metadata["servers"].value == 3

    # trained on the first 80 % of feed time, scored on windows after it, starting from v1's weights
    split = result.output_for_node("experiment_split")
    feed_end = max(w for w in split.frame["timestamp"])
    assert split.split.unseen == [] and (split.windows["origin"] >= split.split.cutoff).all()
    assert split.train_frame["timestamp"].max() < split.split.cutoff <= feed_end
    trained = result.output_for_node("tft_model")
    run = registry.client().get_run(trained["run_id"])
    assert run.data.params["source"] == "feed" and run.data.params["init_from_champion"] == "True"
    assert run.data.tags["dagster/fleetcast/reason"] == "integration test"

    # the gate compared the candidate with the champion re-scored on the same production windows
    decision = result.output_for_node("champion_model")
    metrics = result.output_for_node("model_evaluation")["metrics"]
    assert metrics["n_windows"] == len(split.windows)
    mat = result.asset_materializations_for_node("champion_model")[0].metadata
    assert mat["previous_champion_version"].value == str(v1.version)
    champion_on_feed = mat["previous_champion_val_score"].value
    assert champion_on_feed == pytest.approx(split.rescore(registry.load_version(str(v1.version))[0]), rel=1e-5)
    beats = metrics["val_score"] < metrics["best_baseline_score"] and metrics["val_score"] < champion_on_feed
    assert decision["decision"] == ("champion" if beats else
                                    "challenger" if metrics["val_score"] < metrics["best_baseline_score"]
                                    else "rejected")
    new_version = decision["version"]
    assert new_version != str(v1.version)

    if not beats:
        # the gate kept v1: the service still serves it; an engineer promotes the candidate by hand
        # (alias in MLflow, then the package_champion job) and the running service follows
        assert served_version(client) == str(v1.version)
        registry.client().set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, new_version)
        assert dg.materialize([packaging.bento_model], resources={"mlflow": MlflowResource()},
                              instance=instance).success
    h.wait_for(lambda: served_version(client) == new_version, timeout=60)
    h.wait_for(lambda: client.get("/predictions").status_code == 200
               and len(client.get("/predictions").json().get("predictions", [])) == 3, timeout=60)
