"""The promotion gate counts alerts (issue 10, item 3): a candidate whose alert backtest recall or precision
falls more than FLEETCAST_ALERT_GATE_TOLERANCE below the champion's is not promoted, whatever its MAE; the
reason is in the Dagster metadata and the MLflow tags. Real MLflow (SQLite) and the tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from models import config, evaluation, registry
from orchestration.assets import promotion
from orchestration.mlflow_resource import MlflowResource

GOOD = {"alerts_fleetcast_overall_recall_1h": 0.85, "alerts_fleetcast_overall_precision": 0.82}


def _version(resource: MlflowResource, checkpoint: Path, alert_metrics: dict[str, float]) -> tuple[str, str]:
    run_id = resource.start_run({"preset": "tiny"})
    c = resource.client()
    for key, value in {"val_score": 0.1, "best_baseline_score": 1.0, **alert_metrics}.items():
        c.log_metric(run_id, key, value)
    c.set_terminated(run_id)
    return run_id, str(resource.register(run_id, checkpoint).version)


@pytest.mark.parametrize(("recall", "promoted"), [(0.70, False), (0.83, True)])
def test_a_candidate_losing_alert_recall_is_not_promoted(
        isolated_env: Path, tiny_checkpoint: Path, tiny_experiment: evaluation.Experiment,
        monkeypatch: pytest.MonkeyPatch, recall: float, promoted: bool) -> None:
    monkeypatch.setenv("FLEETCAST_ALERT_GATE_TOLERANCE", "0.05")
    resource = MlflowResource()
    _, v1 = _version(resource, tiny_checkpoint, GOOD)
    resource.client().set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, v1)
    run2, v2 = _version(resource, tiny_checkpoint, {**GOOD, "alerts_fleetcast_overall_recall_1h": recall})
    evaluation_out = {"run_id": run2, "metrics": {"val_score": 0.1, "best_baseline_score": 1.0},
                      "fingerprint": tiny_experiment.split.fingerprint}
    out = promotion.champion_model(context=dg.build_asset_context(), mlflow=resource,
                                   registered_model={"version": v2}, model_evaluation=evaluation_out,
                                   experiment_split=tiny_experiment)
    tags = resource.client().get_run(run2).data.tags
    assert tags["alert_gate"] == ("pass" if promoted else "fail")
    meta = {k: getattr(v, "value", v) for k, v in out.metadata.items()}
    assert meta["alert_gate"] == tags["alert_gate_reason"]
    if promoted:
        assert "within tolerance" in tags["alert_gate_reason"]
    else:
        assert out.value["decision"] == "challenger" and meta["decision"] == "challenger"
        assert "alert recall at >= 1 h 0.700 < champion's 0.850" in out.value["reason"]
        assert tags["decision"] == "challenger" and "alert recall" in tags["decision_reason"]
        assert str(registry.current_champion().version) == v1  # the champion stays


def test_no_backtest_in_the_run_means_no_alert_gate(isolated_env: Path, tiny_checkpoint: Path) -> None:
    resource = MlflowResource()
    run_id, version = _version(resource, tiny_checkpoint, {})
    ok, reason = promotion.alert_gate(resource, run_id, version)
    assert ok and "not applied" in reason
    assert resource.client().get_run(run_id).data.tags["alert_gate"] == "pass"
