"""The dashboard's sections. Each takes the refresh's :class:`~dashboard.client.Snapshot` and draws it;
none of them sends a request except the demo scenario form (a POST the user asks for).

Sections whose widgets only change what is drawn (heatmap metric, server pick, alert filters) are
Streamlit fragments, so using them reruns that section alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import streamlit as st

from dashboard import charts
from dashboard.client import ServiceError, Snapshot
from dashboard.data import (
    ALERT_COLUMNS,
    RISK_LEVELS,
    SEVERITIES,
    alerts_frame,
    filter_alerts,
    metric_label,
    severity_counts,
    thresholds_of,
)
from dashboard.session import FLASH_KEY, HEATMAP_KEY, get_client, request_refresh
from models.schema import METRICS, PROFILES, to_utc_naive

# coloured dots in Streamlit markdown: no emoji font needed (headless browsers often have none)
RISK_ICONS: dict[str, str] = {"critical": ":red[●]", "high": ":orange[●]", "medium": ":yellow[●]", "low": ":green[●]"}


def _ago(stamp: Any) -> str:
    """'2025-10-12 21:40 UTC (3 min ago)' from an ISO string; '—' when missing or unreadable."""
    if not stamp:
        return "—"
    try:
        ts = to_utc_naive(stamp)
    except (ValueError, TypeError):
        return str(stamp)
    seconds = (datetime.now(UTC).replace(tzinfo=None) - ts).total_seconds()
    if seconds < 0:
        rel = "in the future"
    elif seconds < 90:
        rel = f"{seconds:.0f} s ago"
    elif seconds < 5400:
        rel = f"{seconds / 60:.0f} min ago"
    else:
        rel = f"{seconds / 3600:.1f} h ago"
    return f"{ts:%Y-%m-%d %H:%M} UTC ({rel})"


# --- service unreachable ----------------------------------------------------------------------------
def render_unreachable(snap: Snapshot) -> None:
    reasons = "; ".join(f"{name}: {err}" for name, err in snap.errors.items())
    st.error(
        f"**Cannot reach the fleetcast service at {snap.base_url}.** "
        "Check that it is running (`bentoml serve serving.service:…` on port 8000) and that "
        f"FLEETCAST_API_URL points at it.\n\nDetails: {reasons}",
        icon="🚫",
    )
    st.button("Retry", on_click=request_refresh, type="primary", key="retry")


def render_partial_errors(snap: Snapshot) -> None:
    if snap.errors:
        parts = ", ".join(f"`{name}` ({err})" for name, err in snap.errors.items())
        st.warning(f"Part of the fleet data could not be fetched and is left out: {parts}", icon="⚠️")


# --- overview ---------------------------------------------------------------------------------------
def render_overview(snap: Snapshot) -> None:
    health = snap.health or {}
    fleet = snap.fleet
    risk = fleet.risk_counts()
    severities = severity_counts(snap.alert_list)
    model = health.get("model") or fleet.model or {}

    if health and health.get("status") not in (None, "healthy"):
        st.warning(f"The service reports status **{health.get('status')}**.", icon="⚠️")

    cols = st.columns(5)
    cols[0].metric("Servers tracked", int(health.get("servers_tracked", len(fleet)) or len(fleet)))
    for col, level in zip(cols[1:], RISK_LEVELS, strict=True):
        col.metric(f"{RISK_ICONS[level]} {level} risk", risk[level])

    cols = st.columns(5)
    cols[0].metric("Active alerts", len(snap.alert_list))
    for col, severity in zip(cols[1:], SEVERITIES, strict=True):
        col.metric(f"{RISK_ICONS[severity]} {severity} alerts", severities[severity])

    version = model.get("version")
    name = model.get("name") or "model"
    st.caption(
        f"**Model:** {name} version {version if version is not None else '?'}"
        f"{' · source ' + str(model['source']) if model.get('source') else ''}"
        f" · **last prediction:** {_ago(health.get('last_prediction') or fleet.timestamp)}"
        f" · **service:** {health.get('status', 'unknown')}, up {float(health.get('uptime_seconds') or 0) / 3600:.1f} h"
        f", {health.get('records_stored', '?')} records stored, last feed {_ago(health.get('last_feed_time'))}"
    )


# --- heatmap ----------------------------------------------------------------------------------------
@st.fragment
def render_heatmap(snap: Snapshot) -> None:
    fleet = snap.fleet
    left, right = st.columns([2, 3], vertical_alignment="bottom")
    metric = left.selectbox("Metric", METRICS, format_func=metric_label, key="heatmap_metric")
    show_actual = right.toggle(
        "Show the last 8 h of actual values", key="heatmap_actual", disabled=not fleet.has_history
    )
    if not len(fleet):
        st.info("The service has no predictions yet: feed it data (POST /feed/data) or turn on its demo fleet.")
        st.session_state[HEATMAP_KEY] = {"metric": metric, "servers": [], "columns": [], "shape": (0, 0)}
        return
    matrix = fleet.heatmap(metric, include_actual=bool(show_actual))
    st.session_state[HEATMAP_KEY] = {
        "metric": metric,
        "servers": list(matrix.servers),
        "columns": list(matrix.columns),
        "shape": matrix.shape,
    }
    past = ", after the actual peak of each half hour of the last 8 h" if show_actual else ""
    st.caption(
        f"Peak P50 {metric_label(metric)} of each half hour of the next 8 h{past}; "
        f"{len(fleet)} servers, most at risk on top. Forecast from {_ago(fleet.timestamp)}."
    )
    with st.container(key="heatmap"):  # the browser test waits for `.st-key-heatmap` to draw
        st.vega_lite_chart(
            fleet.heatmap_frame(metric, include_actual=bool(show_actual)),
            charts.heatmap_spec(matrix),
            width="stretch",
        )


# --- server detail ----------------------------------------------------------------------------------
@st.fragment
def render_server_detail(snap: Snapshot) -> None:
    fleet = snap.fleet
    if not len(fleet):
        st.info("No servers yet.")
        return
    risk_of = dict(zip(fleet.servers, fleet.risk_levels, strict=True))
    server = st.selectbox(
        "Server",
        fleet.servers,
        format_func=lambda s: f"{s} ({risk_of.get(s, '?')} risk)",
        key="detail_server",
    )
    pred = fleet.by_name(server) or {}
    current = pred.get("current") or {}
    predicted = pred.get("predicted") or {}
    st.markdown(
        f"**{server}** · profile `{pred.get('profile', '?')}` ({_profile_source(pred.get('profile_source'))})"
        f" · risk **{pred.get('risk_level', '?')}** · "
        f"confidence {float(pred.get('confidence') or 0):.0%} · "
        f"{'seen in training' if pred.get('seen_in_training') else 'not seen in training (forecast from its profile)'}"
        f" · {pred.get('history_steps', '?')} steps of history · last sample {_ago(current.get('timestamp'))}"
    )
    server_alerts = [a for a in snap.alert_list if a.get("server_name") == server]
    origin = fleet.forecast_timestamps()
    origin_ts = current.get("timestamp") or (origin[0] if origin else None)
    cols = st.columns(2)
    for i, metric in enumerate(METRICS):
        frame = fleet.detail_frame(server, metric)
        with cols[i % 2]:
            now, later = current.get(metric), predicted.get(metric)
            st.vega_lite_chart(
                frame,
                charts.detail_spec(metric, origin_ts, thresholds_of(pred, metric)),
                width="stretch",
                key=f"detail_{metric}",
            )
            if now is not None and later is not None:
                st.caption(f"now {float(now):.1f} → P50 in 8 h {float(later):.1f}")
            elif metric in (pred.get("missing_metrics") or {}):
                st.caption(f"not reported by {server}: no forecast and no alert for it")
    if server_alerts:
        st.markdown(f"**Alerts on {server}**")
        _alerts_table(alerts_frame(server_alerts), key="detail_alerts", drop=("server_name", "profile"))


def _profile_source(source: str | None) -> str:
    """Where the service took a server's profile from, in words (docs/api.md, "Profiles")."""
    if not source or source == "default":
        return "default: no profile sent, no mapping matched"
    kind, _, detail = source.partition(":")
    return {"record": "sent with its records", "label": f"label `{detail}`", "attribute": f"attribute `{detail}`",
            "mapping": f"mapping file pattern `{detail}`"}.get(kind, source)


