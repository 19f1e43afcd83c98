"""MLflow: run logging, the pyfunc model, registration, gated champion promotion, champion loading.

Plain functions over ``mlflow`` / ``MlflowClient``, each taking the tracking URI (default:
``models.config``); Dagster's ``MlflowResource`` binds them to its URI. Registered model:
:data:`models.config.MODEL_NAME` (``fleetcast-tft``), alias :data:`models.config.CHAMPION_ALIAS` (``champion``).

Promotion rule (:func:`decide`): a candidate becomes champion only if

1. its ``val_score`` beats the best baseline's score on the same windows, and
2. there is no champion, or the candidate's ``val_score`` is lower than the current champion's
   ``val_score`` **re-evaluated on the candidate's validation windows** (same data, same windows,
   same scale), not the number the champion logged on its own data.

Otherwise the version is tagged ``decision=challenger`` (beats baselines, not the champion) or
``decision=rejected`` (does not beat the baselines), with ``decision_reason``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from models import config, grid
from models.tft import EpochRecord, Forecaster, forecasts_to_frame

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"  # run artifact dir holding tft.pt
CHECKPOINT_FILE = "tft.pt"
PYFUNC_NAME = "model"
PIP_REQUIREMENTS = [
    "torch==2.13.0",
    "lightning>=2.6,<2.7",
    "pytorch-forecasting==1.8.0",
    "pandas>=2.3,<2.4",
    f"mlflow=={mlflow.__version__}",
]


# --- set-up ------------------------------------------------------------------------------------------
def configure(tracking_uri: str | None = None) -> str:
    """Point mlflow at ``tracking_uri`` (default: models.config) and make sure the experiment exists.

    Returns the experiment id. New experiments keep artifacts under ``config.mlflow_artifact_root()``.
    """
    uri = tracking_uri or config.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    if exp is None:
        root = config.mlflow_artifact_root()
        root.mkdir(parents=True, exist_ok=True)
        exp_id = client.create_experiment(config.EXPERIMENT_NAME, artifact_location=root.resolve().as_uri())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def client(tracking_uri: str | None = None) -> MlflowClient:
    uri = tracking_uri or config.mlflow_tracking_uri()
    return MlflowClient(uri, uri)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# --- run logging -------------------------------------------------------------------------------------
def start_run(params: dict[str, Any], tags: dict[str, str] | None = None, tracking_uri: str | None = None,
              run_name: str | None = None) -> str:
    """Create a run with ``params`` (+ git commit) and return its id; the run is left finished."""
    configure(tracking_uri)
    all_tags = {"fleetcast.stage": "training", **(tags or {})}
    commit = git_commit()
    if commit:
        all_tags["git_commit"] = commit
    with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
        mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
        return run.info.run_id


def log_epoch(run_id: str, record: EpochRecord, tracking_uri: str | None = None) -> None:
    """One epoch's ``train_loss`` / ``val_loss`` / ``epoch_seconds`` with step = epoch (called as each ends).

    Hand-written rather than Lightning's ``MLFlowLogger``: ``models.tft.train_tft`` builds its Trainer
    with ``logger=False`` and reports epochs through ``EpochHistory``; a logger there would record the
    library's own names and steps (``train_loss_step``/``train_loss_epoch`` at step = global step) and
    its hyper-parameters, not these metrics (names and steps are documented in docs/training.md).
    """
    metrics = {"train_loss": record.train_loss, "val_loss": record.val_loss, "epoch_seconds": record.seconds}
    timestamp = int(time.time() * 1000)
    client(tracking_uri).log_batch(run_id, metrics=[
        Metric(name, float(value), timestamp, record.epoch) for name, value in metrics.items() if value is not None
    ])



def log_evaluation(
    run_id: str,
    metrics: dict[str, float],
    table: pd.DataFrame,
    figures: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> None:
    """Metrics (stable names), the evaluation table as CSV and JSON, figures under ``plots/``."""
    configure(tracking_uri)
    import matplotlib.pyplot as plt

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            table.to_csv(d / "evaluation.csv", index=False)
            (d / "evaluation.json").write_text(json.dumps({
                "metrics": metrics, "table": table.to_dict(orient="records"), **(extra or {})
            }, indent=2, default=str))
            mlflow.log_artifacts(str(d), artifact_path="evaluation")
        for name, fig in (figures or {}).items():
            mlflow.log_figure(fig, f"plots/{name}")
            plt.close(fig)


# --- the logged model --------------------------------------------------------------------------------
class FleetcastTFT(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: records DataFrame in, long-format quantile forecasts out.

    Records at any times are put on the grid by :func:`models.grid.align` first (the policy training and
    the feed store use). Output columns: server_name, profile, origin, timestamp, step, metric, p10,
    p50, p90.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.forecaster = Forecaster.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        # the one alignment policy, as training and the feed store apply it (models.grid)
        history = grid.align(pd.DataFrame(model_input), steps=self.forecaster.max_encoder_length)
        return forecasts_to_frame(self.forecaster.forecast(history))


def log_and_register(run_id: str, checkpoint: str | Path, tracking_uri: str | None = None) -> ModelVersion:
    """Log the checkpoint and the pyfunc model to ``run_id`` and register a new ``fleetcast-tft`` version."""
    configure(tracking_uri)
    checkpoint = Path(checkpoint)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(checkpoint), artifact_path=CHECKPOINT_ARTIFACT)
        info = mlflow.pyfunc.log_model(
            name=PYFUNC_NAME,
            python_model=FleetcastTFT(),
            artifacts={"checkpoint": str(checkpoint)},
            pip_requirements=PIP_REQUIREMENTS,
        )
    c = client(tracking_uri)
    if not c.search_registered_models(filter_string=f"name = '{config.MODEL_NAME}'"):
        c.create_registered_model(config.MODEL_NAME)
    return c.create_model_version(config.MODEL_NAME, info.model_uri, run_id=run_id)


# --- promotion ---------------------------------------------------------------------------------------
@dataclass
class Decision:
    version: str
    decision: str  # champion | challenger | rejected
    reason: str
    val_score: float
    best_baseline_score: float
    champion_version: str | None = None
    champion_val_score: float | None = None  # the current champion re-scored on the same windows

    @property
    def promoted(self) -> bool:
        return self.decision == "champion"

    def as_tags(self) -> dict[str, str]:
        return {f"decision{'' if k == 'decision' else '_' + k}": str(v)
                for k, v in asdict(self).items() if v is not None and k != "version"}


def decide(version: str, metrics: dict[str, float], champion_version: str | None = None,
           champion_val_score: float | None = None) -> Decision:
    """The gate. ``champion_val_score`` must come from the same windows as ``metrics``."""
    score, best = float(metrics["val_score"]), float(metrics["best_baseline_score"])
    common = dict(version=version, val_score=score, best_baseline_score=best,
                  champion_version=champion_version, champion_val_score=champion_val_score)
    if not score < best:
        return Decision(decision="rejected",
                        reason=f"val_score {score:.4f} does not beat the best baseline ({best:.4f})", **common)
    if champion_version is not None and champion_val_score is not None and not score < champion_val_score:
        return Decision(decision="challenger",
                        reason=(f"val_score {score:.4f} does not beat champion v{champion_version} "
                                f"({champion_val_score:.4f} on the same windows)"), **common)
    if champion_version is None:
        reason = f"first champion: val_score {score:.4f} beats the best baseline ({best:.4f})"
    else:
        reason = (f"val_score {score:.4f} beats champion v{champion_version} ({champion_val_score:.4f} "
                  f"on the same windows) and the best baseline ({best:.4f})")
    return Decision(decision="champion", reason=reason, **common)


def current_champion(tracking_uri: str | None = None) -> ModelVersion | None:
    try:
        return client(tracking_uri).get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    except MlflowException:
        return None


def promote(
    version: ModelVersion | str,
    metrics: dict[str, float],
    rescore: Callable[[Forecaster], float] | None,
    tracking_uri: str | None = None,
) -> Decision:
    """Gated promotion of ``version`` (see module doc); tags the version and its run with the decision.

    ``rescore(champion_forecaster) -> val_score`` evaluates the current champion on the candidate's
    windows. Without it the champion's logged ``val_score`` is used only when its run's dataset
    fingerprint equals the candidate's (same data, same windows); otherwise the candidate is kept
    as challenger because the two cannot be compared honestly.
    """
    c = client(tracking_uri)
    number = str(version.version if isinstance(version, ModelVersion) else version)
    mv = c.get_model_version(config.MODEL_NAME, number)
    champ = current_champion(tracking_uri)
    if champ is not None and str(champ.version) == number:
        champ = None
    champ_score: float | None = None
    if champ is not None:
        if rescore is not None:
            forecaster, _ = load_version(str(champ.version), tracking_uri)
            champ_score = float(rescore(forecaster))
        else:
            champ_run = c.get_run(champ.run_id)
            cand_run = c.get_run(mv.run_id)
            same = (champ_run.data.params.get("dataset_fingerprint")
                    == cand_run.data.params.get("dataset_fingerprint"))
            if not same or "val_score" not in champ_run.data.metrics:
                d = Decision(version=number, decision="challenger",
                             reason="champion evaluated on other data and no re-scoring available",
                             val_score=float(metrics["val_score"]),
                             best_baseline_score=float(metrics["best_baseline_score"]),
                             champion_version=str(champ.version))
                _record(c, mv, d)
                return d
            champ_score = float(champ_run.data.metrics["val_score"])
    d = decide(number, metrics, str(champ.version) if champ is not None else None, champ_score)
    _record(c, mv, d)
    if d.promoted:
        c.set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, number)
    return d


def _record(c: MlflowClient, mv: ModelVersion, d: Decision) -> None:
    for key, value in d.as_tags().items():
        c.set_model_version_tag(config.MODEL_NAME, str(mv.version), key, value)
        if mv.run_id:
            c.set_tag(mv.run_id, key, value)
    if d.decision != "champion":
        c.set_model_version_tag(config.MODEL_NAME, str(mv.version), d.decision, "true")


# --- loading -----------------------------------------------------------------------------------------
def _download_checkpoint(model_uri: str, dst: Path | None, tracking_uri: str | None) -> Path:
    configure(tracking_uri)
    target = dst or Path(tempfile.mkdtemp(prefix="fleetcast-model-"))
    target.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(target)))
    found = sorted(local.rglob(CHECKPOINT_FILE))
    if not found:
        raise FileNotFoundError(f"{model_uri} holds no {CHECKPOINT_FILE}")
    return found[0]


def version_info(mv: ModelVersion, tracking_uri: str | None = None) -> dict[str, Any]:
    run = client(tracking_uri).get_run(mv.run_id) if mv.run_id else None
    return {
        "name": config.MODEL_NAME,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "metrics": dict(run.data.metrics) if run else {},
        "tags": dict(mv.tags or {}),
        "aliases": list(getattr(mv, "aliases", []) or []),
    }


def load_version(version: str, tracking_uri: str | None = None) -> tuple[Forecaster, dict[str, Any]]:
    mv = client(tracking_uri).get_model_version(config.MODEL_NAME, version)
    path = _download_checkpoint(f"models:/{config.MODEL_NAME}/{version}", None, tracking_uri)
    return Forecaster.from_checkpoint(path), version_info(mv, tracking_uri)


def champion_checkpoint_path(tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """Download the champion's checkpoint (``tft.pt``, loads with ``Forecaster.from_checkpoint``)."""
    if current_champion(tracking_uri) is None:
        raise LookupError(f"no {config.MODEL_NAME}@{config.CHAMPION_ALIAS} in {tracking_uri or 'default registry'}")
    uri = f"models:/{config.MODEL_NAME}@{config.CHAMPION_ALIAS}"
    return _download_checkpoint(uri, Path(dst) if dst is not None else None, tracking_uri)


def load_champion(tracking_uri: str | None = None) -> tuple[Forecaster, dict[str, Any]]:
    """The champion as a :class:`Forecaster` plus {name, version, run_id, metrics, tags, aliases}."""
    mv = current_champion(tracking_uri)
    if mv is None:
        raise LookupError(f"no {config.MODEL_NAME}@{config.CHAMPION_ALIAS} in {tracking_uri or 'default registry'}")
    path = champion_checkpoint_path(tracking_uri)
    return Forecaster.from_checkpoint(path), version_info(mv, tracking_uri)
