"""Embedded defaults for where fleetcast keeps its state, each overridable by environment.

| setting              | environment variable  | default                                   |
|----------------------|-----------------------|-------------------------------------------|
| data dir             | FLEETCAST_DATA_DIR    | <project root>/data                       |
| MLflow tracking URI  | MLFLOW_TRACKING_URI   | sqlite:///<data dir>/mlflow/mlflow.db     |
| MLflow artifacts     | FLEETCAST_MLFLOW_ARTIFACTS | <data dir>/mlflow/artifacts          |
| BentoML home         | BENTOML_HOME          | <data dir>/bentoml                        |
| Dagster home         | DAGSTER_HOME          | <data dir>/dagster                        |
| feed store URL       | FLEETCAST_STORE_URL   | sqlite:///<data dir>/feed/feed.db         |
| service base URL     | FLEETCAST_API_URL     | http://localhost:8000                     |

All data dirs are git-ignored.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "fleetcast-tft"
CHAMPION_ALIAS = "champion"
EXPERIMENT_NAME = "fleetcast-tft"


def data_dir() -> Path:
    path = Path(os.environ.get("FLEETCAST_DATA_DIR", PROJECT_ROOT / "data")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _subdir(name: str) -> Path:
    path = data_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def mlflow_tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{_subdir('mlflow') / 'mlflow.db'}"


def mlflow_artifact_root() -> Path:
    return Path(os.environ.get("FLEETCAST_MLFLOW_ARTIFACTS", _subdir("mlflow") / "artifacts"))


def bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME", _subdir("bentoml")))


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME", _subdir("dagster")))


def store_url() -> str:
    url = os.environ.get("FLEETCAST_STORE_URL")
    if url:
        return url
    return f"sqlite:///{_subdir('feed') / 'feed.db'}"


def api_url() -> str:
    return os.environ.get("FLEETCAST_API_URL", "http://localhost:8000").rstrip("/")


def datasets_dir() -> Path:
    return _subdir("datasets")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (tests, benchmarks, the dashboard stand-in)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