# --- alerts -----------------------------------------------------------------------------------------
@st.fragment
def render_alerts(snap: Snapshot) -> None:
    frame = snap.alerts_table
    left, right = st.columns(2)
    severities = left.multiselect(
        "Severity", SEVERITIES, default=list(SEVERITIES), key="alerts_severity", format_func=str.title
    )
    profiles = right.multiselect("Profile", PROFILES, key="alerts_profile", placeholder="all profiles")
    shown = filter_alerts(frame, list(severities), list(profiles))
    st.caption(f"{len(shown)} of {len(frame)} active alerts, most severe and soonest first.")
    _alerts_table(shown, key="alerts_table")


def _alerts_table(frame: Any, key: str, drop: tuple[str, ...] = ()) -> None:
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        # "timestamp" (when the service last updated the alert) stays in the frame but not on screen
        column_order=[c for c in ALERT_COLUMNS if c not in drop and c != "timestamp"],
        column_config={
            "severity": st.column_config.TextColumn("severity"),
            "server_name": st.column_config.TextColumn("server"),
            "alert_type": st.column_config.TextColumn("type"),
            "hours_to_breach": st.column_config.NumberColumn("time to breach", format="%.1f h"),
            "prediction_time": st.column_config.TextColumn("breach expected (UTC)"),
            "current_value": st.column_config.NumberColumn("now", format="%.1f"),
            "predicted_value": st.column_config.NumberColumn("predicted", format="%.1f"),
            "probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0),
        },
        key=key,
    )


