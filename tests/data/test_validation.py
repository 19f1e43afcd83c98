"""Pandera rejects every kind of corruption, and names the failing column and rows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from models import schema
from models.validation import FAILURE_COLUMNS, FleetDatasetModel, validate_fleet


def test_clean_small_fleet_passes(small_records: pd.DataFrame) -> None:
    report = validate_fleet(small_records)
    assert report.ok, report.summary()
    assert report.n_failures == 0
    assert list(report.failure_cases.columns) == list(FAILURE_COLUMNS)


def test_model_is_built_from_the_schema_fields() -> None:
    columns = FleetDatasetModel.to_schema().columns
    assert list(columns) == list(schema.COLUMNS)
    for spec in schema.FIELDS:
        col = columns[spec.name]
        assert not col.nullable
        assert str(col.dtype) == spec.dtype
        names = " ".join(str(c) for c in col.checks)
        assert (f"greater_than_or_equal_to({spec.ge})" in names) == (spec.ge is not None)
        assert (f"less_than_or_equal_to({spec.le})" in names) == (spec.le is not None)
        assert ("isin" in names) == (spec.isin is not None)
        assert ("str_matches" in names) == (spec.pattern is not None)


# each corruption mutates a copy and says which (column, rows) the report must name (rows None: column-level)
Corruption = Callable[[pd.DataFrame], tuple[pd.DataFrame, str, list[int] | None]]


def _out_of_range(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df.loc[[3, 700], "cpu_percent"] = [150.0, 100.5]
    return df, "cpu_percent", [3, 700]


def _nan_metric(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df.loc[[5, 1200], "memory_percent"] = np.nan
    return df, "memory_percent", [5, 1200]


def _unknown_profile(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df.loc[7, schema.PROFILE] = "mainframe"
    return df, schema.PROFILE, [7]


def _unknown_status(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df.loc[9, schema.STATUS] = "on fire"
    return df, schema.STATUS, [9]


def _duplicate_timestamp(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    # row 11 repeats row 10's timestamp for the same server
    df.loc[11, schema.TIMESTAMP] = df.loc[10, schema.TIMESTAMP]
    return df, schema.TIMESTAMP, [10, 11]


def _missing_step(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    # drop row 20: row 21 now comes 10 minutes after row 19
    return df.drop(index=20), schema.TIMESTAMP, [21]


def _jittered_step(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df.loc[30, schema.TIMESTAMP] += pd.Timedelta(seconds=90)
    return df, schema.TIMESTAMP, [30, 31]


def _wrong_dtype(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df["disk_percent"] = df["disk_percent"].round().astype("int64")
    return df, "disk_percent", None


def _timestamps_as_strings(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df[schema.TIMESTAMP] = df[schema.TIMESTAMP].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return df, schema.TIMESTAMP, None


def _tz_aware_timestamps(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df[schema.TIMESTAMP] = df[schema.TIMESTAMP].dt.tz_localize("UTC")
    return df, schema.TIMESTAMP, None


def _negative_load(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df.loc[[40, 41], "load_average"] = [-0.5, -3.0]
    return df, "load_average", [40, 41]


def _missing_column(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    return df.drop(columns="disk_percent"), "disk_percent", None


def _extra_column(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df["gpu_percent"] = 1.0
    return df, "gpu_percent", None


def _bad_server_name(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    df.loc[50, schema.SERVER] = "web 01; drop table"
    return df, schema.SERVER, [50]


def _missing_profile(df: pd.DataFrame) -> tuple[pd.DataFrame, str, list[int] | None]:
    return df[df[schema.PROFILE] != "risk_analytics"], schema.PROFILE, None


CORRUPTIONS: dict[str, Corruption] = {
    "out_of_range": _out_of_range,
    "nan_metric": _nan_metric,
    "unknown_profile": _unknown_profile,
    "unknown_status": _unknown_status,
    "duplicate_timestamp": _duplicate_timestamp,
    "missing_step": _missing_step,
    "jittered_step": _jittered_step,
    "wrong_dtype": _wrong_dtype,
    "timestamps_as_strings": _timestamps_as_strings,
    "tz_aware_timestamps": _tz_aware_timestamps,
    "negative_load": _negative_load,
    "missing_column": _missing_column,
    "extra_column": _extra_column,
    "bad_server_name": _bad_server_name,
    "missing_profile": _missing_profile,
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_validator_rejects_and_names_the_failure(name: str, small_records: pd.DataFrame) -> None:
    corrupted, column, rows = CORRUPTIONS[name](small_records)
    report = validate_fleet(corrupted)
    assert not report.ok
    assert report.n_failures == len(report.failure_cases) > 0
    assert column in report.columns(), report.summary()
    mine = report.failure_cases[report.failure_cases["column"] == column]
    if rows is not None:
        assert set(rows) <= set(mine["index"].dropna().astype(int)), report.summary()
    # nothing else in the (otherwise clean) frame is blamed
    other = report.failure_cases[report.failure_cases["column"] != column]
    # (a bad name or a duplicate key also breaks its server's cadence or names both key columns;
    # a wrong dtype also fails the range checks)
    if name not in {"bad_server_name", "duplicate_timestamp", "timestamps_as_strings", "wrong_dtype"}:
        assert other.empty, report.summary()


def test_lazy_validation_reports_every_failure_at_once(small_records: pd.DataFrame) -> None:
    df = small_records
    df.loc[3, "cpu_percent"] = 101.0
    df.loc[4, "memory_percent"] = np.nan
    df.loc[5, schema.PROFILE] = "unknown"
    df.loc[6, "load_average"] = -1.0
    df = df.drop(index=100)
    report = validate_fleet(df)
    assert report.columns() >= {
        "cpu_percent",
        "memory_percent",
        schema.PROFILE,
        "load_average",
        schema.TIMESTAMP,
    }
    assert set(report.failure_cases["index"].dropna().astype(int)) == {3, 4, 5, 6, 101}
    assert "cpu_percent" in report.summary()


def test_a_duplicated_row_is_reported_even_with_a_duplicate_index(small_records: pd.DataFrame) -> None:
    df = pd.concat([small_records, small_records.iloc[[5]]])  # index label 5 twice
    report = validate_fleet(df)
    assert not report.ok
    dup = report.failure_cases[report.failure_cases["check"] == "multiple_fields_uniqueness"]
    assert set(dup["index"].astype(int)) == {5, len(small_records)}  # positions of the two copies


def test_unsorted_but_regular_records_pass(small_records: pd.DataFrame) -> None:
    shuffled = small_records.sample(frac=1.0, random_state=0)
    assert validate_fleet(shuffled).ok
