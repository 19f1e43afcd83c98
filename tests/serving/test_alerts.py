"""Alert rules: time to breach, probability, severity, already-above, trend, explanation, persistence and
resolution (in data time), dedup and clearing."""

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
    book = alerts.AlertBook(open_minutes=0, close_minutes=0)  # no persistence: every evaluation counts
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


# --- trend, persistence and resolution (issue 10) -------------------------------------------------------
STEP = pd.Timedelta(minutes=5)


def times_after(origin: pd.Timestamp) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(origin + pd.to_timedelta(np.arange(1, 97) * 5, unit="min"))


def test_a_pure_ramp_crossing_in_3_hours_gives_time_to_breach_3_hours() -> None:
    """Memory rising 1.5 %/h, now at 80.5 %: 85 % in 3 h (95 % only after the 8 h horizon). The forecast pulls
    back to a flat 80.5 % (what the TFT did in the live demo); the trend component carries the ramp forward."""
    history = 80.5 + 1.5 * np.arange(-287, 1) / 12  # ... 80.375, 80.5
    flat = band(np.full(96, 80.5), 3.0)
    found = alerts.evaluate_forecast("db-01", "database", {"memory_percent": flat}, TIMES, ORIGIN,
                                     {"memory_percent": 80.5}, CFG, {"memory_percent": history})
    assert len(found) == 1
    a = found[0]
    assert a["level"] == "warning" and a["threshold"] == 85.0
    assert a["hours_to_breach"] == pytest.approx(3.0, abs=0.25)
    assert a["message"] == "Memory expected to reach 85% in 3 hours"
    assert a["explanation"]["source"] == "trend" and a["explanation"]["rate_per_hour"] == pytest.approx(1.5)
    assert "trend +1.50%/h" in a["explanation"]["text"] and "Theil-Sen" in a["explanation"]["text"]
    # the same ramp carried by the forecast itself (no trend metric): CPU 70 % -> 85 % in 3 h
    ramp_q = band(80.5 + 1.5 * np.arange(1, 97) / 12, 2.0)
    cpu = alerts.evaluate_forecast("web-01", "web_api", {"cpu_percent": ramp_q}, TIMES, ORIGIN,
                                   {"cpu_percent": 80.5}, CFG, {"cpu_percent": np.full(288, 80.5)})
    assert [x["level"] for x in cpu] == ["warning"]
    assert cpu[0]["hours_to_breach"] == pytest.approx(3.0, abs=0.25)
    assert cpu[0]["explanation"]["source"] == "forecast"
    assert cpu[0]["explanation"]["text"].startswith("forecast P50 85.0%")


def test_without_the_trend_the_flat_forecast_misses_the_ramp() -> None:
    history = 80.5 + 1.5 * np.arange(-287, 1) / 12
    no_trend = alerts.parse_config({"rules": [{"alert_type": "memory_exhaustion_predicted",
                                               "metric": "memory_percent", "warning": 85, "critical": 95}]})
    found = alerts.evaluate_forecast("db-01", "database", {"memory_percent": band(np.full(96, 80.5), 2.0)}, TIMES,
                                     ORIGIN, {"memory_percent": 80.5}, no_trend, {"memory_percent": history})
    assert found == []


def test_a_noisy_flat_series_at_80_percent_opens_no_alert_over_a_day_of_refreshes() -> None:
    """A day of 5-minute refreshes of a server whose memory, CPU and disk sit at 80 % with noise (sd 2,
    so single samples reach 85 %), each forecast a band around it shifted by noise (sd 1): no alert opens."""
    rng = np.random.default_rng(3)
    n = 288 * 2
    values = {m: 80.0 + rng.normal(0.0, 2.0, n) for m in ("cpu_percent", "memory_percent", "disk_percent")}
    assert max(v.max() for v in values.values()) >= 85.0  # the noise does reach the threshold
    book = alerts.AlertBook()
    start = pd.Timestamp("2025-10-12T00:00:00")
    for i in range(288, n):
        origin = start + i * STEP
        quantiles = {m: band(np.full(96, 80.0 + rng.normal(0.0, 1.0)), 3.0) for m in values}
        recent = {m: v[i - 287:i + 1] for m, v in values.items()}
        found = alerts.evaluate_forecast("web-01", "web_api", quantiles, times_after(origin), origin,
                                         {m: float(v[-1]) for m, v in recent.items()}, CFG, recent)
        book.update("web-01", found, origin)
        assert len(book) == 0, (origin, found)


