"""Real AWS CloudWatch CPU traces (NAB), mapped onto fleet records: data nobody here wrote.

The validator must accept the regular traces and point at exactly the rows after the real gaps
in the irregular one (found here independently from the raw CSV); once that trace is put back on
the 5-minute grid it passes too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import schema
from models.simulator import status_from_metrics
from models.validation import validate_fleet


@pytest.fixture(scope="module")
def nab_fleet(nab_traces: list[Path], nab_records: Callable[..., pd.DataFrame]) -> pd.DataFrame:
    # five traces, seven profiles: the first two traces also play a second server
    frames = [
        nab_records(csv, profile) for csv, profile in zip(nab_traces + nab_traces[:2], schema.PROFILES, strict=True)
    ]
    for i in (5, 6):
        frames[i][schema.SERVER] = frames[i][schema.SERVER] + "-b"
    return pd.concat(frames, ignore_index=True)


def test_validator_flags_exactly_the_real_gaps(nab_fleet: pd.DataFrame, nab_traces: list[Path]) -> None:
    # where the raw CSVs themselves step by anything but 5 minutes
    expected = set()
    offset = 0
    for csv in nab_traces + nab_traces[:2]:
        ts = pd.read_csv(csv, parse_dates=["timestamp"])["timestamp"]
        gaps = np.flatnonzero(ts.diff().iloc[1:].to_numpy() != np.timedelta64(5, "m")) + 1
        expected |= {offset + int(g) for g in gaps}
        offset += len(ts)
    assert expected, "the NAB sample is known to contain gaps"

    report = validate_fleet(nab_fleet)
    assert not report.ok
    assert set(report.failure_cases["check"]) == {"regular_5min_steps"}, report.summary()
    flagged = set(report.failure_cases["index"].astype(int))
    assert flagged == expected
    assert (nab_fleet.loc[sorted(flagged), schema.SERVER].str.startswith("aws-ac20cd")).all()


def test_regularised_traces_pass(nab_fleet: pd.DataFrame) -> None:
    def regularise(s: pd.DataFrame) -> pd.DataFrame:
        s = s.set_index(schema.TIMESTAMP)
        grid = pd.date_range(s.index.min(), s.index.max(), freq=schema.STEP_FREQ)
        metrics = s[list(schema.METRICS)].reindex(s.index.union(grid)).interpolate("time").reindex(grid)
        out = metrics.assign(
            **{schema.SERVER: s[schema.SERVER].iloc[0], schema.PROFILE: s[schema.PROFILE].iloc[0]}
        )
        out[schema.STATUS] = status_from_metrics(
            out["cpu_percent"].to_numpy(), out["memory_percent"].to_numpy(), out["disk_percent"].to_numpy()
        )
        return out.rename_axis(schema.TIMESTAMP).reset_index()[list(schema.COLUMNS)]

    fixed = pd.concat([regularise(s) for _, s in nab_fleet.groupby(schema.SERVER)], ignore_index=True)
    report = validate_fleet(fixed)
    assert report.ok, report.summary()
    assert len(fixed) > len(nab_fleet)  # the gaps were filled


def test_validator_catches_a_real_trace_missing_its_profiles(nab_fleet: pd.DataFrame) -> None:
    only_web = nab_fleet[nab_fleet[schema.PROFILE] == "web_api"]
    report = validate_fleet(only_web)
    profile_failures = report.failure_cases[report.failure_cases["check"] == "all_profiles_present"]
    assert len(profile_failures) == 1
    missing = profile_failures["failure_case"].iloc[0]
    assert all(p in missing for p in schema.PROFILES if p != "web_api")
