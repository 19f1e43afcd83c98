"""Shared fixtures: a tiny simulated fleet, a tiny trained TFT checkpoint, and an isolated state dir.

- ``tiny_fleet`` (session): ``FleetData`` for 8 servers (all 7 profiles) over 6 days.
- ``tiny_experiment`` (session): split/frames/windows of ``tiny_fleet`` (two servers held out).
- ``tiny_checkpoint`` (session): ``Path`` of a TFT trained for a few seconds on ``tiny_experiment``'s
  training part (the ``tiny`` preset) and saved with ``Forecaster.save``; load it with
  ``Forecaster.from_checkpoint``. The held-out servers are not in its ``training_servers``.
- ``isolated_env`` (function): every state location (data dir, MLflow, BentoML, Dagster, feed
  store) points into ``tmp_path``; returns ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models import evaluation, simulator, tft

TINY_SERVERS = 8
TINY_DAYS = 6


@pytest.fixture(scope="session")
def tiny_fleet() -> simulator.FleetData:
    return simulator.generate_fleet(n_servers=TINY_SERVERS, steps=TINY_DAYS * 288, seed=7)


@pytest.fixture(scope="session")
def tiny_experiment(tiny_fleet: simulator.FleetData) -> evaluation.Experiment:
    return evaluation.prepare_experiment(tiny_fleet.records)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_experiment: evaluation.Experiment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    preset = tft.PRESETS["tiny"]
    result = tft.train_tft(tiny_experiment.train_frame, None, preset.model, preset.train)
    path = tmp_path_factory.mktemp("tiny_model") / "tft.pt"
    meta = {"preset": "tiny", **tiny_experiment.split.as_params()}
    tft.Forecaster(result.model, result.training_servers, meta).save(path)
    return path


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("FLEETCAST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("FLEETCAST_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("FLEETCAST_STORE_URL", f"sqlite:///{tmp_path / 'feed.db'}")
    return tmp_path
