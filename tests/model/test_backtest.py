"""The alert backtest (models/backtest.py): breach and onset definitions, leads, the fast calibration path
against the service's rules, the promotion gate's alert part. No model: forecasts are built from the
simulated truth, so these run in seconds; the figures come from ``make bench-alerts``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import alerts, backtest, schema

H = schema.STEPS_PER_HOUR


def test_a_breach_needs_an_hour_below_first() -> None:
    v = np.full(60, 80.0)
    v[20:25] = 90.0  # breach at 20 (20 steps below before it)
    v[28:30] = 90.0  # back above after 3 steps below: not a new breach
    v[45:] = 90.0  # after 15 steps below: a breach
    assert backtest.breaches(v, 85.0).tolist() == [20, 45]


def test_leads_onsets_and_precision_of_one_series() -> None:
    n = 48 * H
    v = np.full(n, 50.0)
    b = 36 * H
    v[b:b + H] = 90.0  # one breach at 36 h
    origins = np.arange(24 * H - 1, n - backtest.LOOKAHEAD, 6)
    active = np.zeros(len(origins), dtype=bool)
    active[(origins >= b - 3 * H) & (origins < b)] = True  # an alert from 3 h before the breach on
    active[(origins >= 26 * H - 1) & (origins <= 26 * H + 11)] = True  # a false one, too early (> 8.5 h)
    c = backtest.score_metric(v, 85.0, origins, active, np.zeros_like(active))
    lead = (b - origins[origins >= b - 3 * H][0]) / H  # from the first alerting origin: 2 h 35 min
    assert c.leads == [pytest.approx(lead)] and 2.5 < lead <= 3.0
    assert c.onsets == 2 and c.true_onsets == 1
    assert c.to_breach == [pytest.approx(lead)]
    figures = c.figures(server_days=1.0)
    assert figures["recall_1h"] == 1.0 and figures["median_lead_h"] == pytest.approx(lead)
    assert figures["precision"] == 0.5
    late = np.zeros(len(origins), dtype=bool)
    late[(origins >= b - H // 2) & (origins < b)] = True  # only 30 minutes ahead: not caught at >= 1 h
    assert backtest.score_metric(v, 85.0, origins, late, np.zeros_like(late)).figures(1.0)["recall_1h"] == 0.0


@pytest.fixture(scope="module")
def small() -> tuple[backtest.Series, np.ndarray]:
    """A 3-server, 2-day simulated fleet with 'forecasts' made from its own future plus noise."""
    spec = backtest.FleetSpec(seed=11, n_servers=3, days=2, prefix="unit")
    fleet = backtest.simulate(spec)
    series = backtest.Series.from_records(fleet.records, fleet.incidents)
    rng = np.random.default_rng(0)
    q = np.zeros((3, len(series.origins), schema.HORIZON_STEPS, len(schema.METRICS), 3), dtype=np.float32)
    for i, s in enumerate(series.servers):
        for j, m in enumerate(schema.METRICS):
            v = series.values[s][m]
            for k, o in enumerate(series.origins):
                mid = v[o + 1:o + 1 + schema.HORIZON_STEPS] + rng.normal(0, 2.0)
                q[i, k, :, j] = np.stack([mid - 4, mid, mid + 4], axis=1)
    return series, q


def test_the_fast_calibration_path_equals_the_services_rules(small: tuple[backtest.Series, np.ndarray]) -> None:
    series, q = small
    cfg = alerts.load_config().with_cuts({m: {"warning": 0.3, "critical": 0.6} for m in schema.METRICS})
    slow = backtest.fleetcast_activity(series, q, cfg)
    fast = backtest.activity_from_scores(series, backtest.rule_scores(series, q, cfg), cfg)
    assert sum(int(a.sum()) for a in slow["active"].values()) > 0  # something fires
    for m in slow["active"]:
        assert np.array_equal(slow["active"][m], fast["active"][m]), m
        assert np.array_equal(slow["already"][m], fast["already"][m]), m


def test_baselines_and_table(small: tuple[backtest.Series, np.ndarray]) -> None:
    series, q = small
    cfg = alerts.load_config()
    table = backtest.evaluate_methods(series, q, cfg)
    assert set(table["method"]) == set(backtest.METHODS)
    assert set(table["metric"]) == {*schema.METRICS, "overall"}
    static = backtest.baseline_activity(series, cfg, "static")["active"]["memory_percent"]
    i = 0
    v = series.values[series.servers[i]]["memory_percent"][series.origins]
    warn = backtest._warning(cfg, "memory_percent", series.profiles[i])
    assert np.array_equal(static[i], v >= 0.9 * warn)


def test_predict_linear_projects_the_last_hour() -> None:
    n = 30 * H + backtest.LOOKAHEAD + 10
    v = np.full(n, 50.0)
    o = 24 * H - 1
    v[o - H + 1:o + 1] = 50.0 + np.arange(H) * 0.5  # +6 %/h over the last hour: 55.5 + 48 at 8 h
    import pandas as pd

    series = backtest.Series(["a"], ["generic"], pd.date_range("2026-01-01", periods=n, freq="5min"),
                             {"a": {m: v.copy() for m in schema.METRICS}}, np.array([o]))
    act = backtest.baseline_activity(series, alerts.load_config(), "predict_linear")["active"]
    assert act["cpu_percent"][0, 0]


def test_calibration_refuses_the_test_fleet(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test fleet"):
        backtest.calibrate(tmp_path / "none.pt", backtest.TEST_FLEET, forecaster=object())


def test_gate_blocks_a_candidate_that_loses_recall_or_precision() -> None:
    champ = {"alerts_fleetcast_overall_recall_1h": 0.85, "alerts_fleetcast_overall_precision": 0.80}
    ok, why = backtest.gate({"alerts_fleetcast_overall_recall_1h": 0.83,
                             "alerts_fleetcast_overall_precision": 0.81}, champ, 0.05)
    assert ok and "within tolerance" in why
    ok, why = backtest.gate({"alerts_fleetcast_overall_recall_1h": 0.70,
                             "alerts_fleetcast_overall_precision": 0.81}, champ, 0.05)
    assert not ok and "recall" in why and "0.700" in why
    assert backtest.gate({}, champ, 0.05)[0]  # a champion or candidate without a backtest: no alert gate


def test_the_cut_is_the_most_recall_at_the_target_precision_else_the_best_f1() -> None:
    sweep = pd.DataFrame({"cut": [0.1, 0.3, 0.5, 0.7, 0.9],
                          "precision": [0.40, 0.70, 0.82, 0.90, float("nan")],
                          "recall_1h": [0.90, 0.80, 0.60, 0.50, 0.0]})
    sweep["f1"] = [2 * p * r / (p + r) if p + r and p == p else 0.0
                   for p, r in zip(sweep["precision"], sweep["recall_1h"], strict=True)]
    assert backtest.choose_cut(sweep, 0.8) == 0.5  # 0.5 and 0.7 reach 0.8: 0.5 keeps more recall
    assert backtest.choose_cut(sweep, 0.95) == 0.3  # none reaches 0.95: the best F1
    assert backtest.choose_cut(sweep, None) == 0.3
    tie = pd.DataFrame({"cut": [0.1, 0.2], "precision": [0.9, 0.9], "recall_1h": [0.5, 0.5], "f1": [0.6, 0.6]})
    assert backtest.choose_cut(tie, 0.8) == 0.2  # ties: the higher cut