# --- demo controls ----------------------------------------------------------------------------------
@st.fragment
def render_demo(snap: Snapshot) -> None:
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        (st.success if flash[0] == "ok" else st.error)(flash[1])
    scenario = snap.scenario or {}
    if not snap.demo_fleet:
        st.info(
            "The service's demo fleet is off, so there is no scenario to set. Start the service with "
            "FLEETCAST_DEMO_FLEET=1 to drive a simulated fleet from here."
        )
        return
    servers = scenario.get("servers") or []
    hours = scenario.get("duration_hours")
    st.info(
        f"Active scenario: **{scenario.get('scenario', 'unknown')}** on "
        f"{', '.join(servers) if servers else 'all demo servers'}"
        f"{f' for {hours:g} h' if isinstance(hours, int | float) else ', no end set'}"
        f"; started {_ago(scenario.get('started_at'))}, expires {_ago(scenario.get('expires_at'))}."
    )
    available = list(scenario.get("available") or [])  # the service says which scenarios it knows
    if not available:
        st.warning("The service did not list its scenarios (GET /scenario has no `available`).")
        return
    with st.form("scenario_form"):
        chosen = st.selectbox("Scenario", available, key="demo_scenario")
        hours = st.number_input("Duration (hours)", min_value=1, max_value=168, value=24, key="demo_hours")
        targets = st.multiselect(
            "Target servers", snap.fleet.servers, key="demo_servers", placeholder="all demo servers"
        )
        submitted = st.form_submit_button("Set scenario", type="primary")
    if submitted:
        try:
            answer = get_client(snap.base_url).set_scenario(str(chosen), int(hours), list(targets) or None)
        except ServiceError as exc:
            st.session_state[FLASH_KEY] = ("error", f"Could not set the scenario: {exc}")
        else:
            st.session_state[FLASH_KEY] = (
                "ok",
                f"Scenario **{answer.get('scenario', chosen)}** set for {answer.get('duration_hours', hours)} h.",
            )
            request_refresh()
        st.rerun(scope="app")
