"""fleetcast dashboard: ``streamlit run dashboard/app.py`` (port 8501).

Reads only from the service's HTTP API at FLEETCAST_API_URL (default http://localhost:8000), once per
refresh (FLEETCAST_DASHBOARD_REFRESH_SECONDS, default 30 s); see docs/dashboard.md.
"""

from __future__ import annotations

import streamlit as st

from dashboard import views
from dashboard.session import SEARCH_KEY, current_snapshot, make_auto_refresh, request_refresh
from dashboard.settings import get_settings


def main() -> None:
    st.set_page_config(page_title="fleetcast", page_icon="📈", layout="wide")
    render()


def render() -> None:
    settings = get_settings()
    period = settings.refresh_seconds

    title, search, button = st.columns([4, 2, 1], vertical_alignment="bottom")
    title.title("fleetcast", anchor=False)
    search.text_input("Find servers", key=SEARCH_KEY, placeholder="name prefix, e.g. db-")
    button.button("Refresh now", on_click=request_refresh, key="refresh_now")
    snap = current_snapshot()
    shown = len(snap.fleet)
    scope = f"servers starting with {snap.search!r}" if snap.search else "servers"
    st.caption(
        f"Service {snap.base_url} · data fetched {snap.fetched_at:%H:%M:%S} UTC in {snap.elapsed_s:.2f} s"
        f" · auto-refresh every {period:g} s"
        + (f" · showing the {shown} riskiest of {snap.servers_matching} {scope}"
           if snap.servers_matching > shown else "")
    )
    make_auto_refresh(period)()

    if snap.unreachable:
        views.render_unreachable(snap)
        return
    views.render_partial_errors(snap)
    views.render_overview(snap)

    heatmap, detail, alerts, demo = st.tabs(["Fleet heatmap", "Server detail", "Alerts", "Demo controls"])
    with heatmap:
        views.render_heatmap(snap)
    with detail:
        views.render_server_detail(snap)
    with alerts:
        views.render_alerts(snap)
    with demo:
        views.render_demo(snap)


main()
