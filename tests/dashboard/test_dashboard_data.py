"""Unit tests of the dashboard's pure data shaping and chart specs (no Streamlit, no HTTP)."""

from __future__ import annotations

import numpy as np
import pytest
from fleetcast_testkit.standin import predictions_answer

from dashboard import charts
from dashboard.data import (
    RISK_LEVELS,
    FleetForecasts,
    alerts_frame,
    filter_alerts,
    severity_counts,
    thresholds_of,
)
from models.alerts import thresholds_for as rule_thresholds
from models.schema import HORIZON_STEPS, METRICS


def _pred(name: str, risk: str, p50: list[float] | None = None, history: list[float] | None = None) -> dict:
    p50 = p50 if p50 is not None else [10.0] * HORIZON_STEPS
    stamps = [f"2025-10-12T{(21 + (i + 1) * 5 // 60) % 24:02d}:{(40 + (i + 1) * 5) % 60:02d}:00"
              for i in range(HORIZON_STEPS)]
    forecast = {"timestamps": stamps}
    for m in METRICS:
        forecast[m] = {"p10": [v - 1 for v in p50], "p50": list(p50), "p90": [v + 1 for v in p50]}
    out = {"server_name": name, "profile": "web_api", "risk_level": risk, "forecast": forecast}
    if history is not None:
        out["history"] = {"timestamps": [f"t{i}" for i in range(len(history))],
                          **{m: list(history) for m in METRICS}}
    return out


def test_servers_sorted_by_risk_keeping_service_order_within_a_level() -> None:
    fleet = FleetForecasts.from_response({"predictions": [
        _pred("b-low", "low"), _pred("z-crit", "critical"), _pred("a-low", "low"), _pred("m-high", "high"),
    ]})
    assert fleet.servers == ("z-crit", "m-high", "b-low", "a-low")
    assert fleet.risk_counts() == {"critical": 1, "high": 1, "medium": 0, "low": 2}


def test_heatmap_is_servers_by_half_hours_of_peak_p50() -> None:
    ramp = [float(i) for i in range(HORIZON_STEPS)]
    fleet = FleetForecasts.from_response({"predictions": [_pred("a", "high", ramp), _pred("b", "low")]})
    matrix = fleet.heatmap("cpu_percent")
    assert matrix.shape == (2, 16)
    assert matrix.servers == ("a", "b")
    # each cell is the peak of its six 5-minute steps: the last step of the bucket for a ramp
    np.testing.assert_allclose(matrix.values[0], [6 * k + 5 for k in range(16)])
    np.testing.assert_allclose(matrix.values[1], 10.0)
    assert matrix.columns[0] == "+0:30" and matrix.columns[-1] == "+8:00"
    assert matrix.spans[0] == "21:40–22:10 UTC"
    # computed once per refresh: the same object comes back
    assert fleet.heatmap("cpu_percent") is matrix
    assert fleet.heatmap_frame("cpu_percent") is fleet.heatmap_frame("cpu_percent")


def test_heatmap_with_actuals_prepends_the_last_8_hours() -> None:
    short = [50.0] * 30  # only 2.5 h of history: the older buckets stay empty
    fleet = FleetForecasts.from_response({"predictions": [_pred("a", "low", history=short)]})
    matrix = fleet.heatmap("memory_percent", include_actual=True)
    assert matrix.shape == (1, 32)
    assert matrix.kinds[:16] == ("actual",) * 16 and matrix.kinds[16:] == ("forecast",) * 16
    assert matrix.columns[0] == "−8:00" and matrix.columns[15] == "−0:30"
    assert np.isnan(matrix.values[0, :11]).all()
    np.testing.assert_allclose(matrix.values[0, 11:16], 50.0)
    frame = fleet.heatmap_frame("memory_percent", include_actual=True)
    assert len(frame) == 32
    assert frame["value"].isna().sum() == 11  # NaN travels as null, drawn as an empty cell


def test_heatmap_of_a_larger_fleet_matches_the_answer() -> None:
    body = predictions_answer(40)
    fleet = FleetForecasts.from_response(body)
    matrix = fleet.heatmap("disk_percent")
    assert list(matrix.servers) == [p["server_name"] for p in body["predictions"]]
    expected = np.asarray([p["forecast"]["disk_percent"]["p50"] for p in body["predictions"]]).reshape(40, 16, 6)
    np.testing.assert_allclose(matrix.values, expected.max(axis=2))
    assert [RISK_LEVELS.index(r) for r in fleet.risk_levels] == sorted(RISK_LEVELS.index(r) for r in fleet.risk_levels)


def test_unknown_metric_and_bad_bucket_are_refused() -> None:
    fleet = FleetForecasts.from_response({"predictions": [_pred("a", "low")]})
    with pytest.raises(ValueError, match="unknown metric 'gpu'"):
        fleet.heatmap("gpu")
    with pytest.raises(ValueError, match="must divide 96"):
        fleet.heatmap("cpu_percent", bucket_steps=7)


