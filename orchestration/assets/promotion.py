"""Promotion assets (group "training"): register the run's model, then the gated `champion` alias.

Thin glue over models.registry (the gate: ``registry.decide`` / ``registry.promote``) through the
``mlflow`` resource; the current champion is re-scored with ``Experiment.rescore`` on experiment_split.
"""

from typing import Any

import dagster as dg

from models import config, evaluation
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
)
def champion_model(
    context: dg.AssetExecutionContext, mlflow: MlflowResource, registered_model: dict[str, Any],
    model_evaluation: dict[str, Any], experiment_split: evaluation.Experiment,
) -> dg.Output[dict[str, Any]]:
    experiment_split.check_same_split("model_evaluation", model_evaluation["fingerprint"])
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
        },
    )
