"""Evaluation assets (group "training"): the trained TFT against the baselines on experiment_split's windows.

Thin glue over models.evaluation (metrics, plots, importance); results go to the
model's MLflow run through the ``mlflow`` resource.
"""

from typing import Any

import dagster as dg

from models import evaluation, tft
from orchestration.assets.training import GROUP
from orchestration.mlflow_resource import MlflowResource


@dg.asset(
    group_name=GROUP,
    description="TFT vs last-value / seasonal-naive / 24h-mean baselines on the same validation windows "
                "(origin every 2 h over the last 20 %), seen vs unseen servers; logged to the MLflow run.",
    kinds={"mlflow"},
)
def model_evaluation(
    context: dg.AssetExecutionContext, mlflow: MlflowResource, tft_model: dict[str, Any],
    experiment_split: evaluation.Experiment,
) -> dg.Output[dict[str, Any]]:
    exp = experiment_split
    exp.check_same_split("tft_model", tft_model["fingerprint"])
    forecaster = tft.Forecaster.from_checkpoint(tft_model["checkpoint"])
    result = exp.evaluate(forecaster.model)
    figures = evaluation.plot_forecasts(result, exp.frame)
    importance, imp_figures = evaluation.variable_importance(forecaster.model, exp.frame, exp.windows)
    figures.update(imp_figures)
    beats = evaluation.beats_baselines(result.metrics)
    mlflow.log_evaluation(tft_model["run_id"], result.metrics, result.table, figures,
                          extra={"variable_importance": importance, "beats_best_baseline": beats})
    m = result.metrics
    context.log.info(f"val_score {m['val_score']:.4f} vs best baseline {m['best_baseline_score']:.4f}; "
                     f"beats best baseline on P50 MAE: {beats}")
    summary = result.table[(result.table["bucket"] == "all") & (result.table["stat"] == "mae")]
    pivot = summary.pivot_table(index=["servers", "model"], columns="metric", values="value").round(3)
    return dg.Output(
        {"run_id": tft_model["run_id"], "metrics": m, "fingerprint": exp.split.fingerprint},
        metadata={
            "val_score": m["val_score"],
            "best_baseline_score": m["best_baseline_score"],
            **{f"val_mae_{t}": m[f"val_mae_{t}"] for t in evaluation.TARGETS},
            **{f"beats_baselines_{t}": ok for t, ok in beats.items()},
            "mae_table": dg.MetadataValue.md(pivot.reset_index().to_markdown(index=False)),
            "n_windows": int(m["n_windows"]),
        },
    )
