"""Feed store: upsert, durability settings, export, and history alignment / gap handling."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from models import schema
from serving.store import FeedStore, align_history

T0 = datetime(2025, 10, 12, 0, 0)


def row(server: str, ts: datetime, cpu: float = 10.0, **kw: object) -> dict[str, object]:
    base = {"timestamp": ts, "server_name": server, "cpu_percent": cpu, "memory_percent": 50.0,
            "disk_percent": 40.0, "load_average": 1.0, "status": "healthy", "profile": "web_api"}
    base.update(kw)
    return base


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def test_upsert_overwrites_same_server_and_timestamp(store: FeedStore) -> None:
    store.upsert([row("a", T0, 10.0), row("a", T0 + timedelta(minutes=5), 11.0)])
    store.upsert([row("a", T0, 99.0)])  # a retry with a corrected value
    out = store.export_frame()
    assert len(out) == 2
    assert out.loc[out["timestamp"] == pd.Timestamp(T0), "cpu_percent"].item() == 99.0


def test_sqlite_runs_in_wal_mode_with_full_sync(store: FeedStore) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one().lower() == "wal"
        assert conn.execute(sa.text("PRAGMA synchronous")).scalar_one() == 2  # FULL


def test_records_survive_reopening_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'feed.db'}"
    first = FeedStore(url)
    first.upsert([row("a", T0 + timedelta(minutes=5 * i)) for i in range(10)])
    first.dispose()
    again = FeedStore(url)
    assert again.count() == 10
    assert again.servers() == ["a"]
    again.dispose()


def test_export_frame_has_contract_columns_and_dtypes(store: FeedStore) -> None:
    store.upsert([row("b", T0), row("a", T0)])
    out = store.export_frame()
    assert list(out.columns) == list(schema.COLUMNS)
    assert str(out["timestamp"].dtype) == "datetime64[ns]"
    assert list(out["server_name"]) == ["a", "b"]
    assert all(str(out[m].dtype) == "float64" for m in schema.METRICS)


def test_servers_received_since_only_lists_new_writes(store: FeedStore) -> None:
    store.upsert([row("a", T0)])
    mark = store.last_received()
    store.upsert([row("b", T0)])
    assert store.servers_received_since(None) == ["a", "b"]
    assert store.servers_received_since(mark) == ["b"]


def test_irregular_times_are_averaged_per_five_minute_bucket() -> None:
    raw = frame([row("a", T0 + timedelta(minutes=1), 10.0), row("a", T0 + timedelta(minutes=3), 20.0),
                 row("a", T0 + timedelta(minutes=6), 30.0)])
    out = align_history(raw)
    assert list(out["timestamp"]) == [pd.Timestamp(T0), pd.Timestamp(T0 + timedelta(minutes=5))]
    assert out["cpu_percent"].tolist() == [15.0, 30.0]


def test_short_gap_is_interpolated() -> None:
    steps = [0, 1, 2, 5, 6]  # steps 3 and 4 missing: a gap of 2 <= 3
    raw = frame([row("a", T0 + timedelta(minutes=5 * i), float(10 * i)) for i in steps])
    out = align_history(raw)
    assert len(out) == 7
    assert np.allclose(out["cpu_percent"], [0, 10, 20, 30, 40, 50, 60])


def test_long_gap_cuts_history_to_the_tail_after_it() -> None:
    steps = [*range(0, 20), *range(30, 40)]  # 10 missing steps: more than 3
    raw = frame([row("a", T0 + timedelta(minutes=5 * i), float(i)) for i in steps])
    out = align_history(raw)
    assert len(out) == 10
    assert out["timestamp"].iloc[0] == pd.Timestamp(T0 + timedelta(minutes=150))
    assert out["cpu_percent"].tolist() == [float(i) for i in range(30, 40)]


def test_history_keeps_the_last_steps_per_server_and_each_server_ends_at_its_own_last_record() -> None:
    raw = frame([row("a", T0 + timedelta(minutes=5 * i), float(i)) for i in range(400)]
                + [row("b", T0 + timedelta(minutes=5 * i), float(i), profile="database") for i in range(50)])
    out = align_history(raw, steps=288)
    sizes = out.groupby("server_name").size()
    assert sizes["a"] == 288 and sizes["b"] == 50
    assert out[out.server_name == "a"]["cpu_percent"].iloc[-1] == 399.0
    assert out[out.server_name == "b"]["timestamp"].iloc[-1] == pd.Timestamp(T0 + timedelta(minutes=5 * 49))
    assert set(out[out.server_name == "b"]["profile"]) == {"database"}


def test_store_history_reads_only_the_window_and_aligns(store: FeedStore) -> None:
    store.upsert([row("a", T0 + timedelta(minutes=5 * i), float(i)) for i in range(300)])
    store.upsert([row("b", T0 + timedelta(minutes=5 * i + 2), float(i)) for i in range(20)])  # off-grid
    out = store.history()
    sizes = out.groupby("server_name").size()
    assert sizes["a"] == 288 and sizes["b"] == 20
    assert (out["timestamp"].dt.minute % 5 == 0).all()
    assert not out[list(schema.METRICS)].isna().any().any()


def test_history_of_more_servers_than_one_sql_in_list_holds(store: FeedStore) -> None:
    names = [f"s{i:04d}" for i in range(1200)]
    store.upsert([row(n, T0 + timedelta(minutes=5 * k)) for n in names for k in range(2)])
    store.upsert([row("other", T0)])
    out = store.history(names[:1100])
    assert sorted(out["server_name"].unique()) == names[:1100]
    assert len(out) == 2200


def test_last_timestamp_over_chosen_servers(store: FeedStore) -> None:
    assert store.last_timestamp() is None
    store.upsert([row("a", T0), row("b", T0 + timedelta(hours=2))])
    assert store.last_timestamp() == T0 + timedelta(hours=2)
    assert store.last_timestamp(["a"]) == T0
    assert store.last_timestamp(["nobody"]) is None


def test_demo_fleet_resumes_after_records_an_earlier_run_left_in_the_future(store: FeedStore) -> None:
    from serving.demo_fleet import DemoFleet

    ahead = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("5min") + pd.Timedelta(hours=6)
    store.upsert([row("web-01", ahead.to_pydatetime())])
    fleet = DemoFleet(store, servers=[("web-01", "web_api"), ("db-01", "database")], step_seconds_=3600)
    fleet.seed_history()
    fleet.step()
    history = store.export_frame()
    web = history[history["server_name"] == "web-01"]
    assert web["timestamp"].max() == ahead + pd.Timedelta(minutes=5)  # the new run continues after it
    # the stale record was overwritten by the new fleet's own history, which ends where it stood
    assert web.loc[web["timestamp"] == ahead, "cpu_percent"].item() != 10.0


def test_long_server_lists_read_as_a_name_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the IN-list limit the window is read over the list's name range (the refresh's chunks are
    ranges), and exactly the listed servers come back, whole."""
    import serving.store as store_module

    store = FeedStore(f"sqlite:///{tmp_path / 'feed.db'}")
    start = pd.Timestamp("2026-01-01")
    rows = [{"server_name": f"s{i}", "timestamp": (start + pd.Timedelta(minutes=5 * k)).to_pydatetime(),
             "cpu_percent": float(i), "memory_percent": 1.0, "disk_percent": 1.0, "load_average": 1.0,
             "status": "ok", "profile": "generic"} for i in range(6) for k in range(20)]
    store.upsert(rows)
    whole = store.raw_window(["s1", "s2", "s4"])
    monkeypatch.setattr(store_module, "_MAX_IN", 2)
    ranged = store.raw_window(["s1", "s2", "s4"])
    assert sorted(ranged["server_name"].unique()) == ["s1", "s2", "s4"]
    pd.testing.assert_frame_equal(ranged.sort_values(["server_name", "timestamp"]).reset_index(drop=True),
                                  whole.sort_values(["server_name", "timestamp"]).reset_index(drop=True))
    assert len(ranged) == 60
    store.dispose()
