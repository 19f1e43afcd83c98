"""Pandera validation of fleet datasets, built from the record contract in ``models.schema``.

:class:`FleetDatasetModel` is generated from ``schema.FIELDS`` (dtypes, ranges, allowed values,
name pattern; no metric may be null) and adds the dataset-level rules:

* ``(server_name, timestamp)`` is unique;
* every server's records are on a regular 5-minute grid (no gaps, no duplicates, no jitter);
* every profile in ``schema.PROFILES`` is present.

:func:`validate_fleet` validates lazily and returns every failure case at once in a
:class:`ValidationReport` instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors
from pandera.typing import Series

from models import schema

__all__ = ["FAILURE_COLUMNS", "FleetDatasetModel", "ValidationReport", "validate_fleet"]

FAILURE_COLUMNS: tuple[str, ...] = (
    "schema_context",
    "column",
    "check",
    "check_number",
    "failure_case",
    "index",
)

# pandas dtype names used in schema.FIELDS -> pandera dtypes
_DTYPES: dict[str, Any] = {"datetime64[ns]": pa.DateTime, "float64": pa.Float64, "str": pa.String}


def _field(spec: schema.FieldSpec) -> Any:
    kwargs: dict[str, Any] = {"nullable": False, "description": spec.description, "title": spec.name}
    if spec.ge is not None:
        kwargs["ge"] = spec.ge
    if spec.le is not None:
        kwargs["le"] = spec.le
    if spec.isin is not None:
        kwargs["isin"] = list(spec.isin)
    if spec.pattern is not None:
        kwargs["str_matches"] = spec.pattern
    return pa.Field(**kwargs)


class _FleetChecks(pa.DataFrameModel):
    """Dataset-level rules; the per-field columns are added from ``schema.FIELDS`` below."""

    class Config:
        name = "fleet_dataset"
        strict = True
        unique = [schema.SERVER, schema.TIMESTAMP]

    @pa.dataframe_check(name="regular_5min_steps")
    @classmethod
    def regular_steps(cls, df: pd.DataFrame) -> pd.Series:
        """Per row: True when it is its server's first record or comes exactly one step after the previous."""
        if not {schema.SERVER, schema.TIMESTAMP} <= set(df.columns):
            return pd.Series(True, index=df.index)
        ts = df[schema.TIMESTAMP]
        if not pd.api.types.is_datetime64_any_dtype(ts):
            return pd.Series(True, index=df.index)  # the dtype check reports this
        frame = pd.DataFrame({"s": df[schema.SERVER].to_numpy(), "t": ts.to_numpy()}, index=df.index)
        ordered = frame.sort_values(["s", "t"], kind="stable")
        delta = ordered.groupby("s", sort=False)["t"].diff()
        ok = delta.isna() | (delta == schema.STEP)
        # a missing timestamp is reported by the null check
        ok |= ordered["t"].isna()
        return ok.reindex(df.index)

    @pa.dataframe_check(name="all_profiles_present")
    @classmethod
    def all_profiles(cls, df: pd.DataFrame) -> bool:
        if schema.PROFILE not in df.columns:
            return True  # the missing column is reported on its own
        return set(schema.PROFILES) <= set(df[schema.PROFILE].dropna().unique())


FleetDatasetModel: type[pa.DataFrameModel] = type(
    "FleetDatasetModel",
    (_FleetChecks,),
    {
        "__module__": __name__,
        "__doc__": "The fleet dataset contract: a column per ``schema.FIELDS`` entry plus the dataset rules.",
        "__annotations__": {f.name: Series[_DTYPES[f.dtype]] for f in schema.FIELDS},  # type: ignore[valid-type]
        **{f.name: _field(f) for f in schema.FIELDS},
    },
)


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_fleet`.

    ``failure_cases`` has one row per failure with (at least) ``schema_context``, ``column``,
    ``check``, ``failure_case`` and ``index`` (the failing row's index label, None for column- or
    table-level failures); it is empty when ``ok``.
    """

    ok: bool
    n_failures: int
    failure_cases: pd.DataFrame

    def summary(self, max_rows: int = 10) -> str:
        """A markdown table of the first failures (or 'no failures')."""
        if self.ok:
            return "no failures"
        head = self.failure_cases.head(max_rows).astype(str)
        return head.to_markdown(index=False) if _has_tabulate() else head.to_string(index=False)

    def columns(self) -> set[str]:
        """The columns named by failures (table-level failures name the schema)."""
        return set(self.failure_cases["column"].dropna().astype(str))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


# dataset-level checks report every column of a failing row; keep the column each one is about
_CHECK_COLUMN: dict[str, str] = {
    "regular_5min_steps": schema.TIMESTAMP,
    "all_profiles_present": schema.PROFILE,
}


def _tidy(cases: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    cases = cases.copy()
    for col in FAILURE_COLUMNS:
        if col not in cases.columns:
            cases[col] = None
    check = cases["check"].astype(str)
    keep = pd.Series(True, index=cases.index)
    for name, column in _CHECK_COLUMN.items():
        mine = check == name
        keep &= ~mine | cases["index"].isna() | (cases["column"] == column)
        cases.loc[mine, "column"] = column
    cases = cases[keep]
    # a missing or unexpected column: name it in `column`, not the schema's name
    missing = cases["check"].astype(str).isin(["column_in_dataframe", "column_in_schema"])
    cases.loc[missing, "column"] = cases.loc[missing, "failure_case"]
    # which profiles are missing, rather than a bare False
    absent = cases["check"].astype(str) == "all_profiles_present"
    if absent.any() and schema.PROFILE in df.columns:
        gone = sorted(set(schema.PROFILES) - set(df[schema.PROFILE].dropna().unique()))
        cases["failure_case"] = cases["failure_case"].astype(object)
        cases.loc[absent, "failure_case"] = "missing profiles: " + ", ".join(gone)
    first = list(FAILURE_COLUMNS)
    return cases[first + [c for c in cases.columns if c not in first]].reset_index(drop=True)


def validate_fleet(df: pd.DataFrame) -> ValidationReport:
    """Validate a records frame against :class:`FleetDatasetModel`, lazily: all failures at once.

    Failure ``index`` values are the frame's index labels, or row positions when its index has
    duplicates (pandera cannot report on a non-unique index).
    """
    if not df.index.is_unique:
        df = df.reset_index(drop=True)
    try:
        FleetDatasetModel.validate(df, lazy=True)
    except SchemaErrors as exc:
        cases = _tidy(exc.failure_cases, df)
        return ValidationReport(ok=False, n_failures=len(cases), failure_cases=cases)
    return ValidationReport(ok=True, n_failures=0, failure_cases=pd.DataFrame(columns=list(FAILURE_COLUMNS)))
