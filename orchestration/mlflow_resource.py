"""MLflow as a Dagster resource: ``models.registry`` bound to one tracking server/registry.

Assets ask the resource (``mlflow.start_run(...)``, ``mlflow.promote(...)``, ``mlflow.client()``)
and never pass a tracking URI around; the work itself stays in the plain, tested functions of
``models.registry``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from pydantic import Field

from models import config, registry
from models.tft import EpochRecord, Forecaster


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking + model registry at ``tracking_uri``."""

    tracking_uri: str = Field(
        default="", description="tracking + registry URI (empty: MLFLOW_TRACKING_URI if set, else sqlite in the "
                                "data dir)")

    def uri(self) -> str:
        return self.tracking_uri or config.mlflow_tracking_uri()

    def configure(self) -> str:
        """Point the mlflow client at this URI; returns the fleetcast experiment id."""
        return registry.configure(self.uri())

    def client(self) -> MlflowClient:
        return registry.client(self.uri())

    # --- runs ---------------------------------------------------------------------------------------
    def start_run(self, params: dict[str, Any], tags: dict[str, str] | None = None,
                  run_name: str | None = None) -> str:
        return registry.start_run(params, tags, self.uri(), run_name)

    def log_epoch(self, run_id: str, record: EpochRecord) -> None:
        registry.log_epoch(run_id, record, self.uri())

    def log_evaluation(self, run_id: str, metrics: dict[str, float], table: pd.DataFrame,
                       figures: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
        registry.log_evaluation(run_id, metrics, table, figures, extra, self.uri())

    # --- registry -----------------------------------------------------------------------------------
    def register(self, run_id: str, checkpoint: str | Path) -> ModelVersion:
        return registry.log_and_register(run_id, checkpoint, self.uri())

    def promote(self, version: ModelVersion | str, metrics: dict[str, float],
                rescore: Callable[[Forecaster], float] | None) -> registry.Decision:
        return registry.promote(version, metrics, rescore, self.uri())

    def champion_checkpoint(self) -> Path:
        """The champion's checkpoint, downloaded (LookupError when there is no champion)."""
        return registry.champion_checkpoint_path(self.uri())

    def current_champion(self) -> ModelVersion | None:
        return registry.current_champion(self.uri())
