"""The data assets through Dagster: Parquet on disk, metadata, and a blocking Pandera check."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from models import schema
from models.simulator import FleetData
from models.validation import validate_fleet
from orchestration import checks, jobs
from orchestration.assets import data
from orchestration.resources import PARQUET_IO_MANAGER, RESOURCES, ParquetIOManager, dataset_path

SMALL = {"ops": {"fleet_dataset": {"config": {"n_servers": 7, "steps": 2 * schema.STEPS_PER_DAY, "seed": 5}}}}


def _with_downstream() -> tuple[list, list[int]]:
    ran: list[int] = []

    @dg.asset
    def downstream(fleet_dataset: pd.DataFrame) -> None:
        ran.append(len(fleet_dataset))

    return [data.fleet_dataset, checks.fleet_dataset_valid, downstream], ran


def test_clean_dataset_passes_the_check_and_feeds_downstream(_isolated_data_dir: Path) -> None:
    assets, ran = _with_downstream()
    result = dg.materialize(assets, run_config=SMALL, resources=RESOURCES)
    assert result.success
    assert ran == [7 * 2 * schema.STEPS_PER_DAY]

    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed
    assert evaluation.metadata["failure_cases"].value == 0

    path = dataset_path("fleet_dataset")
    assert path.parent == _isolated_data_dir.resolve() / "datasets"
    stored = pd.read_parquet(path)
    assert list(stored.columns) == list(schema.COLUMNS)
    assert str(stored[schema.TIMESTAMP].dtype) == "datetime64[ns]"
    assert validate_fleet(stored).ok
    labels = pd.read_parquet(dataset_path("incident_labels"))
    assert list(labels.columns) == ["server_name", "profile", "incident_type", "start", "end"]

    mats = {
        m.asset_key.to_user_string(): m.materialization.metadata
        for m in result.get_asset_materialization_events()
    }
    meta = mats["fleet_dataset"]
    assert meta["rows"].value == len(stored)
    assert meta["servers"].value == 7
    assert meta["profiles"].value == ", ".join(schema.PROFILES)
    assert stored[schema.TIMESTAMP].min().isoformat() in meta["date_range"].value
    assert "web_api" in meta["per_profile"].value
    assert meta["preview"].value.startswith("![fleet preview](data:image/png;base64,")
    assert (_isolated_data_dir / "datasets" / "fleet_dataset_preview.png").stat().st_size > 1000
    assert mats["incident_labels"]["incidents"].value == len(labels)


def test_corrupted_dataset_fails_the_blocking_check_and_stops_downstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = data.generate_fleet

    def corrupted(**kwargs: object) -> FleetData:
        fleet = real(**kwargs)
        fleet.records.loc[3, "cpu_percent"] = 180.0
        fleet.records.loc[8, schema.PROFILE] = "mainframe"
        return fleet

    monkeypatch.setattr(data, "generate_fleet", corrupted)
    assets, ran = _with_downstream()
    result = dg.materialize(assets, run_config=SMALL, resources=RESOURCES, raise_on_error=False)

    assert not result.success
    assert ran == []  # the downstream asset never ran
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["failure_cases"].value == 2
    assert evaluation.metadata["failed_columns"].value == "cpu_percent, profile"
    assert "mainframe" in evaluation.metadata["first_failures"].value
    keys = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert "downstream" not in keys
    succeeded = [e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]
    assert "downstream" not in succeeded


def test_definitions_load_with_the_job_and_blocking_check() -> None:
    from orchestration import definitions  # the whole code location, other engineers' modules included

    defs = definitions.defs
    job = defs.resolve_job_def("build_dataset")
    assert job.name == jobs.build_dataset.name
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"fleet_dataset", "incident_labels"} <= keys
    assert graph.get(dg.AssetKey("fleet_dataset")).group_name == "data"
    (spec,) = [s for s in checks.fleet_dataset_valid.check_specs]
    assert spec.blocking
    assert spec.asset_key == dg.AssetKey("fleet_dataset")
    # the Launchpad's config key is the asset's name (one op yields both data assets)
    assert data.fleet_dataset.op.name == "fleet_dataset"
    assert set(data.fleet_dataset.keys) == {dg.AssetKey("fleet_dataset"), dg.AssetKey("incident_labels")}
    # the Pandera contract is the asset's column schema in the UI (dagster-pandera)
    columns = graph.get(dg.AssetKey("fleet_dataset")).metadata["dagster/column_schema"]
    assert [c.name for c in columns.columns] == list(schema.COLUMNS)
    cpu = next(c for c in columns.columns if c.name == "cpu_percent")
    assert cpu.type == "float64" and {">= 0.0", "<= 100.0"} <= set(cpu.constraints.other)
    assert not cpu.constraints.nullable
    assert "all_profiles_present" in columns.constraints.other


def test_build_dataset_job_runs_assets_and_check() -> None:
    from orchestration import definitions

    job = definitions.defs.resolve_job_def("build_dataset")
    result = job.execute_in_process(run_config=SMALL)
    assert result.success
    mats = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert mats == {"fleet_dataset", "incident_labels"}
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "fleet_dataset_valid"
    assert evaluation.passed


def test_parquet_io_manager_round_trip_and_missing_file(_isolated_data_dir: Path) -> None:
    """Dagster's UPathIOManager with Parquet: the file is dataset_path(asset), and a missing one says what to run."""
    manager = ParquetIOManager().create_io_manager(dg.build_init_resource_context())
    key = dg.AssetKey("some_table")
    frame = pd.DataFrame({"a": [1.5, 2.5], "b": ["x", "y"]})
    with dg.build_output_context(asset_key=key) as out:
        manager.handle_output(out, frame)
        assert out.get_logged_metadata()["path"] == dg.MetadataValue.path(str(dataset_path("some_table")))
    assert dataset_path("some_table").is_file()
    assert not list(dataset_path("some_table").parent.glob("*.tmp"))
    pd.testing.assert_frame_equal(manager.load_input(dg.build_input_context(asset_key=key)), frame)
    with pytest.raises(FileNotFoundError, match="materialize other_table first"):
        manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("other_table")))
    with dg.build_output_context(asset_key=key) as out, pytest.raises(TypeError, match=PARQUET_IO_MANAGER):
        manager.handle_output(out, {"not": "a frame"})
