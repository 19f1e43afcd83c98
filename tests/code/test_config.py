"""Embedded defaults live under the data dir, and each one yields to its environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.settings import get_settings as dashboard_settings
from models import config
from orchestration import cli


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "DAGSTER_HOME", "FLEETCAST_STORE_URL", "FLEETCAST_API_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FLEETCAST_DATA_DIR", str(tmp_path))
    return tmp_path


def test_defaults_live_in_the_data_dir(clean_env: Path) -> None:
    assert config.mlflow_tracking_uri() == f"sqlite:///{clean_env / 'mlflow' / 'mlflow.db'}"
    assert config.bentoml_home() == clean_env / "bentoml"
    assert config.dagster_home() == clean_env / "dagster"
    assert config.store_url() == f"sqlite:///{clean_env / 'feed' / 'feed.db'}"
    assert dashboard_settings().api_url == "http://localhost:8000"


def test_environment_overrides_every_default(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("BENTOML_HOME", str(clean_env / "b"))
    monkeypatch.setenv("DAGSTER_HOME", str(clean_env / "d"))
    monkeypatch.setenv("FLEETCAST_STORE_URL", "postgresql://fleet@db/fleet")
    monkeypatch.setenv("FLEETCAST_API_URL", "http://svc:9000/")
    assert config.mlflow_tracking_uri() == "http://mlflow.example:5000"
    assert config.bentoml_home() == clean_env / "b"
    assert config.dagster_home() == clean_env / "d"
    assert config.store_url() == "postgresql://fleet@db/fleet"
    assert dashboard_settings().api_url == "http://svc:9000"


def test_cli_children_share_one_state(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(clean_env / "custom-bento"))
    env = cli.service_env()
    assert env["BENTOML_HOME"] == str(clean_env / "custom-bento")
    assert env["DAGSTER_HOME"] == str(clean_env / "dagster")
    assert env["MLFLOW_TRACKING_URI"].startswith("sqlite:///")
    assert env["FLEETCAST_STORE_URL"] == config.store_url()