def test_empty_answer_gives_an_empty_fleet() -> None:
    fleet = FleetForecasts.from_response({"predictions": []})
    assert len(fleet) == 0
    assert fleet.heatmap("cpu_percent").shape == (0, 16)
    assert fleet.heatmap_frame("cpu_percent").empty


def test_alerts_table_most_severe_and_soonest_first_and_filters() -> None:
    alerts = [
        {"server_name": "a", "profile": "web_api", "severity": "medium", "hours_to_breach": 1.0},
        {"server_name": "b", "profile": "database", "severity": "critical", "hours_to_breach": 5.0},
        {"server_name": "c", "profile": "web_api", "severity": "critical", "hours_to_breach": 0.5},
        {"server_name": "d", "profile": "database", "severity": "low", "hours_to_breach": None},
    ]
    frame = alerts_frame(alerts)
    assert list(frame["server_name"]) == ["c", "b", "a", "d"]
    assert severity_counts(alerts) == {"critical": 2, "high": 0, "medium": 1, "low": 1}
    assert list(filter_alerts(frame, ["critical"], [])["server_name"]) == ["c", "b"]
    assert list(filter_alerts(frame, ["critical", "low"], ["database"])["server_name"]) == ["b", "d"]
    assert alerts_frame([]).empty


def test_heatmap_spec_keeps_row_order_and_scales_colours() -> None:
    body = predictions_answer(5)
    fleet = FleetForecasts.from_response(body)
    spec = charts.heatmap_spec(fleet.heatmap("cpu_percent"))
    assert spec["encoding"]["y"]["sort"] is None  # rows in data order: most at risk on top
    assert spec["encoding"]["color"]["scale"]["domain"][-1] == 100.0
    load = fleet.heatmap("load_average")
    assert charts.heatmap_spec(load)["encoding"]["color"]["scale"]["domain"][-1] == pytest.approx(
        round(float(np.nanmax(load.values)), 2))
    with_actual = charts.heatmap_spec(fleet.heatmap("cpu_percent", include_actual=True))
    assert with_actual["layer"][1]["data"]["values"] == [{"offset": "+0:30"}]  # the 'now' line
    assert charts.row_px(10) == 20 and charts.row_px(1000) == 3


def test_detail_spec_draws_the_thresholds_the_service_sends() -> None:
    body = predictions_answer(8)  # the service's own answer: each entry carries its server's thresholds
    database = next(p for p in body["predictions"] if p["profile"] == "database")
    rules = thresholds_of(database, "load_average")
    assert rules == sorted(rule_thresholds("load_average", "database").items(), key=lambda kv: kv[1])
    spec = charts.detail_spec("load_average", "2025-10-12T21:40:00", rules)
    assert thresholds_of(database, "gpu_percent") == []  # no rule: nothing drawn, no error
    assert thresholds_of({"server_name": "old-service"}, "cpu_percent") == []  # an answer without thresholds
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["area", "line", "line", "rule", "rule"]
    assert [v["threshold"] for v in spec["layer"][3]["data"]["values"]] == [v for _, v in rules]


def test_server_frames_join_history_and_forecast() -> None:
    body = predictions_answer(3)
    fleet = FleetForecasts.from_response(body)
    name = fleet.servers[0]
    hist, fc = fleet.server_frames(name, "cpu_percent")
    assert len(hist) == 288 and len(fc) == 96
    assert hist["time"].max() < fc["time"].min()
    assert (fc["p10"] <= fc["p50"]).all() and (fc["p50"] <= fc["p90"]).all()


def test_a_metric_the_server_never_reports_is_an_empty_chart() -> None:
    """A ``/predictions`` entry with ``missing_metrics`` (issue 11): null history, no forecast for the metric."""
    from dashboard.data import FleetForecasts

    stamps = ["2026-01-01T00:00:00", "2026-01-01T00:05:00"]
    entry = {"server_name": "cpu-only", "profile": "generic", "profile_source": "default", "risk_level": "low",
             "current": {"cpu_percent": 30.0, "memory_percent": None, "timestamp": stamps[-1]},
             "predicted": {"cpu_percent": 31.0, "memory_percent": None}, "missing_metrics": {"memory_percent": "x"},
             "history": {"timestamps": stamps, "cpu_percent": [29.0, 30.0], "memory_percent": None},
             "forecast": {"timestamps": ["2026-01-01T00:10:00"], "cpu_percent": {"p10": [30.0], "p50": [31.0],
                                                                                "p90": [32.0]}}}
    fleet = FleetForecasts.from_response({"predictions": [entry]})
    hist, fc = fleet.server_frames("cpu-only", "memory_percent")
    assert len(hist) == 2 and hist["actual"].isna().all()
    assert len(fc) == 1 and fc["p50"].isna().all()
    hist, fc = fleet.server_frames("cpu-only", "cpu_percent")
    assert hist["actual"].tolist() == [29.0, 30.0] and fc["p50"].tolist() == [31.0]
