"""Promotion assets (group "training"): register the run's model, then the gated `champion` alias.

Thin glue over models.registry (the gate: ``registry.decide`` / ``registry.promote``) through the
``mlflow`` resource; the current champion is re-scored with ``Experiment.rescore`` on experiment_split.
The gate counts alerts too (``models.backtest.gate``): when the run has an alert backtest
(``alert_backtest``, logged to its MLflow run) and the champion's run has one, a candidate whose overall
recall at >= 1 h or precision of onsets is more than ``FLEETCAST_ALERT_GATE_TOLERANCE`` below the
champion's stays a challenger, whatever its MAE; the reason is in the metadata and the run's tags.
"""

from typing import Any

import dagster as dg

from models import backtest, config, evaluation
from models.settings import get_settings
from orchestration.assets.training import GROUP
from orchestration.mlflow_resource import MlflowResource


@dg.asset(
    group_name=GROUP,
    description="The run's checkpoint + pyfunc model logged to MLflow and registered as a new "
                "fleetcast-tft version.",
    kinds={"mlflow"},
)
def registered_model(
    context: dg.AssetExecutionContext, mlflow: MlflowResource, tft_model: dict[str, Any],
    model_evaluation: dict[str, Any],
) -> dg.Output[dict[str, Any]]:
    mv = mlflow.register(tft_model["run_id"], tft_model["checkpoint"])
    context.log.info(f"registered {config.MODEL_NAME} v{mv.version} from run {mv.run_id}")
    return dg.Output({"version": str(mv.version), "run_id": mv.run_id},
                     metadata={"model": config.MODEL_NAME, "version": str(mv.version), "run_id": mv.run_id})


@dg.asset(
    group_name=GROUP,
    description="Gated promotion (models.registry.promote): the new version takes the `champion` alias only "
                "if its val_score beats the best baseline and the current champion re-scored on "
                "experiment_split's windows.",
    kinds={"mlflow"},
    deps=["alert_backtest"],  # ordering only: the gate reads the backtest from the run (absent: no alert gate)
)
def champion_model(
    context: dg.AssetExecutionContext, mlflow: MlflowResource, registered_model: dict[str, Any],
    model_evaluation: dict[str, Any], experiment_split: evaluation.Experiment,
) -> dg.Output[dict[str, Any]]:
    experiment_split.check_same_split("model_evaluation", model_evaluation["fingerprint"])
    alert_ok, alert_reason = alert_gate(mlflow, model_evaluation["run_id"], registered_model["version"])
    context.log.info(f"alert gate: {alert_reason}")
    if not alert_ok:
        return _held_back(mlflow, registered_model["version"], model_evaluation, alert_reason)
    decision = mlflow.promote(registered_model["version"], model_evaluation["metrics"], experiment_split.rescore)
    if decision.champion_val_score is not None:
        context.log.info(f"champion v{decision.champion_version} re-scored on this run's windows: "
                         f"val_score {decision.champion_val_score:.4f}")
    context.log.info(f"v{decision.version}: {decision.decision} - {decision.reason}")
    champ = mlflow.current_champion()
    return dg.Output(
        {"decision": decision.decision, "reason": decision.reason, "version": decision.version,
         "champion_version": str(champ.version) if champ is not None else None},
        metadata={
            "decision": decision.decision,
            "reason": decision.reason,
            "candidate_version": decision.version,
            "candidate_val_score": decision.val_score,
            "best_baseline_score": decision.best_baseline_score,
            "previous_champion_version": decision.champion_version or "",
            "previous_champion_val_score": (decision.champion_val_score
                                            if decision.champion_val_score is not None else float("nan")),
            "champion_version": str(champ.version) if champ is not None else "",
            "alert_gate": alert_reason,
        },
    )


def alert_gate(mlflow: MlflowResource, run_id: str, version: str) -> tuple[bool, str]:
    """``models.backtest.gate`` on the candidate's run metrics and the champion's; tags the run with the
    outcome (``alert_gate``, ``alert_gate_reason``)."""
    c = mlflow.client()
    candidate = dict(c.get_run(run_id).data.metrics)
    champ = mlflow.current_champion()
    if not any(k.startswith("alerts_fleetcast_overall_") for k in candidate):
        ok, reason = True, "no alert backtest in this run: alert gate not applied"
    elif champ is None or str(champ.version) == str(version) or not champ.run_id:
        ok, reason = True, "no champion to compare the alert backtest with"
    else:
        ok, reason = backtest.gate(candidate, dict(c.get_run(champ.run_id).data.metrics),
                                   get_settings().alert_gate_tolerance)
        reason = f"v{version} vs champion v{champ.version}: {reason}"
    c.set_tag(run_id, "alert_gate", "pass" if ok else "fail")
    c.set_tag(run_id, "alert_gate_reason", reason)
    return ok, reason


def _held_back(mlflow: MlflowResource, version: str, model_evaluation: dict[str, Any],
               reason: str) -> dg.Output[dict[str, Any]]:
    """The candidate failed the alert gate: it stays a challenger (tags as ``registry.promote`` writes)."""
    c = mlflow.client()
    for key, value in {"decision": "challenger", "decision_reason": reason}.items():
        c.set_model_version_tag(config.MODEL_NAME, str(version), key, value)
        c.set_tag(model_evaluation["run_id"], key, value)
    c.set_model_version_tag(config.MODEL_NAME, str(version), "challenger", "true")
    champ = mlflow.current_champion()
    return dg.Output(
        {"decision": "challenger", "reason": reason, "version": str(version),
         "champion_version": str(champ.version) if champ is not None else None},
        metadata={"decision": "challenger", "reason": reason, "candidate_version": str(version),
                  "candidate_val_score": float(model_evaluation["metrics"]["val_score"]),
                  "alert_gate": reason,
                  "champion_version": str(champ.version) if champ is not None else ""},
    )
