"""The Dagster training path end to end on a tiny fleet: data -> train -> evaluate -> register -> promote."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import pytest

from models import config, evaluation, registry, tft
from orchestration import jobs
from orchestration.assets import data, promotion, training
from orchestration.assets import evaluation as evaluation_assets
from orchestration.definitions import defs
from orchestration.mlflow_resource import MlflowResource
from orchestration.resources import PARQUET_IO_MANAGER, ParquetIOManager

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_train_config_presets() -> None:
    cfg = training.TrainConfig()
    assert cfg.preset == "demo"
    assert training._preset(cfg) == tft.PRESETS["demo"]
    assert tft.PRESETS["demo"].model.hidden_size == 32
    custom = training._preset(training.TrainConfig(preset="full", max_epochs=3, hidden_size=16,
                                                   limit_train_batches=0.25))
    assert custom.train.max_epochs == 3 and custom.train.accelerator == "auto"
    assert custom.model.hidden_size == 16 and custom.model.hidden_continuous_size == 4
    assert custom.train.limit_train_batches == 0.25
    with pytest.raises(ValueError, match="unknown preset"):
        training._preset(training.TrainConfig(preset="huge"))


def test_jobs_are_registered() -> None:
    job = defs.get_job_def("train_and_promote")
    full = defs.get_job_def("train_and_promote_full")
    assert job is not None and full is not None
    names = {"experiment_split", "tft_model", "model_evaluation", "registered_model", "champion_model"}
    graph = defs.resolve_asset_graph()
    assert names <= {k.to_user_string() for k in graph.get_all_asset_keys()}
    # the Launchpad's train_and_promote selects the training group: the split is rebuilt with the model
    assert {graph.get(dg.AssetKey(n)).group_name for n in names} == {"training"}
    assert jobs.train_and_promote_full.config == {"ops": {"tft_model": {"config": {"preset": "full"}}}}


def test_mlflow_resource_is_bound_to_its_uri(isolated_env: Path) -> None:
    """Every call through the resource goes to its own tracking URI, not the environment's."""
    uri = f"sqlite:///{isolated_env / 'resource.db'}"
    resource = MlflowResource(tracking_uri=uri)
    assert resource.uri() == uri and MlflowResource().uri() == config.mlflow_tracking_uri()
    run_id = resource.start_run({"preset": "tiny"}, tags={"who": "test"}, run_name="bound")
    resource.log_epoch(run_id, tft.EpochRecord(epoch=0, train_loss=0.5, val_loss=None, seconds=1.0))
    resource.log_epoch(run_id, tft.EpochRecord(epoch=1, train_loss=0.4, val_loss=0.45, seconds=2.0))
    c = resource.client()
    run = c.get_run(run_id)
    assert run.data.params["preset"] == "tiny" and run.data.tags["who"] == "test"
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "train_loss")] == [(0, 0.5), (1, 0.4)]
    assert [m.step for m in c.get_metric_history(run_id, "val_loss")] == [1]  # no value, no point
    assert [m.step for m in c.get_metric_history(run_id, "epoch_seconds")] == [0, 1]
    assert resource.current_champion() is None
    assert not (isolated_env / "mlflow.db").exists()  # the environment's store was never touched


