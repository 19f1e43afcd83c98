"""Shared fixtures: a tiny simulated fleet, a tiny trained TFT checkpoint, and an isolated state dir.

- ``tiny_fleet`` (session): ``FleetData`` for 8 servers (all 7 profiles) over 6 days.
- ``tiny_experiment`` (session): split/frames/windows of ``tiny_fleet`` (two servers held out).
- ``tiny_checkpoint`` (session): ``Path`` of a TFT trained for a few seconds on ``tiny_experiment``'s
  training part (the ``tiny`` preset) and saved with ``Forecaster.save``; load it with
  ``Forecaster.from_checkpoint``. The held-out servers are not in its ``training_servers``.
- ``isolated_env`` (function): every state location (data dir, MLflow, Dagster, feed store) points
  into ``tmp_path``, and BentoML's model store starts empty; returns ``tmp_path``.
- BentoML reads ``BENTOML_HOME`` once per process, at its first store access, so the test session
  gets one temporary ``BENTOML_HOME`` (set in :func:`pytest_configure`, before anything touches
  BentoML) and ``isolated_env`` empties its model store instead of moving it.
- ``asgi_app`` (session): the service's ASGI app (``Fleetcast.to_asgi()``), built once per process
  (BentoML registers its Prometheus metrics per build); each lifespan starts a fresh service instance
  that reads the environment anew. The service tests run it with Starlette's TestClient, the dashboard's
  stand-in (``fleetcast_testkit.standin``) under uvicorn.
- Test helpers tests import directly live in ``tests/support/fleetcast_testkit`` (on ``sys.path`` via
  pytest's ``pythonpath``): ``free_port``, the dashboard's request tally, the stand-in service.
- ``nab_traces`` (session): the real AWS CloudWatch CPU traces (NAB, 5-minute, MIT) in
  ``../shared/data/nab`` beside the checkout (``FLEETCAST_NAB_DIR`` points elsewhere), and
  ``nab_records``: a function turning one trace into fleet records (data nobody here wrote).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import config, evaluation, schema, simulator, tft

NAB_DIR = Path(os.environ.get("FLEETCAST_NAB_DIR", config.PROJECT_ROOT.parent / "shared" / "data" / "nab"))

TINY_SERVERS = 8
TINY_DAYS = 6
_SESSION_BENTOML_HOME: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SESSION_BENTOML_HOME
    _SESSION_BENTOML_HOME = Path(tempfile.mkdtemp(prefix="fleetcast-test-bentoml-"))
    os.environ["BENTOML_HOME"] = str(_SESSION_BENTOML_HOME)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_BENTOML_HOME is not None:
        shutil.rmtree(_SESSION_BENTOML_HOME, ignore_errors=True)


def empty_model_store() -> None:
    """Delete every model in BentoML's (the session's) model store, through its public API."""
    import bentoml

    for model in bentoml.models.list():
        bentoml.models.delete(model.tag)


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
    monkeypatch.setenv("BENTOML_HOME", str(_SESSION_BENTOML_HOME))  # the one BentoML has read
    empty_model_store()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("FLEETCAST_STORE_URL", f"sqlite:///{tmp_path / 'feed.db'}")
    return tmp_path


@pytest.fixture(scope="session")
def asgi_app() -> object:
    from fleetcast_testkit.standin import build_asgi_app

    return build_asgi_app()


@pytest.fixture(scope="session")
def nab_traces() -> list[Path]:
    traces = sorted(NAB_DIR.glob("ec2_cpu_utilization_*.csv"))
    assert len(traces) >= 5, f"NAB traces missing in {NAB_DIR}"
    return traces


def nab_to_records(csv: Path, profile: str, cores: int = 4) -> pd.DataFrame:
    """A NAB trace as fleet records: CPU from the trace (its own timestamps, gaps and all); memory,
    disk and load filled plausibly; server ``aws-<trace id>``."""
    raw = pd.read_csv(csv, parse_dates=["timestamp"])
    cpu = raw["value"].to_numpy(dtype=float)
    n = len(raw)
    rng = np.random.default_rng(0)
    memory = np.clip(40.0 + 0.2 * cpu + rng.normal(0.0, 1.0, n), 0.0, 100.0)
    disk = np.clip(30.0 + np.linspace(0.0, 5.0, n), 0.0, 100.0)
    return pd.DataFrame(
        {
            schema.TIMESTAMP: raw["timestamp"].astype("datetime64[ns]"),
            schema.SERVER: f"aws-{csv.stem.rsplit('_', 1)[-1]}",
            "cpu_percent": cpu,
            "memory_percent": memory,
            "disk_percent": disk,
            "load_average": cores * cpu / 100.0,
            schema.STATUS: simulator.status_from_metrics(cpu, memory, disk),
            schema.PROFILE: profile,
        },
        columns=list(schema.COLUMNS),
    )


@pytest.fixture(scope="session")
def nab_records() -> Callable[..., pd.DataFrame]:
    return nab_to_records