def alert(hours: float = 3.0, **kw: object) -> dict:
    return {"alert_type": "disk_full_predicted", "severity": "medium", "hours_to_breach": hours,
            "server_name": "s1", **kw}


def test_persistence_one_noisy_forecast_neither_opens_nor_closes_an_alert() -> None:
    """open_minutes 30, close_minutes 60 (models/alerts.yaml): in data time, whatever the refresh rate."""
    book = alerts.AlertBook(open_minutes=30, close_minutes=60)
    t0 = pd.Timestamp("2025-10-12T10:00:00")
    at = [t0 + k * pd.Timedelta(minutes=30) for k in range(12)]
    assert book.update("s1", [alert()], at[0]) == [] and len(book) == 0  # one forecast: pending
    book.update("s1", [], at[1])  # the run breaks: not opened
    book.update("s1", [alert()], at[2])
    assert len(book) == 0
    assert book.update("s1", [alert(hours=2.5)], at[3]) == ["disk_full_predicted"]  # held 30 min: opens
    assert book.for_server("s1")[0]["first_seen"] == "2025-10-12T11:30:00"
    book.update("s1", [], at[4])  # one clear evaluation: still open
    assert book.is_active("s1", "disk_full_predicted")
    book.update("s1", [alert(hours=1.5)], at[5])  # raised again: the episode goes on, first_seen kept
    book.update("s1", [], at[6])
    assert book.for_server("s1")[0]["first_seen"] == "2025-10-12T11:30:00"
    assert book.for_server("s1")[0]["timestamp"] == "2025-10-12T12:30:00"
    book.update("s1", [], at[7])  # clear for 60 min since last raised: resolved
    assert len(book) == 0
    # at a 5-minute refresh rate the same 30 minutes take 7 evaluations
    for k in range(6):
        book.update("s1", [alert()], at[8] + k * STEP)
    assert len(book) == 0
    book.update("s1", [alert()], at[8] + 6 * STEP)
    assert len(book) == 1


def test_already_above_opens_at_once_when_its_history_confirms_it() -> None:
    book = alerts.AlertBook(open_minutes=30, close_minutes=60)
    q = band(np.full(96, 96.0), 1.0)
    hot = np.r_[np.full(285, 90.0), 96.0, 96.5, 97.0]
    found = alerts.evaluate_forecast("db-01", "database", {"memory_percent": q}, TIMES, ORIGIN,
                                     {"memory_percent": 97.0}, CFG, {"memory_percent": hot})
    assert found[0]["already_above"] and "already above 95%" in found[0]["message"]
    assert book.update("db-01", found, ORIGIN) == ["memory_exhaustion_predicted"]
    # one sample above is not "already above": it is the forecast's call (and pending)
    blip = np.r_[np.full(287, 80.0), 97.0]
    flat = band(np.full(96, 80.0), 2.0)
    assert alerts.evaluate_forecast("db-02", "database", {"memory_percent": flat}, TIMES, ORIGIN,
                                    {"memory_percent": 97.0}, CFG, {"memory_percent": blip}) == []


def test_resolution_when_forecast_and_value_fall_back() -> None:
    """Memory leaks to 97 %, then is restarted to 40 %: the alert resolves once the forecast and the value
    have been clear for close_minutes; a backfill of a day of calm data resolves it with one evaluation."""
    book = alerts.AlertBook(open_minutes=30, close_minutes=60)
    hot = np.r_[np.full(280, 90.0), np.full(8, 97.0)]
    raised = alerts.evaluate_forecast("db-01", "database", {"memory_percent": band(np.full(96, 96.0), 1.0)},
                                      TIMES, ORIGIN, {"memory_percent": 97.0}, CFG, {"memory_percent": hot})
    book.update("db-01", raised, ORIGIN)
    assert len(book) == 1
    calm = np.r_[hot[24:], np.full(24, 40.0)]  # two hours later: value back at 40 %, flat forecast
    later = ORIGIN + pd.Timedelta(hours=2)
    clear = alerts.evaluate_forecast("db-01", "database", {"memory_percent": band(np.full(96, 40.0), 2.0)},
                                     times_after(later), later, {"memory_percent": 40.0}, CFG,
                                     {"memory_percent": calm})
    assert clear == []
    book.update("db-01", clear, ORIGIN + pd.Timedelta(minutes=55))  # not raised for 55 min: still open
    assert len(book) == 1
    book.update("db-01", clear, ORIGIN + pd.Timedelta(minutes=60))  # 60 min: resolved
    assert len(book) == 0
    book2 = alerts.AlertBook(open_minutes=30, close_minutes=60)  # a backfill of calm data: one evaluation resolves
    book2.update("db-01", raised, ORIGIN)
    book2.update("db-01", clear, later)
    assert len(book2) == 0


