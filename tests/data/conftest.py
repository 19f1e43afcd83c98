"""Fixtures for the dataset tests: the full default fleet is generated once per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from models import schema
from models.simulator import FleetData, default_servers, generate_fleet


@pytest.fixture(scope="session")
def default_fleet() -> FleetData:
    """The contract-size training set: 20 servers x 17,280 steps (about a second to build)."""
    return generate_fleet()


@pytest.fixture(scope="session")
def small_fleet() -> FleetData:
    """Seven servers (one per profile) over two days: enough for every check, fast to validate."""
    return generate_fleet(
        servers=default_servers(len(schema.PROFILES)), steps=2 * schema.STEPS_PER_DAY, seed=3
    )


@pytest.fixture
def small_records(small_fleet: FleetData) -> pd.DataFrame:
    """A fresh copy of the small fleet's records, free to corrupt."""
    return small_fleet.records.copy()


@pytest.fixture(autouse=True)
def _isolated_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Nothing in these tests may write into ./data."""
    monkeypatch.setenv("FLEETCAST_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"
