"""Expectations on the simulated training set: size, cadence, profile behaviour, incident labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from models import schema
from models.simulator import INCIDENT_COLUMNS, INCIDENT_TYPES, FleetData, generate_fleet
from models.validation import validate_fleet


def test_default_dataset_has_the_contract_shape(default_fleet: FleetData) -> None:
    df = default_fleet.records
    assert len(df) == schema.DEFAULT_ROWS == 345_600
    assert list(df.columns) == list(schema.COLUMNS)
    assert df[schema.SERVER].nunique() == schema.DEFAULT_SERVERS
    assert set(df[schema.PROFILE]) == set(schema.PROFILES)
    per_server = df.groupby(schema.SERVER).size()
    assert (per_server == schema.DEFAULT_STEPS).all()
    steps = df.groupby(schema.SERVER)[schema.TIMESTAMP].diff().dropna()
    assert (steps == schema.STEP).all()
    assert df[schema.TIMESTAMP].dt.tz is None
    assert str(df[schema.TIMESTAMP].dtype) == "datetime64[ns]"
    for metric in schema.METRICS:
        assert df[metric].dtype == np.float64


def test_default_dataset_is_sorted_and_in_range(default_fleet: FleetData) -> None:
    df = default_fleet.records
    keys = df[[schema.SERVER, schema.TIMESTAMP]]
    assert keys.equals(keys.sort_values([schema.SERVER, schema.TIMESTAMP], ignore_index=True))
    for metric in schema.PERCENT_METRICS:
        assert df[metric].between(0.0, 100.0).all()
    assert (df["load_average"] >= 0).all()
    assert set(df[schema.STATUS]) <= set(schema.STATUSES)
    # incidents reach warning and critical, but the fleet is healthy most of the time
    shares = df[schema.STATUS].value_counts(normalize=True)
    assert shares["healthy"] > 0.85
    assert shares.get("critical", 0) > 0


def test_default_dataset_passes_validation(default_fleet: FleetData) -> None:
    report = validate_fleet(default_fleet.records)
    assert report.ok, report.summary()
    assert report.n_failures == 0


def _without_incidents(fleet: FleetData) -> pd.DataFrame:
    df = fleet.records
    hit = pd.Series(False, index=df.index)
    for row in fleet.incidents.itertuples(index=False):
        ts = df[schema.TIMESTAMP]
        hit |= (df[schema.SERVER] == row.server_name) & (ts >= row.start) & (ts <= row.end)
    return df[~hit]


def _cpu_by_profile(df: pd.DataFrame) -> pd.core.groupby.DataFrameGroupBy:
    return df.groupby(schema.PROFILE)["cpu_percent"]


def _daily_cycle(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per profile: peak-to-trough of the mean CPU by hour of day (points), and the share of the
    CPU variance the hour of day explains."""
    hour = df[schema.TIMESTAMP].dt.hour
    means = df.groupby([schema.PROFILE, hour])["cpu_percent"].mean().unstack()
    amplitude = means.max(axis=1) - means.min(axis=1)
    by_hour = df.groupby([schema.PROFILE, hour])["cpu_percent"].transform("mean")
    share = by_hour.groupby(df[schema.PROFILE]).var() / df.groupby(schema.PROFILE)["cpu_percent"].var()
    return amplitude, share


def test_profiles_differ_measurably(default_fleet: FleetData) -> None:
    # the profiles' own signatures, before the real-fleet shapes (plateaus, spikes, level shifts, drifts)
    # are laid on top; with them the daily cycle explains less of web_api's variance, still far more
    # than conductor_mgmt's
    shaped_amplitude, shaped_share = _daily_cycle(_without_incidents(default_fleet))
    assert shaped_share["web_api"] > 0.4 and shaped_share["web_api"] > 10 * shaped_share["conductor_mgmt"]
    assert shaped_amplitude["web_api"] > 10 * shaped_amplitude["conductor_mgmt"]
    df = _without_incidents(generate_fleet(shape_rate=0.0))
    amplitude, share = _daily_cycle(df)
    assert share["web_api"] > 0.5
    assert share["web_api"] > 2 * share["conductor_mgmt"]
    assert amplitude["web_api"] > 10 * amplitude["conductor_mgmt"]
    assert amplitude["web_api"] > 25
    mean_cpu = _cpu_by_profile(df).mean()
    assert mean_cpu["ml_compute"] > 3 * mean_cpu["conductor_mgmt"]
    assert mean_cpu.idxmin() == "conductor_mgmt"
    # conductor_mgmt is low and steady
    assert (
        _cpu_by_profile(df).std()["conductor_mgmt"] < _cpu_by_profile(df).std().drop("conductor_mgmt").min()
    )
    # database memory is the steadiest high memory in the fleet
    memory = df.groupby(schema.PROFILE)["memory_percent"].median()
    assert memory.idxmax() == "database"


def test_web_api_has_a_weekly_cycle(default_fleet: FleetData) -> None:
    web = default_fleet.records[default_fleet.records[schema.PROFILE] == "web_api"]
    afternoon = web[web[schema.TIMESTAMP].dt.hour.between(12, 16)]
    weekend = afternoon[schema.TIMESTAMP].dt.dayofweek >= 5
    assert (
        afternoon.loc[~weekend, "cpu_percent"].median() > afternoon.loc[weekend, "cpu_percent"].median() + 10
    )