def test_calibrated_cuts_come_from_the_calibration_file(tmp_path) -> None:
    (tmp_path / "cal.yaml").write_text("cuts:\n  cpu_percent: {warning: 0.6, critical: 0.4}\n")
    cfg = alerts.parse_config({"rules": [{"alert_type": "c", "metric": "cpu_percent", "warning": 85, "critical": 95}],
                               "calibration_file": "cal.yaml", "cuts": {"cpu_percent": {"critical": 0.3}}},
                              tmp_path)
    assert cfg.cut("cpu_percent", "warning") == 0.6 and cfg.cut("cpu_percent", "critical") == 0.3  # YAML wins
    assert cfg.cut("memory_percent", "warning") == cfg.min_probability
    with pytest.raises(ValueError, match="cut in"):
        alerts.parse_config({"rules": [{"alert_type": "c", "metric": "cpu_percent", "warning": 85, "critical": 95}],
                             "cuts": {"cpu_percent": {"warning": 2}}})


def test_a_step_that_stays_up_is_no_trend_when_the_rise_must_go_on() -> None:
    """Memory stepped from 50 % to 80 % an hour ago (a job loaded) and stays there: the 3 h Theil-Sen slope is
    steep, but the last hour is flat. With ``trend.recent_fraction`` the rise must go on now: no alert; a
    leak still climbing at the same rate keeps its alert."""
    noise = np.random.default_rng(0).normal(0.0, 0.2, 288)
    step = np.where(np.arange(288) >= 288 - 18, 80.0, 50.0) + noise
    step[288 - 30:288 - 18] = np.linspace(50.0, 80.0, 12)  # an hour's ramp, then flat for 90 minutes
    flat = {"memory_percent": band(np.full(96, 80.0), 3.0)}

    def run(cfg: alerts.AlertConfig, history: np.ndarray) -> list[dict]:
        return alerts.evaluate_forecast("ml-01", "ml_compute", flat, TIMES, ORIGIN,
                                        {"memory_percent": float(history[-1])}, cfg, {"memory_percent": history})

    plain = CFG.with_trend(trend_recent=0.0, trend_max_hours=None)
    assert run(plain, step) and run(plain, step)[0]["explanation"]["source"] == "trend"
    going_on = CFG.with_trend(trend_recent=0.5, trend_max_hours=None)
    assert run(going_on, step) == []
    leak = 80.0 + 1.5 * np.arange(-287, 1) / 12 + noise
    assert run(going_on, leak)[0]["explanation"]["source"] == "trend"


def test_the_trend_reaches_no_further_than_max_hours() -> None:
    """A 1.5 %/h ramp now at 77.5 % reaches 85 % in 5 h: carried 8 h it alerts, carried 4 h it does not."""
    history = 77.5 + 1.5 * np.arange(-287, 1) / 12
    flat = {"memory_percent": band(np.full(96, 77.5), 3.0)}

    def run(max_hours: float | None) -> list[dict]:
        return alerts.evaluate_forecast("db-01", "database", flat, TIMES, ORIGIN, {"memory_percent": 77.5},
                                        CFG.with_trend(trend_max_hours=max_hours, trend_recent=0.0),
                                        {"memory_percent": history})

    assert run(None)[0]["hours_to_breach"] == pytest.approx(5.0, abs=0.25)
    assert run(8.0)[0]["hours_to_breach"] == pytest.approx(5.0, abs=0.25)
    assert run(4.0) == []


@pytest.mark.parametrize(("trend", "message"), [
    ({"max_hours": 0}, "trend.max_hours"), ({"recent_fraction": 1.5}, "trend.recent_fraction"),
])
def test_bad_trend_settings_are_named(trend: dict, message: str) -> None:
    data = {"rules": [{"alert_type": "a", "metric": "cpu_percent", "warning": 80, "critical": 90}], "trend": trend}
    with pytest.raises(ValueError, match=message):
        alerts.parse_config(data)
