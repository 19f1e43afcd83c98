"""The record contract: the one place that says what a fleet record is.

Every other part of fleetcast imports from here: the Pandera dataset model
(``models.validation``), the feed endpoint (``serving``), the simulator and the
dashboard. Nothing else may restate a field name, range, profile or status.

Timestamps are UTC. In DataFrames they are tz-naive ``datetime64[ns]`` holding
UTC wall time; on the wire they are ISO 8601 strings (an offset is accepted and
converted to UTC, a naive string is taken as UTC).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

# --- sizes and cadence -------------------------------------------------------------------------------
STEP_MINUTES = 5
STEP = pd.Timedelta(minutes=STEP_MINUTES)
STEP_FREQ = "5min"
STEPS_PER_HOUR = 60 // STEP_MINUTES  # 12
STEPS_PER_DAY = 24 * STEPS_PER_HOUR  # 288
ENCODER_STEPS = 288  # 24 h of history
HORIZON_STEPS = 96  # 8 h ahead
MIN_ENCODER_STEPS = 12  # 1 h: the least history a server needs for a forecast

DEFAULT_SERVERS = 20
DEFAULT_DAYS = 60
DEFAULT_STEPS = DEFAULT_DAYS * STEPS_PER_DAY  # 17,280
DEFAULT_ROWS = DEFAULT_SERVERS * DEFAULT_STEPS  # 345,600

# --- categories --------------------------------------------------------------------------------------
PROFILES: tuple[str, ...] = (
    "conductor_mgmt",
    "data_ingest",
    "database",
    "generic",
    "ml_compute",
    "risk_analytics",
    "web_api",
)
DEFAULT_PROFILE = "generic"
STATUSES: tuple[str, ...] = ("healthy", "warning", "critical")

# --- fields ------------------------------------------------------------------------------------------
TIMESTAMP = "timestamp"
SERVER = "server_name"
STATUS = "status"
PROFILE = "profile"
METRICS: tuple[str, ...] = ("cpu_percent", "memory_percent", "disk_percent", "load_average")
PERCENT_METRICS: tuple[str, ...] = ("cpu_percent", "memory_percent", "disk_percent")
METRIC_LABELS: dict[str, str] = {
    "cpu_percent": "CPU",
    "memory_percent": "Memory",
    "disk_percent": "Disk",
    "load_average": "Load",
}
SERVER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_LOAD_AVERAGE = 1024.0  # a sanity cap: above this a value is a unit error, not a busy server


@dataclass(frozen=True)
class FieldSpec:
    """One record field: its DataFrame dtype and the values it may take."""

    name: str
    dtype: str  # pandas dtype name used in DataFrames and Parquet
    description: str
    ge: float | None = None
    le: float | None = None
    isin: tuple[str, ...] | None = None
    pattern: str | None = None


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(TIMESTAMP, "datetime64[ns]", "UTC time of the 5-minute sample"),
    FieldSpec(SERVER, "str", "host name of the server", pattern=SERVER_NAME_PATTERN),
    FieldSpec("cpu_percent", "float64", "CPU utilisation, %", ge=0.0, le=100.0),
    FieldSpec("memory_percent", "float64", "memory in use, %", ge=0.0, le=100.0),
    FieldSpec("disk_percent", "float64", "disk space in use, %", ge=0.0, le=100.0),
    FieldSpec("load_average", "float64", "1-minute load average", ge=0.0, le=MAX_LOAD_AVERAGE),
    FieldSpec(STATUS, "str", "health status reported with the sample", isin=STATUSES),
    FieldSpec(PROFILE, "str", "workload profile of the server", isin=PROFILES),
)
FIELDS_BY_NAME: dict[str, FieldSpec] = {f.name: f for f in FIELDS}
COLUMNS: tuple[str, ...] = tuple(f.name for f in FIELDS)


def normalize_profile(profile: str | None) -> tuple[str, bool]:
    """Map a profile to a known one. Returns (profile, was_known); unknown ones become ``generic``."""
    if profile in PROFILES:
        return profile, True
    return DEFAULT_PROFILE, False


ISO_FORMAT = "%Y-%m-%dT%H:%M:%S"  # how timestamps go on the wire: UTC, no offset, to the second


def iso(ts: Any) -> str:
    """A timestamp as the API writes it: ISO 8601 UTC without offset, to the second."""
    return pd.Timestamp(ts).strftime(ISO_FORMAT)


def iso_many(values: Any) -> list[str]:
    """Vectorised :func:`iso` for an array, index or Series of (tz-naive UTC) timestamps."""
    arr = np.asarray(values, dtype="datetime64[s]")
    return np.datetime_as_string(arr, unit="s").tolist()


# the times a record may carry: what fits pandas' datetime64[ns] (1677-09-21 .. 2262-04-11), to whole days
EARLIEST = datetime(1678, 1, 1)
LATEST = datetime(2262, 1, 1)
_EPOCH_MIN = (EARLIEST - datetime(1970, 1, 1)).total_seconds()
_EPOCH_MAX = (LATEST - datetime(1970, 1, 1)).total_seconds()
_SHOWN = 40  # characters of a rejected value quoted back in an error


def _quoted(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "...'"


def to_utc_naive(value: Any) -> datetime:
    """Parse an ISO 8601 string, epoch seconds or datetime into a naive UTC datetime.

    Aware values are converted to UTC, naive ones taken as UTC. Every unusable value raises
    ``ValueError`` with a message fit for a client (never ``OverflowError``/``OSError``): not a string or
    number, not ISO 8601, epoch seconds that are not finite or out of range (``1e20``, milliseconds),
    offsets that push a time out of the calendar (``0001-01-01T00:00:00+01:00``), and anything outside
    :data:`EARLIEST` .. :data:`LATEST` (the span of the pandas ``datetime64[ns]`` every frame uses).
    """
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            ts = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{_quoted(value)} is not an ISO 8601 time (e.g. 2025-10-12T21:40:00Z) "
                             "or epoch seconds") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        # epoch seconds, as some shippers send them
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError("epoch seconds must be a finite number")
        if not _EPOCH_MIN <= seconds < _EPOCH_MAX:
            hint = " (milliseconds? send seconds)" if _EPOCH_MAX <= seconds < _EPOCH_MAX * 1000 else ""
            raise ValueError(f"epoch seconds {seconds:g} are outside {EARLIEST.year}..{LATEST.year}{hint}")
        ts = datetime(1970, 1, 1) + timedelta(seconds=seconds)
    else:
        raise ValueError("timestamp must be an ISO 8601 string or epoch seconds")
    if ts.tzinfo is not None:
        try:
            ts = ts.astimezone(UTC).replace(tzinfo=None)
        except (OverflowError, ValueError, OSError):
            raise ValueError(f"{_quoted(value)} is outside the calendar once converted to UTC") from None
    if not EARLIEST <= ts < LATEST:
        raise ValueError(f"{_quoted(value)} is outside {EARLIEST.year}..{LATEST.year}")
    return ts


# how the OpenAPI document describes a record's timestamp: what to_utc_naive reads
TIMESTAMP_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
    "description": "UTC time of the sample: ISO 8601 (an offset is converted to UTC, none means UTC) or epoch "
                   "seconds",
}


def _bounds(name: str) -> dict[str, float]:
    spec = FIELDS_BY_NAME[name]
    out: dict[str, float] = {}
    if spec.ge is not None:
        out["ge"] = spec.ge
    if spec.le is not None:
        out["le"] = spec.le
    return out


class Record(BaseModel):
    """One record as it arrives on the wire (POST /feed/data) and as the simulator emits it live.

    Unknown profiles are *not* an error here: :func:`normalize_profile` maps them to ``generic``
    and the feed reports a warning. Everything else out of contract is a validation error.
    """

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    timestamp: Annotated[datetime, WithJsonSchema(TIMESTAMP_JSON_SCHEMA)]
    server_name: str = Field(pattern=SERVER_NAME_PATTERN)
    cpu_percent: float = Field(allow_inf_nan=False, **_bounds("cpu_percent"))
    memory_percent: float = Field(allow_inf_nan=False, **_bounds("memory_percent"))
    disk_percent: float = Field(allow_inf_nan=False, **_bounds("disk_percent"))
    load_average: float = Field(allow_inf_nan=False, **_bounds("load_average"))
    status: str = Field("healthy", json_schema_extra={"enum": list(STATUSES)})
    profile: str = Field(DEFAULT_PROFILE, json_schema_extra={"examples": list(PROFILES)})

    @field_validator("timestamp", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> datetime:
        return to_utc_naive(value)

    @field_validator("cpu_percent", "memory_percent", "disk_percent", "load_average", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

    @field_validator("status")
    @classmethod
    def _status(cls, value: str) -> str:
        status = value.lower()
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        return status

    @field_validator("profile", mode="before")
    @classmethod
    def _profile(cls, value: Any) -> str:
        if value is None:
            return DEFAULT_PROFILE
        if not isinstance(value, str):
            raise ValueError("profile must be a string")
        return value.strip().lower()


class PartialRecord(Record):
    """A record as a shipper may send it: any non-empty subset of the four metrics (collectd posts cpu,
    memory, df and load separately; Prometheus and OTLP series arrive one by one). The feed store merges
    the parts per (server, 5-minute bucket); a metric a server never reports stays missing (no value is
    made up for it)."""

    cpu_percent: float | None = Field(None, allow_inf_nan=False, **_bounds("cpu_percent"))  # type: ignore[assignment]
    memory_percent: float | None = Field(None, allow_inf_nan=False, **_bounds("memory_percent"))  # type: ignore[assignment]
    disk_percent: float | None = Field(None, allow_inf_nan=False, **_bounds("disk_percent"))  # type: ignore[assignment]
    load_average: float | None = Field(None, allow_inf_nan=False, **_bounds("load_average"))  # type: ignore[assignment]

    @model_validator(mode="after")
    def _some_metric(self) -> PartialRecord:
        if all(getattr(self, m) is None for m in METRICS):
            raise ValueError(f"no metric: a record needs at least one of {', '.join(METRICS)}")
        return self


def empty_frame() -> pd.DataFrame:
    """An empty DataFrame with the contract's columns and dtypes."""
    return pd.DataFrame({f.name: pd.Series(dtype=("object" if f.dtype == "str" else f.dtype)) for f in FIELDS})


def is_valid_server_name(name: str) -> bool:
    return bool(re.match(SERVER_NAME_PATTERN, name))