def test_database_has_nightly_batch_spikes(default_fleet: FleetData) -> None:
    db = default_fleet.records[default_fleet.records[schema.PROFILE] == "database"]
    hour = db[schema.TIMESTAMP].dt.hour
    assert (
        db.loc[hour.isin([1, 2]), "cpu_percent"].median()
        > db.loc[hour.between(4, 23), "cpu_percent"].median() + 25
    )


def test_risk_analytics_peaks_at_end_of_weekdays(default_fleet: FleetData) -> None:
    risk = default_fleet.records[default_fleet.records[schema.PROFILE] == "risk_analytics"]
    ts = risk[schema.TIMESTAMP]
    evening = ts.dt.hour.between(17, 19)
    weekday = ts.dt.dayofweek < 5
    assert (
        risk.loc[evening & weekday, "cpu_percent"].median()
        > risk.loc[~evening & weekday, "cpu_percent"].median() + 30
    )
    assert (
        risk.loc[evening & weekday, "cpu_percent"].median()
        > risk.loc[evening & ~weekday, "cpu_percent"].median() + 30
    )


def test_ml_jobs_last_hours(default_fleet: FleetData) -> None:
    ml = default_fleet.records[default_fleet.records[schema.SERVER] == "ml-01"]
    busy = (ml["cpu_percent"] > 50).to_numpy()
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, busy.astype(int), 0])))[::2]  # lengths of busy runs
    long_runs = runs[runs >= 2 * schema.STEPS_PER_HOUR]
    assert len(long_runs) > 5
    assert np.median(long_runs) >= 2 * schema.STEPS_PER_HOUR


def test_data_ingest_is_bursty(default_fleet: FleetData) -> None:
    df = _without_incidents(default_fleet)
    cpu = df.groupby(schema.PROFILE)["cpu_percent"]
    tail = cpu.quantile(0.99) - cpu.median()
    assert tail["data_ingest"] > 2 * tail["conductor_mgmt"]
    assert tail["data_ingest"] > tail["generic"]


def test_load_follows_cpu_and_disk_is_cleaned_up(default_fleet: FleetData) -> None:
    df = default_fleet.records
    for _server, s in df.groupby(schema.SERVER):
        assert s["cpu_percent"].corr(s["load_average"]) > 0.8
    ingest = df[df[schema.SERVER] == "ingest-01"]["disk_percent"]
    drops = (ingest.diff() < -10).sum()
    assert drops >= 1  # a clean-up: the fast-growing ingest disk is emptied at least once in 60 days
    assert (ingest.diff().dropna() > -1).mean() > 0.99  # otherwise it only grows (within noise)


def test_incident_labels_cover_every_type(default_fleet: FleetData) -> None:
    inc = default_fleet.incidents
    df = default_fleet.records
    assert list(inc.columns) == list(INCIDENT_COLUMNS)
    assert set(inc["incident_type"]) == set(INCIDENT_TYPES)
    assert str(inc["start"].dtype) == "datetime64[ns]"
    assert str(inc["end"].dtype) == "datetime64[ns]"
    assert (inc["start"] < inc["end"]).all()
    assert inc["start"].min() >= df[schema.TIMESTAMP].min()
    assert inc["end"].max() <= df[schema.TIMESTAMP].max()
    profiles = df.groupby(schema.SERVER)[schema.PROFILE].first()
    assert (inc[schema.PROFILE].to_numpy() == profiles.loc[inc[schema.SERVER]].to_numpy()).all()


def _window(by_server: dict, server: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    return by_server[server].loc[start:end]


def test_incident_labels_line_up_with_metric_changes(default_fleet: FleetData) -> None:
    df = {name: s.set_index(schema.TIMESTAMP) for name, s in default_fleet.records.groupby(schema.SERVER)}
    hour = pd.Timedelta(hours=1)
    checked = {t: 0 for t in INCIDENT_TYPES}
    for row in default_fleet.incidents.itertuples(index=False):
        server, kind, start, end = row.server_name, row.incident_type, row.start, row.end
        inside = _window(df, server, start, end)
        before = _window(df, server, start - hour, start - schema.STEP)
        last = _window(df, server, end - hour, end)
        after = _window(df, server, end + schema.STEP, end + hour)
        if kind == "memory_leak":
            assert last["memory_percent"].mean() > before["memory_percent"].mean() + 15, row
            assert inside["memory_percent"].max() > 95, row
            assert after.empty or after["memory_percent"].mean() < last["memory_percent"].mean() - 10, row
        elif kind == "disk_fill":
            assert last["disk_percent"].mean() > before["disk_percent"].mean() + 15, row
            assert inside["disk_percent"].max() > 95, row
        elif kind == "cpu_spike":
            assert inside["cpu_percent"].max() > 95, row
            assert inside["cpu_percent"].median() > 90, row
            assert inside["cpu_percent"].median() > before["cpu_percent"].median() + 10, row
        else:  # degrading: compare with the same hours a day earlier, free of other incidents
            day = pd.Timedelta(days=1)
            same = default_fleet.incidents[default_fleet.incidents[schema.SERVER] == server]
            if ((same["end"] >= start - day) & (same["start"] < start)).any():
                continue
            yesterday = _window(df, server, end - hour - day, end - day)
            assert (last["cpu_percent"] + last["memory_percent"]).mean() > (
                yesterday["cpu_percent"] + yesterday["memory_percent"]
            ).mean() + 30, row
        assert (inside[schema.STATUS] != "healthy").any(), row
        checked[kind] += 1
    assert all(n > 0 for n in checked.values()), checked
