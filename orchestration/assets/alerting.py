"""Alert backtest asset (group "training"): the trained model's alerts on the held-out simulated fleet.

Thin glue over models.backtest (the protocol of issue 10): after ``model_evaluation`` the run's checkpoint
is backtested with the alert rules in force (models/alerts.yaml and its calibrated cuts) next to
predict_linear and a static threshold; the figures go to the model's MLflow run under stable names
(``alerts_<method>_<metric>_<figure>``) with the table and a precision/recall-vs-cut plot. The promotion
gate (``champion_model``) compares the overall recall and precision with the champion's.
"""

import json
from typing import Any

import dagster as dg
from pydantic import Field

from models import backtest
from orchestration.assets.training import GROUP
from orchestration.mlflow_resource import MlflowResource


class AlertBacktestConfig(dg.Config):
    days: int = Field(default=backtest.TEST_FLEET.days, description="days of origins (every 30 min)")
    n_servers: int = Field(default=backtest.TEST_FLEET.n_servers, description="servers of the held-out fleet")
    real_traces: bool = Field(default=True, description="also backtest the NAB CPU traces (anomaly windows)")
    curve: bool = Field(default=True, description="log the precision/recall-vs-cut plot")


@dg.asset(
    group_name=GROUP,
    description="Alert backtest (models.backtest): recall at >= 1 h lead, median lead, precision of onsets, "
                "onsets per server-day on a held-out simulated fleet (fresh seed, unseen names), vs "
                "predict_linear(1h) and a static threshold; logged to the MLflow run.",
    kinds={"mlflow"},
)
def alert_backtest(
    context: dg.AssetExecutionContext, config: AlertBacktestConfig, mlflow: MlflowResource,
    tft_model: dict[str, Any], model_evaluation: dict[str, Any],
) -> dg.Output[dict[str, Any]]:
    spec = backtest.FleetSpec(n_servers=config.n_servers, days=config.days)
    result = backtest.run_backtest(tft_model["checkpoint"], spec, curve=config.curve, real=config.real_traces,
                                   progress=context.log.info)
    metrics = backtest.mlflow_metrics(result)
    _log(mlflow, model_evaluation["run_id"], metrics, result, config.curve)
    overall = result.overall()
    context.log.info(f"alerts: recall >= 1 h {overall['recall_1h']:.2f}, precision {overall['precision']:.2f}, "
                     f"median lead {overall['median_lead_h']:.1f} h")
    return dg.Output(
        {"run_id": model_evaluation["run_id"], "metrics": metrics},
        metadata={
            **{f"fleetcast_{k}": overall[k] for k in ("recall_1h", "median_lead_h", "precision",
                                                      "onsets_per_server_day")},
            "table": dg.MetadataValue.md(backtest.markdown_table(result)),
            "seconds": sum(result.seconds.values()),
        },
    )


def _log(resource: MlflowResource, run_id: str, metrics: dict[str, float], result: backtest.BacktestResult,
         curve: bool) -> None:
    """Metrics, ``alerts/`` (table, cuts, curve, real traces) and ``plots/alerts_precision_recall_vs_cut.png``."""
    import matplotlib.pyplot as plt
    import mlflow

    resource.configure()
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        mlflow.log_text(result.table.to_csv(index=False), "alerts/backtest.csv")
        mlflow.log_text(json.dumps({"cuts": result.cuts, "curve": result.curve.to_dict("records"),
                                    "real_traces": result.real.to_dict("records"), "seconds": result.seconds},
                                   indent=2, default=str), "alerts/backtest.json")
        if curve:
            fig = backtest.plot_curve(result)
            mlflow.log_figure(fig, "plots/alerts_precision_recall_vs_cut.png")
            plt.close(fig)
