"""Alert rules: time to breach, probability, severity, already-above, dedup and clearing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import alerts

ORIGIN = pd.Timestamp("2025-10-12T21:40:00")
TIMES = pd.DatetimeIndex(ORIGIN + pd.to_timedelta(np.arange(1, 97) * 5, unit="min"))
CFG = alerts.load_config()
MEM_RULE = next(r for r in CFG.rules if r.metric == "memory_percent")
CPU_RULE = next(r for r in CFG.rules if r.metric == "cpu_percent")


def band(p50: np.ndarray, width: float = 4.0) -> np.ndarray:
    return np.stack([p50 - width, p50, p50 + width], axis=1)


def ramp(start: float, end: float) -> np.ndarray:
    return np.linspace(start, end, 96)


def evaluate(rule: alerts.Rule, q: np.ndarray, current: float | None) -> dict | None:
    return alerts.evaluate_metric(rule, CFG.thresholds(rule, "web_api"), q, TIMES, ORIGIN, current,
                                  CFG.soon_hours, CFG.min_probability)


@pytest.mark.parametrize(("minutes", "text"), [
    (5, "5 minutes"), (1, "1 minute"), (60, "1 hour"), (150, "2 hours 30 minutes"), (360, "6 hours"),
])
def test_humanize_minutes(minutes: float, text: str) -> None:
    assert alerts.humanize_minutes(minutes) == text


def test_exceed_probability_follows_the_quantiles() -> None:
    q = np.array([[80.0, 90.0, 100.0]])
    assert alerts.exceed_probability(q, 80.0)[0] == pytest.approx(0.9)
    assert alerts.exceed_probability(q, 90.0)[0] == pytest.approx(0.5)
    assert alerts.exceed_probability(q, 100.0)[0] == pytest.approx(0.1)
    assert alerts.exceed_probability(q, 95.0)[0] == pytest.approx(0.3)
    assert alerts.exceed_probability(q, 111.0)[0] == pytest.approx(0.0)


def test_p50_crossing_gives_time_to_breach_in_message_and_prediction_time() -> None:
    p50 = np.full(96, 80.0)
    p50[72:] = 96.0  # P50 reaches 95 at step 73: 6 h 5 min after the origin
    a = evaluate(CPU_RULE, band(p50, 2.0), current=80.0)
    assert a is not None
    assert a["alert_type"] == "cpu_spike_predicted" and a["threshold"] == 95.0 and a["level"] == "critical"
    assert a["message"] == "CPU expected to reach 95% in 6 hours 5 minutes"
    assert a["prediction_time"] == "2025-10-13T03:45:00"
    assert a["hours_to_breach"] == pytest.approx(6.08, abs=0.01)
    assert a["probability"] >= 0.5
    assert a["severity"] == "high"  # critical threshold, certain, not soon


def test_p90_only_crossing_is_less_certain_than_p50_crossing() -> None:
    certain = evaluate(CPU_RULE, band(np.full(96, 96.0), 2.0), current=80.0)
    possible = evaluate(CPU_RULE, band(np.full(96, 93.0), 4.0), current=80.0)
    assert certain is not None and possible is not None
    assert "could reach 95%" in possible["message"]
    assert possible["probability"] < 0.5 <= certain["probability"]
    assert alerts.SEVERITIES.index(possible["severity"]) < alerts.SEVERITIES.index(certain["severity"])


def test_already_above_threshold_alerts_now_as_critical() -> None:
    a = evaluate(MEM_RULE, band(np.full(96, 96.5), 1.0), current=97.0)
    assert a is not None
    assert a["alert_type"] == "memory_exhaustion_predicted"
    assert a["hours_to_breach"] == 0.0 and a["prediction_time"] == "2025-10-12T21:40:00"
    assert a["severity"] == "critical" and a["probability"] == 1.0
    assert "already above 95%" in a["message"]


def test_already_above_even_when_the_forecast_falls() -> None:
    a = evaluate(MEM_RULE, band(ramp(90.0, 40.0), 1.0), current=97.0)
    assert a is not None and a["hours_to_breach"] == 0.0


def test_warning_threshold_when_critical_is_not_reached() -> None:
    a = evaluate(MEM_RULE, band(ramp(70.0, 90.0), 1.0), current=70.0)
    assert a is not None
    assert a["level"] == "warning" and a["threshold"] == 85.0
    assert a["severity"] == "medium"  # warning + certain, not soon


def test_sooner_breach_is_more_severe() -> None:
    soon = np.full(96, 80.0)
    soon[6:] = 97.0  # 35 minutes
    late = np.full(96, 80.0)
    late[80:] = 97.0  # ~6.75 h
    a, b = evaluate(CPU_RULE, band(soon, 1.0), 80.0), evaluate(CPU_RULE, band(late, 1.0), 80.0)
    assert a["severity"] == "critical" and b["severity"] == "high"


def test_no_alert_when_nothing_reaches_a_threshold() -> None:
    assert evaluate(CPU_RULE, band(np.full(96, 40.0), 5.0), current=40.0) is None


def test_wide_band_touching_threshold_below_min_probability_is_ignored() -> None:
    q = np.stack([np.full(96, 50.0), np.full(96, 70.0), np.full(96, 85.5)], axis=1)  # P90 just touches 85
    assert evaluate(MEM_RULE, q, current=60.0) is None


def test_load_thresholds_are_per_profile() -> None:
    assert alerts.thresholds_for("load_average", "ml_compute") == {"warning": 64.0, "critical": 80.0}
    assert alerts.thresholds_for("cpu_percent", "ml_compute") == {"warning": 85.0, "critical": 95.0}
    with pytest.raises(KeyError):
        alerts.thresholds_for("nope", None)


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="warning must be below critical"):
        alerts.parse_config({"rules": [{"alert_type": "x", "metric": "cpu_percent", "warning": 95, "critical": 85}]})
    with pytest.raises(ValueError, match="unknown metric"):
        alerts.parse_config({"rules": [{"alert_type": "x", "metric": "gpu", "warning": 1, "critical": 2}]})


def test_evaluate_forecast_and_risk_level() -> None:
    quantiles = {"cpu_percent": band(np.full(96, 40.0)), "memory_percent": band(np.full(96, 96.0)),
                 "disk_percent": band(np.full(96, 30.0)), "load_average": band(np.full(96, 1.0), 0.5)}
    found = alerts.evaluate_forecast("db-01", "database", quantiles, TIMES, ORIGIN,
                                     {"cpu_percent": 40.0, "memory_percent": 90.0, "disk_percent": 30.0,
                                      "load_average": 1.0})
    assert [a["alert_type"] for a in found] == ["memory_exhaustion_predicted"]
    assert found[0]["server_name"] == "db-01"
    assert alerts.risk_level(found) == found[0]["severity"]
    assert alerts.risk_level([]) == "low"


def test_alert_book_dedups_keeps_first_seen_and_clears() -> None:
    book = alerts.AlertBook()
    a = {"alert_type": "cpu_spike_predicted", "severity": "high", "hours_to_breach": 3.0, "server_name": "s1"}
    book.update("s1", [a], pd.Timestamp("2025-10-12T10:00:00"))
    book.update("s1", [dict(a, severity="critical", hours_to_breach=1.0)], pd.Timestamp("2025-10-12T10:05:00"))
    active = book.all()
    assert len(active) == 1
    assert active[0]["first_seen"] == "2025-10-12T10:00:00"
    assert active[0]["timestamp"] == "2025-10-12T10:05:00"
    assert active[0]["severity"] == "critical"
    book.update("s2", [dict(a, server_name="s2", severity="low")], pd.Timestamp("2025-10-12T10:05:00"))
    assert [x["server_name"] for x in book.all()] == ["s1", "s2"]  # most severe first
    book.update("s1", [], pd.Timestamp("2025-10-12T10:10:00"))  # forecast no longer crosses
    assert [x["server_name"] for x in book.all()] == ["s2"]
    book.update("s1", [a], pd.Timestamp("2025-10-12T10:15:00"))
    assert book.for_server("s1")[0]["first_seen"] == "2025-10-12T10:15:00"  # a new episode
