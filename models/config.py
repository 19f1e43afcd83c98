"""Where fleetcast keeps its state, resolved: the settings of ``models.settings`` with their embedded
defaults under the data dir, and the directories created on first use. Also the names fleetcast gives
its model in MLflow and BentoML.

Every variable, its default and what it does: the settings table in docs/operations.md.
All data dirs are git-ignored.
"""

from __future__ import annotations

from pathlib import Path

from models.settings import PROJECT_ROOT, get_settings

__all__ = ["PROJECT_ROOT", "MODEL_NAME", "CHAMPION_ALIAS", "EXPERIMENT_NAME", "data_dir", "mlflow_tracking_uri",
           "mlflow_artifact_root", "bentoml_home", "dagster_home", "store_url", "datasets_dir"]

MODEL_NAME = "fleetcast-tft"
CHAMPION_ALIAS = "champion"
EXPERIMENT_NAME = "fleetcast-tft"


def data_dir() -> Path:
    path = get_settings().data_dir.resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _subdir(name: str) -> Path:
    path = data_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def mlflow_tracking_uri() -> str:
    return get_settings().mlflow_tracking_uri or f"sqlite:///{_subdir('mlflow') / 'mlflow.db'}"


def mlflow_artifact_root() -> Path:
    return get_settings().mlflow_artifacts or _subdir("mlflow") / "artifacts"


def bentoml_home() -> Path:
    return get_settings().bentoml_home or _subdir("bentoml")


def dagster_home() -> Path:
    return get_settings().dagster_home or _subdir("dagster")


def store_url() -> str:
    return get_settings().store_url or f"sqlite:///{_subdir('feed') / 'feed.db'}"


def datasets_dir() -> Path:
    return _subdir("datasets")

