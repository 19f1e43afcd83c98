"""The Streamlit app under ``streamlit.testing.v1.AppTest`` (in-process, so ``sent`` sees every request
the app's client sends).

Two backends: the counting stand-in (the real service with a synthetic forecaster, in-process: exact
server-side request counts, the error paths) and the REAL service (``live_service``: ``bentoml serve``
with the tiny model, its demo fleet and one server fed over POST /feed/data).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fleetcast_testkit import RequestTally, free_port
from fleetcast_testkit.standin import StandinService
from streamlit.testing.v1 import AppTest

from dashboard.data import RISK_LEVELS, metric_label
from dashboard.session import FETCHED_AT_KEY, HEATMAP_KEY
from models.schema import METRICS

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
GETS_PER_REFRESH = {"GET /health": 1, "GET /predictions": 1, "GET /alerts": 1, "GET /scenario": 1}


def _run_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _switch_every_metric_and_tab_control(at: AppTest) -> None:
    for metric in [*METRICS[1:], METRICS[0]]:
        at.selectbox(key="heatmap_metric").set_value(metric).run()
        assert not at.exception
        assert at.session_state[HEATMAP_KEY]["metric"] == metric
    at.toggle(key="heatmap_actual").set_value(True).run()
    assert at.session_state[HEATMAP_KEY]["shape"][1] == 32  # 16 buckets of actuals + 16 of forecast
    at.selectbox(key="detail_server").set_value(at.session_state[HEATMAP_KEY]["servers"][-1]).run()
    at.multiselect(key="alerts_severity").set_value(["critical", "high"]).run()
    at.multiselect(key="alerts_profile").set_value(["database"]).run()
    assert not at.exception


# --- stand-in: the service with a synthetic forecaster ----------------------------------------------
def test_page_renders_overview_and_one_heatmap_row_per_server(
    standin: StandinService, app_env: Callable[[str], None]
) -> None:
    app_env(standin.url)
    at = _run_app()
    assert dict(standin.counts) == GETS_PER_REFRESH
    predictions = httpx.get(f"{standin.url}/predictions").json()["predictions"]
    expected = [p["server_name"] for p in predictions]
    heatmap = at.session_state[HEATMAP_KEY]
    assert heatmap["servers"] == expected  # one row per server, in the service's risk order
    assert heatmap["shape"] == (len(expected), 16)
    assert _metric(at, "Servers tracked") == str(len(expected))
    for level in RISK_LEVELS:
        count = sum(p["risk_level"] == level for p in predictions)
        assert next(m.value for m in at.metric if m.label.endswith(f"{level} risk")) == str(count)
    alerts = httpx.get(f"{standin.url}/alerts").json()["alerts"]
    assert _metric(at, "Active alerts") == str(len(alerts))
    assert not at.error


def test_switching_metric_filters_and_server_sends_no_request(
    standin: StandinService, app_env: Callable[[str], None], sent: RequestTally
) -> None:
    app_env(standin.url)
    at = _run_app()
    after_load_client, after_load_server = sent.total, standin.total
    assert after_load_client == after_load_server == 4
    _switch_every_metric_and_tab_control(at)
    assert sent.total == after_load_client  # counted in this process: the app sent nothing
    assert standin.total == after_load_server  # counted by the server: it received nothing


def test_riskiest_page_and_search_box(standin: StandinService, app_env: Callable[[str], None],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_DASHBOARD_MAX_SERVERS", "4")
    app_env(standin.url)
    at = _run_app()
    order = [p["server_name"] for p in httpx.get(f"{standin.url}/predictions").json()["predictions"]]
    assert at.session_state[HEATMAP_KEY]["servers"] == order[:4]  # the riskiest four, not every row
    assert any(f"showing the 4 riskiest of {len(order)} servers" in c.value for c in at.caption)
    target, before = order[-1], standin.counts["GET /predictions"]
    at.text_input(key="fleetcast_search").set_value(target).run()  # a search fetches once, by prefix
    assert not at.exception and standin.counts["GET /predictions"] == before + 1
    assert at.session_state[HEATMAP_KEY]["servers"] == [s for s in order if s.startswith(target)][:4]


def test_refresh_now_and_the_refresh_timer_fetch_exactly_once_each(
    standin: StandinService, app_env: Callable[[str], None]
) -> None:
    app_env(standin.url)
    at = _run_app()
    at.button(key="refresh_now").click().run()
    assert standin.total == 8
    assert all(n == 2 for n in standin.counts.values())
    # the data has become older than FLEETCAST_DASHBOARD_REFRESH_SECONDS: the next run fetches once, then settles
    at.session_state[FETCHED_AT_KEY] = at.session_state[FETCHED_AT_KEY] - 7200
    at.run()
    assert standin.total == 12
    at.selectbox(key="heatmap_metric").set_value("disk_percent").run()
    assert standin.total == 12


def test_unreachable_service_shows_an_error_and_retry_recovers(
    app_env: Callable[[str], None], sent: RequestTally, make_standin: Callable[..., StandinService]
) -> None:
    port = free_port()
    app_env(f"http://127.0.0.1:{port}")
    at = _run_app()
    assert not at.exception
    assert len(at.error) == 1
    assert "Cannot reach the fleetcast service" in at.error[0].value
    assert f"127.0.0.1:{port}" in at.error[0].value
    assert HEATMAP_KEY not in at.session_state
    before = sent.total
    at.run()  # a rerun while it is down does not hammer the service: the failed refresh is kept
    assert sent.total == before
    with make_standin(n_servers=5, port=port) as service:
        at.button(key="retry").click().run()
        assert not at.exception and not at.error
        assert service.total == 4
        assert len(at.session_state[HEATMAP_KEY]["servers"]) == 5


def test_demo_controls_set_a_scenario_with_one_post(
    standin: StandinService, app_env: Callable[[str], None]
) -> None:
    app_env(standin.url)
    at = _run_app()
    target = at.session_state[HEATMAP_KEY]["servers"][0]
    at.selectbox(key="demo_scenario").set_value("memory_leak")
    at.number_input(key="demo_hours").set_value(6)
    at.multiselect(key="demo_servers").set_value([target])
    next(b for b in at.button if b.label == "Set scenario").click().run()
    assert not at.exception
    assert standin.counts["POST /scenario/set"] == 1
    assert standin.counts["GET /scenario"] == 2  # refetched once to show the new scenario
    scenario = httpx.get(f"{standin.url}/scenario").json()  # what the service now runs
    assert scenario["scenario"] == "memory_leak"
    assert scenario["servers"] == [target] and scenario["duration_hours"] == 6
    assert any("memory_leak" in s.value for s in at.success)
    assert any("Active scenario: **memory_leak**" in i.value for i in at.info)


def test_detail_charts_draw_the_thresholds_of_the_service_not_a_local_copy(
    app_env: Callable[[str], None], make_standin: Callable[..., StandinService], tmp_path: Path
) -> None:
    rules = tmp_path / "alerts.yaml"  # a service started with other alert rules than models/alerts.yaml
    rules.write_text("rules:\n"
                     "  - {alert_type: cpu_spike_predicted, metric: cpu_percent, warning: 41.0, critical: 42.0}\n")
    with make_standin(n_servers=3, env={"FLEETCAST_ALERTS_FILE": str(rules)}) as service:
        app_env(service.url)
        at = _run_app()
    specs = {spec["title"]["text"]: spec for spec in
             (json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")) if "title" in spec}
    lines = [layer for layer in specs[metric_label("cpu_percent")]["layer"] if layer["mark"]["type"] == "rule"
             and "threshold" in str(layer["encoding"])]
    assert [v["threshold"] for v in lines[0]["data"]["values"]] == [41.0, 42.0]
    memory = specs[metric_label("memory_percent")]["layer"]  # no memory rule in that file: no lines
    assert not [layer for layer in memory if "threshold" in str(layer["encoding"])]


def test_demo_controls_explain_when_the_demo_fleet_is_off(
    app_env: Callable[[str], None], make_standin: Callable[..., StandinService]
) -> None:
    with make_standin(n_servers=3, demo_fleet=False) as service:
        app_env(service.url)
        at = _run_app()
        assert any("demo fleet is off" in i.value for i in at.info)
        assert not [b for b in at.button if b.label == "Set scenario"]


def test_partial_failure_warns_and_renders_the_rest(
    app_env: Callable[[str], None], make_standin: Callable[..., StandinService]
) -> None:
    with make_standin(n_servers=4) as service:
        service.garble("/alerts")  # /alerts breaks; the rest must still show
        app_env(service.url)
        at = _run_app()
        assert any("alerts" in w.value for w in at.warning)
        assert len(at.session_state[HEATMAP_KEY]["servers"]) == 4


# --- the real service -------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_service_page_and_heatmap_rows(
    live_service: Any, app_env: Callable[[str], None], sent: RequestTally
) -> None:
    app_env(live_service.url)
    sent.reset()
    at = _run_app()
    assert sent.by_route() == GETS_PER_REFRESH
    assert not at.error
    expected = [p["server_name"] for p in httpx.get(f"{live_service.url}/predictions").json()["predictions"]]
    heatmap = at.session_state[HEATMAP_KEY]
    assert heatmap["servers"] == expected
    assert live_service.fed_server in heatmap["servers"]  # the server fed through POST /feed/data has its row
    assert heatmap["shape"] == (len(expected), 16)
    health = httpx.get(f"{live_service.url}/health").json()
    assert _metric(at, "Servers tracked") == str(health["servers_tracked"])
    options = at.selectbox(key="detail_server").options  # shown as "name (risk)"
    assert [o.split(" ")[0] for o in options] == expected


@pytest.mark.slow
def test_real_service_metric_switch_sends_no_request(
    live_service: Any, app_env: Callable[[str], None], sent: RequestTally
) -> None:
    app_env(live_service.url)
    at = _run_app()
    served = httpx.get(f"{live_service.url}/health").json()["predictions_served"]
    before = sent.total
    _switch_every_metric_and_tab_control(at)
    assert sent.total == before
    assert httpx.get(f"{live_service.url}/health").json()["predictions_served"] == served


@pytest.mark.slow
def test_real_service_scenario_from_the_dashboard(
    live_service: Any, app_env: Callable[[str], None]
) -> None:
    app_env(live_service.url)
    at = _run_app()
    demo_server = next(s for s in at.session_state[HEATMAP_KEY]["servers"] if s != live_service.fed_server)
    at.selectbox(key="demo_scenario").set_value("cpu_spike")
    at.number_input(key="demo_hours").set_value(2)
    at.multiselect(key="demo_servers").set_value([demo_server])
    next(b for b in at.button if b.label == "Set scenario").click().run()
    assert not at.exception and not at.error
    scenario = httpx.get(f"{live_service.url}/scenario").json()
    assert scenario["scenario"] == "cpu_spike" and scenario["servers"] == [demo_server]
    assert any("Active scenario: **cpu_spike**" in i.value for i in at.info)
    # leave the shared service as the other tests expect it
    httpx.post(f"{live_service.url}/scenario/set", json={"scenario": "baseline"}).raise_for_status()


def test_alert_filters_narrow_the_table(standin: StandinService, app_env: Callable[[str], None]) -> None:
    app_env(standin.url)
    at = _run_app()
    alerts = httpx.get(f"{standin.url}/alerts").json()["alerts"]
    total = len(alerts)
    assert any(c.value.startswith(f"{total} of {total} active alerts") for c in at.caption)
    at.multiselect(key="alerts_severity").set_value(["critical"]).run()
    critical = [a for a in alerts if a["severity"] == "critical"]
    assert any(c.value.startswith(f"{len(critical)} of {total} active alerts") for c in at.caption)
    profile = critical[0]["profile"] if critical else "database"
    at.multiselect(key="alerts_profile").set_value([profile]).run()
    both = [a for a in critical if a["profile"] == profile]
    assert any(c.value.startswith(f"{len(both)} of {total} active alerts") for c in at.caption)
    shown = [df.value for df in at.dataframe if "message" in df.value.columns and len(df.value) == len(both)]
    assert shown and set(shown[-1]["server_name"]) == {a["server_name"] for a in both}


def test_empty_fleet_says_how_to_get_data(
    app_env: Callable[[str], None], make_standin: Callable[..., StandinService]
) -> None:
    with make_standin(n_servers=0) as service:
        app_env(service.url)
        at = _run_app()
        assert any("no predictions yet" in i.value for i in at.info)
        assert at.session_state[HEATMAP_KEY]["servers"] == []
        assert _metric(at, "Servers tracked") == "0"
