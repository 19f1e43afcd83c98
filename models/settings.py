"""Where fleetcast keeps its state: the environment variables of models/, orchestration/ and packaging.

One typed class read from the environment (pydantic-settings). :func:`get_settings` builds it anew on
every call, so a changed environment (a test's ``monkeypatch.setenv``, a CLI setting up its children)
is seen at once. Fields left unset are derived from the data dir by ``models.config`` (which also
creates the directories); ``doc_default`` says so in the settings table of docs/operations.md, which
a test checks against these classes (``tests/code/test_settings.py``).

The service's own settings are in ``serving/settings.py``, the dashboard's in ``dashboard/settings.py``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ALERTS_FILE = PROJECT_ROOT / "models" / "alerts.yaml"

# an empty variable counts as unset (as the hand-written reads did); unknown variables are ignored
CONFIG = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True)


def env(name: str, default: object = None, doc_default: str | None = None, description: str = "") -> object:
    """A settings field read from the environment variable ``name`` (``doc_default``: the default as the
    docs show it, where it is derived rather than a literal)."""
    extra = {"doc_default": doc_default} if doc_default is not None else None
    return Field(default, validation_alias=name, description=description, json_schema_extra=extra)


class Settings(BaseSettings):
    """State locations. ``None`` means "derived from the data dir" (see ``models.config``)."""

    model_config = CONFIG

    data_dir: Path = env("FLEETCAST_DATA_DIR", PROJECT_ROOT / "data", "./data",
                         "base of all state (git-ignored)")
    mlflow_tracking_uri: str | None = env("MLFLOW_TRACKING_URI", None, "sqlite:///<data dir>/mlflow/mlflow.db",
                                          "MLflow tracking and registry store")
    mlflow_artifacts: Path | None = env("FLEETCAST_MLFLOW_ARTIFACTS", None, "<data dir>/mlflow/artifacts",
                                        "artifact root of the fleetcast experiment (when it is created)")
    bentoml_home: Path | None = env("BENTOML_HOME", None, "<data dir>/bentoml",
                                    "BentoML's model and Bento store; BentoML reads it itself, so export it "
                                    "for `bentoml` commands (see \"Where the model store is\")")
    dagster_home: Path | None = env("DAGSTER_HOME", None, "<data dir>/dagster", "Dagster instance (runs, logs)")
    store_url: str | None = env("FLEETCAST_STORE_URL", None, "sqlite:///<data dir>/feed/feed.db",
                                "feed store (any SQLAlchemy URL; `postgresql+psycopg://...` works with the "
                                "same schema)")
    alerts_file: Path = env("FLEETCAST_ALERTS_FILE", ALERTS_FILE, "models/alerts.yaml",
                            "alert rules (thresholds) the service raises alerts with")
    alert_gate_tolerance: float = env("FLEETCAST_ALERT_GATE_TOLERANCE", 0.05, None,
                                      "promotion gate: a candidate whose alert backtest recall (>= 1 h) or "
                                      "precision of onsets is more than this below the champion's is not promoted")
    # feed retraining automation (orchestration/sensors.py, schedules.py)
    retrain_server_days: int = env("FLEETCAST_RETRAIN_SERVER_DAYS", 14, None,
                                   "the feed retraining sensor launches a run when the feed store has grown by "
                                   "this many server-days (distinct server x UTC day) since the last run")
    retrain_health_url: str = env("FLEETCAST_RETRAIN_HEALTH_URL", "http://127.0.0.1:8000/health", None,
                                  "the service's /health the sensor reads the fleet's rolling skill from "
                                  "(forecast_guard.skill: model MAE / best-naive MAE; absent or unreachable: "
                                  "unknown, no trigger)")
    retrain_min_hours: float = env("FLEETCAST_RETRAIN_MIN_HOURS", 24.0, None,
                                   "the skill trigger (skill > 1.0: the model loses to naive) launches at most one run "
                                   "per this many hours")
    retrain_preset: str = env("FLEETCAST_RETRAIN_PRESET", "demo", None,
                              "training preset of runs the sensor and the weekly schedule launch")
    train_threads: int | None = env("FLEETCAST_TRAIN_THREADS", None, "auto",
                                    "torch threads while training; unset: chosen at start from the idle cores "
                                    "(CPU count minus the 1-minute load average, at least 1), logged")


def get_settings() -> Settings:
    """The settings as the environment says now (not cached)."""
    return Settings()
