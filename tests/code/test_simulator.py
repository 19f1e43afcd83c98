"""Unit tests of the fleet simulator: determinism, servers, status, incidents, and the live fleet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import schema
from models.simulator import (
    SCENARIOS,
    LiveFleet,
    default_servers,
    generate_fleet,
    status_from_metrics,
)
from models.validation import validate_fleet

STEPS = 3 * schema.STEPS_PER_DAY
START = pd.Timestamp("2025-06-02 12:00")


def test_same_seed_gives_identical_data_and_another_seed_differs() -> None:
    a = generate_fleet(n_servers=7, steps=STEPS, seed=7, incident_rate=5.0)
    b = generate_fleet(n_servers=7, steps=STEPS, seed=7, incident_rate=5.0)
    c = generate_fleet(n_servers=7, steps=STEPS, seed=8, incident_rate=5.0)
    pd.testing.assert_frame_equal(a.records, b.records)
    pd.testing.assert_frame_equal(a.incidents, b.incidents)
    assert not a.records["cpu_percent"].equals(c.records["cpu_percent"])
    assert (a.records["cpu_percent"] - c.records["cpu_percent"]).abs().mean() > 1.0
    pd.testing.assert_frame_equal(
        a.records[[schema.TIMESTAMP, schema.SERVER]], c.records[[schema.TIMESTAMP, schema.SERVER]]
    )


def test_default_servers_cover_every_profile_with_readable_names() -> None:
    servers = default_servers()
    assert len(servers) == schema.DEFAULT_SERVERS
    assert {p for _, p in servers} == set(schema.PROFILES)
    names = [n for n, _ in servers]
    assert len(set(names)) == len(names)
    assert {"web-01", "db-01", "ml-01", "ingest-01", "risk-01", "conductor-01", "gen-01"} <= set(names)
    assert all(schema.is_valid_server_name(n) for n in names)
    assert {p for _, p in default_servers(len(schema.PROFILES))} == set(schema.PROFILES)


def test_a_server_does_not_change_when_others_are_added() -> None:
    one = generate_fleet(servers=[("web-01", "web_api")], steps=STEPS, seed=1, incident_rate=0)
    many = generate_fleet(servers=default_servers(9), steps=STEPS, seed=1, incident_rate=0)
    web = many.records[many.records[schema.SERVER] == "web-01"].reset_index(drop=True)
    pd.testing.assert_frame_equal(one.records, web)


def test_custom_servers_start_and_no_incidents() -> None:
    fleet = generate_fleet(
        servers=[("a-1", "database"), ("b-1", "generic")],
        steps=10,
        start="2025-03-04T05:07:00+02:00",
        incident_rate=0,
    )
    df = fleet.records
    assert df[schema.SERVER].tolist() == ["a-1"] * 10 + ["b-1"] * 10
    # converted to UTC and floored onto the 5-minute grid
    assert df[schema.TIMESTAMP].iloc[0] == pd.Timestamp("2025-03-04 03:05:00")
    assert fleet.incidents.empty
    assert list(fleet.incidents.columns) == ["server_name", "profile", "incident_type", "start", "end"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"incident_rate": -1}, "incident_rate"),
        ({"servers": [("x-1", "mainframe")]}, "mainframe"),
        ({"servers": [("bad name", "generic")]}, "bad name"),
        ({"servers": [("x-1", "generic"), ("x-1", "database")]}, "unique"),
    ],
)
def test_generate_fleet_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_fleet(**{"steps": 10, **kwargs})


def test_status_follows_the_thresholds() -> None:
    cpu = np.array([10.0, 86.0, 96.0, 10.0, 10.0, 85.0])
    mem = np.array([10.0, 10.0, 10.0, 90.0, 10.0, 10.0])
    disk = np.array([10.0, 10.0, 10.0, 10.0, 99.0, 10.0])
    assert status_from_metrics(cpu, mem, disk).tolist() == [
        "healthy",
        "warning",
        "critical",
        "warning",
        "critical",
        "healthy",
    ]


def test_more_incidents_with_a_higher_rate() -> None:
    few = generate_fleet(n_servers=7, steps=10 * schema.STEPS_PER_DAY, seed=2, incident_rate=0.5)
    many = generate_fleet(n_servers=7, steps=10 * schema.STEPS_PER_DAY, seed=2, incident_rate=4.0)
    assert len(many.incidents) > 3 * max(1, len(few.incidents))
    # incidents never overlap on one server
    for _, inc in many.incidents.groupby(schema.SERVER):
        assert (inc["start"].iloc[1:].to_numpy() > inc["end"].iloc[:-1].to_numpy()).all()


# --- LiveFleet ----------------------------------------------------------------------------------------


def _steps(fleet: LiveFleet, n: int) -> pd.DataFrame:
    return pd.concat([fleet.next_step() for _ in range(n)], ignore_index=True)


def _metric(df: pd.DataFrame, server: str, metric: str) -> np.ndarray:
    return df[df[schema.SERVER] == server][metric].to_numpy()


def test_live_history_ends_now_and_passes_validation() -> None:
    fleet = LiveFleet(seed=3, start=START)
    history = fleet.history()
    assert len(history) == schema.DEFAULT_SERVERS * schema.ENCODER_STEPS
    assert list(history.columns) == list(schema.COLUMNS)
    assert history[schema.TIMESTAMP].max() == START
    assert history[schema.TIMESTAMP].min() == START - (schema.ENCODER_STEPS - 1) * schema.STEP
    assert validate_fleet(history).ok
    assert fleet.now == START


def test_live_steps_continue_the_history() -> None:
    fleet = LiveFleet(seed=3, start=START, history_steps=48)
    history = fleet.history()
    first = fleet.next_step()
    assert len(first) == schema.DEFAULT_SERVERS
    assert (first[schema.TIMESTAMP] == START + schema.STEP).all()
    assert list(first.columns) == list(schema.COLUMNS)
    # crosses the simulator's internal block boundary (one day) without a seam
    more = _steps(fleet, schema.STEPS_PER_DAY + 10)
    combined = pd.concat([history, first, more], ignore_index=True)
    assert validate_fleet(combined).ok
    for server, s in combined.groupby(schema.SERVER):
        jumps = s["disk_percent"].diff().abs()
        seam = jumps.iloc[48]  # history's last record -> first live record
        assert seam < 1.0, server
        mem = s["memory_percent"].diff().abs()
        assert mem.iloc[48] <= mem.drop(mem.index[48]).max(), server


def test_live_fleet_is_deterministic_for_a_seed() -> None:
    a, b = LiveFleet(seed=5, start=START, history_steps=12), LiveFleet(seed=5, start=START, history_steps=12)
    pd.testing.assert_frame_equal(a.history(), b.history())
    pd.testing.assert_frame_equal(_steps(a, 5), _steps(b, 5))


def test_memory_leak_hits_only_the_target_and_breaches_within_hours() -> None:
    servers = default_servers(7)
    twin, leaky = (LiveFleet(servers=servers, seed=1, start=START, history_steps=12) for _ in range(2))
    leaky.set_scenario("memory_leak", servers=["db-01"], duration_hours=24)
    base, leak = _steps(twin, 4 * schema.STEPS_PER_HOUR), _steps(leaky, 4 * schema.STEPS_PER_HOUR)
    others = base[schema.SERVER] != "db-01"
    pd.testing.assert_frame_equal(base[others], leak[others])
    target_base, target_leak = (
        _metric(base, "db-01", "memory_percent"),
        _metric(leak, "db-01", "memory_percent"),
    )
    assert target_leak[2] > target_base[2] + 2  # visible within a few steps (15 simulated minutes)
    gap = target_leak - target_base
    assert 0 < gap[:12].mean() < gap[12:24].mean() < gap[24:36].mean()  # ramps up over hours
    assert target_leak[-1] > 95  # breached within 4 simulated hours
    assert (leak[leak[schema.SERVER] == "db-01"][schema.STATUS].iloc[-1]) == "critical"


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "baseline"])
def test_every_scenario_changes_the_emitted_values(scenario: str) -> None:
    servers = default_servers(7)
    twin, live = (LiveFleet(servers=servers, seed=2, start=START, history_steps=12) for _ in range(2))
    live.set_scenario(scenario, servers=["web-01", "gen-01"])
    base, hit = _steps(twin, 36), _steps(live, 36)
    metric = {"disk_fill": "disk_percent", "memory_leak": "memory_percent"}.get(scenario, "cpu_percent")
    for server in ("web-01", "gen-01"):
        diff = _metric(hit, server, metric) - _metric(base, server, metric)
        assert diff[2] > 1.0, (scenario, server)  # within 15 simulated minutes
        assert diff[-1] > 15.0, (scenario, server)  # clearly after 3 hours
    untouched = ~hit[schema.SERVER].isin(["web-01", "gen-01"])
    pd.testing.assert_frame_equal(base[untouched], hit[untouched])
    if scenario in {"critical", "cpu_spike"}:
        assert _metric(hit, "web-01", "cpu_percent")[6:].min() > 95  # pushed above 95 within 30 minutes


def test_scenario_reverts_to_baseline_after_its_duration() -> None:
    twin, live = (LiveFleet(seed=4, start=START, history_steps=12) for _ in range(2))
    live.set_scenario("critical", servers=["web-02"], duration_hours=1)
    state = live.scenario
    assert state["scenario"] == "critical"
    assert state["servers"] == ["web-02"]
    assert state["duration_hours"] == 1
    assert pd.Timestamp(state["started_at"]) == START
    assert pd.Timestamp(state["expires_at"]) == START + pd.Timedelta(hours=1)
    during_base, during = _steps(twin, schema.STEPS_PER_HOUR), _steps(live, schema.STEPS_PER_HOUR)
    assert _metric(during, "web-02", "cpu_percent")[-1] > 95
    assert not during.equals(during_base)
    assert live.scenario["scenario"] == "baseline"
    after_base, after = _steps(twin, 6), _steps(live, 6)
    pd.testing.assert_frame_equal(after_base, after)


def test_baseline_clears_a_scenario_and_all_servers_is_the_default() -> None:
    live = LiveFleet(servers=default_servers(7), seed=4, start=START, history_steps=12)
    live.set_scenario("degrading")
    assert live.scenario["servers"] == [n for n, _ in default_servers(7)]
    assert live.scenario["expires_at"] is None
    live.set_scenario("baseline")
    assert live.scenario == {
        "scenario": "baseline",
        "servers": [],
        "duration_hours": None,
        "started_at": None,
        "expires_at": None,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("meltdown",), "unknown scenario 'meltdown'"),
        (("memory_leak", ["nope-01"]), "unknown server"),
        (("memory_leak", None, 0), "duration_hours"),
    ],
)
def test_bad_scenarios_raise(args: tuple, message: str) -> None:
    live = LiveFleet(seed=0, start=START, history_steps=12)
    with pytest.raises(ValueError, match=message):
        live.set_scenario(*args)
    assert live.scenario["scenario"] == "baseline"


# --- real shapes -----------------------------------------------------------------------------------------
def _raw(n: int = 600, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"cpu": 30.0 + rng.normal(0.0, 5.0, n), "memory": 50.0 + rng.normal(0.0, 1.0, n),
            "disk": np.linspace(40.0, 45.0, n), "load_factor": np.ones(n)}


def test_each_real_shape_has_its_signature() -> None:
    from models.simulator.shapes import REAL_SHAPES, apply_shape

    rng = np.random.default_rng(5)
    seen: dict[str, dict[str, np.ndarray]] = {}
    for kind in REAL_SHAPES:
        m = _raw()
        apply_shape(kind, m, rng)
        seen[kind] = m
    mid = slice(6, -6)  # away from the ~10 min fade in/out
    idle = seen["idle_plateau"]
    assert idle["cpu"][mid].mean() < 12.5 and idle["cpu"][mid].std() < 0.5  # near-constant and low
    assert idle["memory"][mid].std() < 0.1
    changed = np.flatnonzero(seen["rare_spikes"]["cpu"] != _raw()["cpu"])
    assert 1 <= len(changed) <= 12 and (seen["rare_spikes"]["cpu"][changed] >= 40.0).all()  # isolated
    assert abs(seen["level_shift"]["cpu"].mean() - 30.0) > 1.0 or seen["level_shift"]["cpu"].max() < 1.0
    drift = seen["drift"]["cpu"] - _raw()["cpu"]
    assert drift[0] == pytest.approx(0.0) and abs(drift[-1]) > 0.0
    np.testing.assert_allclose(np.diff(drift), drift[-1] / (len(drift) - 1))  # a straight ramp
    assert seen["quiet"]["cpu"].mean() < 0.3 * 30.0 + 1.0
    assert np.ptp(seen["flat_companions"]["memory"]) == 0 and np.ptp(seen["flat_companions"]["disk"]) == 0


def test_generated_fleet_contains_real_shapes_and_zero_rate_is_the_profiles_alone() -> None:
    shaped = generate_fleet(n_servers=7, steps=10 * schema.STEPS_PER_DAY, seed=3, shape_rate=3.0).records
    plain = generate_fleet(n_servers=7, steps=10 * schema.STEPS_PER_DAY, seed=3, shape_rate=0.0).records
    assert not shaped["cpu_percent"].equals(plain["cpu_percent"])
    hourly_std = shaped.groupby([schema.SERVER, shaped[schema.TIMESTAMP].dt.floor("2h")])["cpu_percent"].std()
    plain_std = plain.groupby([schema.SERVER, plain[schema.TIMESTAMP].dt.floor("2h")])["cpu_percent"].std()
    assert (hourly_std < 0.2).sum() > (plain_std < 0.2).sum() + 10  # idle plateaus / stopped services
    flat_memory = shaped.groupby([schema.SERVER, shaped[schema.TIMESTAMP].dt.floor("6h")])["memory_percent"].std()
    assert (flat_memory == 0).any()  # companions reported as constants
    assert validate_fleet(shaped).ok
    with pytest.raises(ValueError, match="shape_rate"):
        generate_fleet(n_servers=2, steps=10, shape_rate=-1.0)