@pytest.mark.slow
def test_training_assets_end_to_end(isolated_env: Path) -> None:
    uri = f"sqlite:///{isolated_env / 'resource.db'}"  # not the environment's URI: the resource's is used
    instance = dg.DagsterInstance.ephemeral()
    run_config = {"ops": {
        "fleet_dataset": {"config": {"n_servers": 8, "steps": 6 * 288, "seed": 3}},
        "tft_model": {"config": {"preset": "tiny", "max_epochs": 2}},
    }}
    result = dg.materialize(
        [data.fleet_dataset, training.experiment_split, training.tft_model, evaluation_assets.model_evaluation,
         promotion.registered_model, promotion.champion_model],
        run_config=run_config,
        resources={PARQUET_IO_MANAGER: ParquetIOManager(), "mlflow": MlflowResource(tracking_uri=uri)},
        instance=instance,
    )
    assert result.success
    # the split is built once, by its own asset, and shown in its metadata
    split = result.output_for_node("experiment_split")
    split_meta = result.asset_materializations_for_node("experiment_split")[0].metadata
    assert split_meta["dataset_fingerprint"].value == split.split.fingerprint
    assert split_meta["cutoff"].value == split.split.cutoff.isoformat()
    assert split_meta["unseen_servers"].value == ", ".join(split.split.unseen) and len(split.split.unseen) == 2
    assert split_meta["n_windows"].value + split_meta["n_unseen_windows"].value == len(split.windows)
    assert split_meta["n_records"].value == 8 * 6 * 288
    steps = [e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]
    assert steps.count("experiment_split") == 1
    trained = result.output_for_node("tft_model")
    assert trained["fingerprint"] == split.split.fingerprint
    assert Path(trained["checkpoint"]).is_file()
    assert Path(trained["checkpoint"]).is_relative_to(isolated_env)

    # progress reached the run log: one line per epoch
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("epoch 1/2" in m for m in messages) and any("epoch 2/2" in m for m in messages)

    # the MLflow run holds params, per-epoch loss, evaluation metrics and artifacts
    c = registry.client(uri)
    run = c.get_run(trained["run_id"])
    assert run.data.params["preset"] == "tiny"
    assert run.data.params["dataset_fingerprint"] == split.split.fingerprint
    assert run.data.params["n_records"] == str(8 * 6 * 288)
    assert int(run.data.params["n_parameters"]) == trained["n_parameters"]
    assert len(run.data.params["dataset_fingerprint"]) == 16
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train_loss")] == [0, 1]
    for name in ("val_score", "val_mae_cpu_percent_8h", "baseline_seasonal_naive_mae_cpu_percent_8h",
                 "coverage_p10_p90_cpu_percent", "unseen_mae_cpu_percent"):
        assert name in run.data.metrics, name
    mlflow.set_tracking_uri(uri)
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "evaluation", "plots"} <= artifacts
    plots = {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "plots")}
    assert "importance_encoder_variables.png" in plots
    assert any(p.startswith("forecast_") for p in plots)
    evaluation_files = {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "evaluation")}
    assert evaluation_files == {"evaluation.csv", "evaluation.json"}

    # the promotion decision follows the gate and is visible in Dagster metadata and MLflow tags
    decision = result.output_for_node("champion_model")
    metrics = result.output_for_node("model_evaluation")["metrics"]
    expected = "champion" if metrics["val_score"] < metrics["best_baseline_score"] else "rejected"
    assert decision["decision"] == expected
    assert c.get_run(run.info.run_id).data.tags["decision"] == expected
    champion = registry.current_champion(uri)
    assert (champion is not None) == (expected == "champion")
    mat = result.asset_materializations_for_node("champion_model")[0]
    assert mat.metadata["decision"].value == expected
    assert config.MODEL_NAME in {m.name for m in c.search_registered_models()}
    assert not (isolated_env / "mlflow.db").exists()  # every MLflow call went through the resource's URI


def test_promotion_refuses_an_evaluation_from_another_split(tiny_experiment: evaluation.Experiment,
                                                            isolated_env: Path) -> None:
    """champion_model never compares numbers from two splits: it stops before touching the registry."""
    context = dg.build_asset_context()
    stale = {"run_id": "r", "metrics": {"val_score": 0.5, "best_baseline_score": 1.0}, "fingerprint": "0" * 16}
    with pytest.raises(ValueError, match="model_evaluation was computed on dataset 0000000000000000"):
        promotion.champion_model(context=context, mlflow=MlflowResource(), registered_model={"version": "1"},
                                model_evaluation=stale, experiment_split=tiny_experiment)
    assert not (isolated_env / "mlflow.db").exists()
