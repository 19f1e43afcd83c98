"""Per-session refresh state: which snapshot this browser tab shows, and when to fetch the next one.

The data of one refresh is fetched once and kept in ``st.session_state`` under the refresh tick it
belongs to. Widgets, filters and tabs rerun the script but find the snapshot for the current tick and
send no request. The tick moves on only when the auto-refresh timer fires (after
FLEETCAST_DASHBOARD_REFRESH_SECONDS), or when the user presses *Refresh now* / *Retry*, or after a scenario change.
"""

from __future__ import annotations

import time

import streamlit as st

from dashboard.client import FleetcastClient, Snapshot
from dashboard.settings import get_settings

TICK_KEY = "fleetcast_tick"
SNAPSHOT_KEY = "fleetcast_snapshot"
FETCHED_AT_KEY = "fleetcast_fetched_monotonic"
HEATMAP_KEY = "fleetcast_heatmap"  # what the heatmap shows: metric, servers (row order), columns, shape
FLASH_KEY = "fleetcast_flash"
SEARCH_KEY = "fleetcast_search"  # the search box: a server-name prefix


@st.cache_resource(show_spinner=False, max_entries=8)
def get_client(base_url: str) -> FleetcastClient:
    """One HTTP client (and connection pool) per service URL, shared by all sessions."""
    return FleetcastClient(base_url)


def request_refresh() -> None:
    """Widget callback: move to the next refresh tick, so the next run fetches."""
    st.session_state[TICK_KEY] = st.session_state.get(TICK_KEY, 0) + 1


def current_snapshot() -> Snapshot:
    """The snapshot of the current tick, fetched now if this tick has none yet."""
    base_url = get_settings().api_url
    tick = st.session_state.setdefault(TICK_KEY, 0)
    search = str(st.session_state.get(SEARCH_KEY) or "").strip()
    key = (base_url, tick, search)  # a new search fetches; widgets and tabs do not
    cached = st.session_state.get(SNAPSHOT_KEY)
    if cached is not None and cached[0] == key:
        return cached[1]
    with st.spinner(f"Fetching fleet data from {base_url} …"):
        snap = get_client(base_url).fetch_snapshot(search or None)
    st.session_state[SNAPSHOT_KEY] = (key, snap)
    st.session_state[FETCHED_AT_KEY] = time.monotonic()
    return snap


def seconds_since_fetch() -> float:
    return time.monotonic() - st.session_state.get(FETCHED_AT_KEY, time.monotonic())


def make_auto_refresh(period_s: float):  # noqa: ANN201 - returns a Streamlit fragment
    """A fragment that Streamlit reruns every ``period_s``; once the shown data is that old, it moves
    to the next tick and reruns the whole app (which then fetches once)."""

    @st.fragment(run_every=period_s)
    def auto_refresh() -> None:
        if seconds_since_fetch() >= period_s - 0.5:
            request_refresh()
            st.rerun(scope="app")

    return auto_refresh
