"""Durable feed store: every acknowledged record, on disk, keyed by (server_name, timestamp).

SQLAlchemy Core so the same code runs on PostgreSQL later (``FLEETCAST_STORE_URL``); the default is
SQLite in WAL mode under the data dir (``models.config.store_url()``).

Durability: SQLite runs with ``journal_mode=WAL`` and ``synchronous=FULL``. With WAL, ``NORMAL``
already survives a killed process (kill -9) but may lose the last transactions on a power cut or OS
crash; ``FULL`` fsyncs the WAL on every commit, so a record answered with 200 survives both. Ingest
commits once per request (one fsync per batch, not per record), so the cost stays small.

Upsert and merge: records may carry any subset of the four metrics (collectd, Prometheus and OTLP
deliver them separately). A second record for the same (server_name, timestamp) fills in the metrics it
carries and keeps the others (SQL ``COALESCE``), so parts arriving in any order give the same row, and a
shipper's retry never duplicates data (the same value is written again). Records at different times in
one 5-minute bucket stay separate rows and are averaged per metric when the history is read, which does
not depend on their order either. A metric no record carried stays NULL: it is never made up.

Each write also records where each server's profile came from (``server_profiles``: ``record``,
``label:...``, ``mapping:<pattern>``, ``default``; serving/profiles.py), shown by ``GET /predictions``.

Reading history (:func:`align_history`): the one alignment policy of :mod:`models.grid`, the same
training and the MLflow model use: records at irregular times are put on the 5-minute grid (mean per
bucket); gaps of at most ``max_gap_steps`` are filled by linear interpolation; a longer gap ends the
usable history: only the contiguous tail after the last long gap is returned, nothing is invented
across it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models import config, grid, schema

logger = logging.getLogger(__name__)

MAX_GAP_STEPS = grid.MAX_GAP_STEPS  # gaps up to 15 minutes are interpolated; longer ones cut the history
_MAX_IN = 900  # servers named in one SQL IN (...) list

metadata = sa.MetaData()
records_table = sa.Table(
    "records",
    metadata,
    sa.Column(schema.SERVER, sa.String(128), primary_key=True),
    sa.Column(schema.TIMESTAMP, sa.DateTime(), primary_key=True),
    *(sa.Column(m, sa.Float(), nullable=True) for m in schema.METRICS),  # NULL: not reported (partial record)
    sa.Column(schema.STATUS, sa.String(16), nullable=False),
    sa.Column(schema.PROFILE, sa.String(32), nullable=False),
    sa.Column("received_at", sa.DateTime(), nullable=False, index=True),
)

profiles_table = sa.Table(
    "server_profiles",
    metadata,
    sa.Column(schema.SERVER, sa.String(128), primary_key=True),
    sa.Column("profile_source", sa.String(160), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)
PROFILE_SOURCE = "profile_source"


def _allow_partial_rows(engine: Engine) -> None:
    """Stores made before partial records had NOT NULL metric columns: drop that constraint in place
    (PostgreSQL: ALTER COLUMN; SQLite: rebuild the table in one transaction, rows kept)."""
    columns = {c["name"]: c for c in sa.inspect(engine).get_columns("records")}
    if all(columns[m]["nullable"] for m in schema.METRICS if m in columns):
        return
    logger.info("feed store: allowing partial records (metric columns become nullable)")
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            for m in schema.METRICS:
                conn.execute(sa.text(f'ALTER TABLE records ALTER COLUMN "{m}" DROP NOT NULL'))
            return
        conn.execute(sa.text("ALTER TABLE records RENAME TO records_before_partial"))
        conn.execute(sa.text("DROP INDEX IF EXISTS ix_records_received_at"))
        records_table.create(conn)
        names = ", ".join(f'"{c.name}"' for c in records_table.columns)
        conn.execute(sa.text(f"INSERT INTO records ({names}) SELECT {names} FROM records_before_partial"))
        conn.execute(sa.text("DROP TABLE records_before_partial"))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _utcnow() -> datetime:
    return pd.Timestamp.now(tz="UTC").tz_localize(None).to_pydatetime()


class FeedStore:
    """The feed's records in one table; safe to share between threads of one process."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or config.store_url()
        if self.url.startswith("sqlite:///"):
            from pathlib import Path

            db_path = self.url.removeprefix("sqlite:///")
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = sa.create_engine(self.url, future=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        _allow_partial_rows(self.engine)
        self._write_lock = threading.Lock()  # SQLite has one writer; serialise in-process writers

    # --- writing -------------------------------------------------------------------------------------
    def _insert(self) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(records_table)
        # a metric the new record does not carry (NULL) keeps the stored value: parts merge in any order
        updated = {c.name: (sa.func.coalesce(stmt.excluded[c.name], records_table.c[c.name])
                            if c.name in schema.METRICS else stmt.excluded[c.name])
                   for c in records_table.columns if not c.primary_key}
        return stmt.on_conflict_do_update(index_elements=[schema.SERVER, schema.TIMESTAMP], set_=updated)

    def _insert_source(self) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(profiles_table)
        return stmt.on_conflict_do_update(index_elements=[schema.SERVER], set_={
            PROFILE_SOURCE: stmt.excluded[PROFILE_SOURCE], "updated_at": stmt.excluded["updated_at"]})

    def upsert(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert or merge ``rows`` (dicts with the contract's fields; a metric may be None: not carried)
        in one committed transaction. A row's optional ``profile_source`` is recorded per server."""
        if not rows:
            return 0
        unique = merge_rows(rows)
        sources = {row[schema.SERVER]: str(row[PROFILE_SOURCE]) for row in rows if row.get(PROFILE_SOURCE)}
        with self._write_lock, self.engine.begin() as conn:
            # stamped under the lock: received_at grows in commit order, so a reader's watermark
            # (max received_at) never skips a batch committed later with an earlier stamp
            received = _utcnow()
            for values in unique.values():
                values["received_at"] = received
            conn.execute(self._insert(), list(unique.values()))
            if sources:
                conn.execute(self._insert_source(), [{schema.SERVER: name, PROFILE_SOURCE: source,
                                                      "updated_at": received} for name, source in sources.items()])
        return len(unique)

    def profile_sources(self, servers: Iterable[str] | None = None) -> dict[str, str]:
        """Where each server's profile came from (the latest write that said), by server name."""
        query = sa.select(profiles_table.c[schema.SERVER], profiles_table.c[PROFILE_SOURCE])
        names = None if servers is None else set(servers)
        if names is not None and len(names) <= _MAX_IN:
            query = query.where(profiles_table.c[schema.SERVER].in_(sorted(names)))
        with self.engine.connect() as conn:
            found = {r[0]: r[1] for r in conn.execute(query)}
        return found if names is None else {k: v for k, v in found.items() if k in names}

    # --- reading -------------------------------------------------------------------------------------
    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(records_table)).scalar_one())

    def servers(self) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(records_table.c[schema.SERVER]).distinct())
            return sorted(r[0] for r in rows)

    def last_timestamp(self, servers: list[str] | None = None) -> datetime | None:
        """The latest record timestamp (UTC, naive), over ``servers`` or all of them; None when empty."""
        query = sa.select(sa.func.max(records_table.c[schema.TIMESTAMP]))
        if servers is not None:
            query = query.where(records_table.c[schema.SERVER].in_(servers))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def last_received(self) -> datetime | None:
        """Wall time (UTC) of the latest acknowledged write."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(records_table.c.received_at))).scalar_one()

    def servers_received_since(self, since: datetime | None) -> list[str]:
        """Servers with a record written after ``since`` (all servers when None)."""
        query = sa.select(records_table.c[schema.SERVER]).distinct()
        if since is not None:
            query = query.where(records_table.c.received_at > since)
        with self.engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(query))

    def raw_window(self, servers: Iterable[str] | None = None,
                   steps: int = schema.ENCODER_STEPS) -> pd.DataFrame:
        """Raw records of the last ``steps`` 5-minute steps (+ the gap margin) of each server.

        Each server's window ends at its own latest record. Servers whose latest records lie close
        together are read in one range query (:func:`window_groups`), so one server whose newest record
        is old (a host retired months ago) costs one small query of its own instead of pulling every
        server's read back to its time.
        """
        names = None if servers is None else sorted(set(servers))
        if names is not None and not names:
            return schema.empty_frame()
        # a long IN list hits the database's bound-parameter limit: filter those in pandas instead
        sql_names = names if names is not None and len(names) <= _MAX_IN else None
        cols = [records_table.c[c] for c in schema.COLUMNS]
        ts_col, server_col = records_table.c[schema.TIMESTAMP], records_table.c[schema.SERVER]
        # a long list is read as the name range it spans (the primary key's order), then filtered in pandas
        span = (server_col.between(names[0], names[-1]) if names is not None and sql_names is None else None)
        last_q = sa.select(server_col, sa.func.max(ts_col).label("last"))
        if sql_names is not None:
            last_q = last_q.where(server_col.in_(sql_names))
        elif span is not None:
            last_q = last_q.where(span)
        last_q = last_q.group_by(server_col)
        window = pd.Timedelta(minutes=schema.STEP_MINUTES * (steps + MAX_GAP_STEPS + 1))
        frames = []
        with self.engine.connect() as conn:
            lasts = pd.DataFrame(conn.execute(last_q).all(), columns=[schema.SERVER, "last"])
            if names is not None:
                lasts = lasts[lasts[schema.SERVER].isin(names)]
            if lasts.empty:
                return schema.empty_frame()
            lasts["last"] = pd.to_datetime(lasts["last"])
            for group, first, newest in window_groups(lasts, window):
                query = sa.select(*cols).where(ts_col > (first - window).to_pydatetime(),
                                               ts_col <= newest.to_pydatetime())
                whole = names is None and len(group) == len(lasts)
                if not whole and len(group) <= _MAX_IN:
                    query = query.where(server_col.in_(group))
                elif not whole:
                    query = query.where(server_col.between(min(group), max(group)))
                part = _fetch_frame(conn, query)
                frames.append(part if whole else part[part[schema.SERVER].isin(group)])
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].copy()
        frame[schema.TIMESTAMP] = _timestamps(frame[schema.TIMESTAMP])
        frame[list(schema.METRICS)] = frame[list(schema.METRICS)].astype("float64")  # NULL (not reported) -> NaN
        per_server_cutoff = frame[schema.SERVER].map(lasts.set_index(schema.SERVER)["last"]) - window
        return frame[frame[schema.TIMESTAMP] > per_server_cutoff].reset_index(drop=True)

    def history(self, servers: Iterable[str] | None = None, steps: int = schema.ENCODER_STEPS,
                max_gap_steps: int = MAX_GAP_STEPS) -> pd.DataFrame:
        """Model-ready history: last <= ``steps`` aligned, gap-filled steps per server (see module doc)."""
        return align_history(self.raw_window(servers, steps), steps=steps, max_gap_steps=max_gap_steps)

    def server_days(self) -> int:
        """Distinct (server, UTC day) pairs held: how much feed there is to learn from (the sensor's count)."""
        day = sa.func.date(records_table.c[schema.TIMESTAMP])
        query = sa.select(sa.func.count()).select_from(
            sa.select(records_table.c[schema.SERVER], day).distinct().subquery())
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def export_frame(self) -> pd.DataFrame:
        """The whole store as a long-format DataFrame with the contract's columns (for retraining)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*(records_table.c[c] for c in schema.COLUMNS))
                                .order_by(records_table.c[schema.SERVER], records_table.c[schema.TIMESTAMP]))
            frame = pd.DataFrame(rows.all(), columns=list(schema.COLUMNS))
        if frame.empty:
            return schema.empty_frame()
        frame[schema.TIMESTAMP] = pd.to_datetime(frame[schema.TIMESTAMP]).astype("datetime64[ns]")
        for metric in schema.METRICS:
            frame[metric] = frame[metric].astype("float64")
        return frame

    def dispose(self) -> None:
        self.engine.dispose()


def _fetch_frame(conn: sa.Connection, query: sa.Select) -> pd.DataFrame:
    """``query``'s rows (the contract's columns) as a frame, straight from the DB-API cursor: no SQLAlchemy
    row objects and no per-value type processing (at 100,000 servers x 24 h those cost more than the read);
    the timestamps stay as the driver returns them (SQLite: text) until :func:`_timestamps`."""
    result = conn.execute(query)
    try:
        rows = result.cursor.fetchall() if result.cursor is not None else []
    finally:
        result.close()
    return pd.DataFrame.from_records(rows, columns=list(schema.COLUMNS), nrows=len(rows))


def _timestamps(values: pd.Series) -> pd.Series:
    """Stored timestamps (SQLite's ``YYYY-MM-DD HH:MM:SS[.ffffff]`` text or datetimes) as datetime64[ns]."""
    if values.dtype == object and len(values) and isinstance(values.iloc[0], str):
        return pd.to_datetime(values, format="ISO8601").astype("datetime64[ns]")
    return pd.to_datetime(values).astype("datetime64[ns]")


def merge_rows(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, datetime], dict[str, Any]]:
    """Rows for the same (server, timestamp) merged into one: each metric from the last row that carries
    it (None: not carried), status and profile from the last row, as a later request would."""
    unique: dict[tuple[str, datetime], dict[str, Any]] = {}
    for row in rows:
        key = (row[schema.SERVER], row[schema.TIMESTAMP])
        values = {c: row.get(c) for c in schema.COLUMNS}
        before = unique.get(key)
        if before is not None:
            for m in schema.METRICS:
                if values[m] is None:
                    values[m] = before[m]
        unique[key] = values
    return unique


def window_groups(lasts: pd.DataFrame, window: pd.Timedelta) -> list[tuple[list[str], pd.Timestamp, pd.Timestamp]]:
    """Servers grouped so that one range query per group reads each one's window and little else.

    ``lasts``: ``server_name`` and ``last`` (each server's latest timestamp). Sorted by ``last``, a group
    spans at most ``window``; returns ``(servers, earliest last, latest last)`` per group, so the group's
    query reads ``(earliest - window, latest]``: at most two windows of any of its servers. A live fleet
    is one group (one query, as before); a server silent for months is a group of its own.
    """
    ordered = lasts.sort_values("last", kind="stable")
    groups: list[tuple[list[str], pd.Timestamp, pd.Timestamp]] = []
    current: list[str] = []
    first = newest = None
    for name, last in zip(ordered[schema.SERVER], ordered["last"], strict=True):
        if current and last - first > window:
            groups.append((current, first, newest))
            current = []
        if not current:
            first = last
        current.append(name)
        newest = last
    if current:
        groups.append((current, first, newest))
    return groups


def align_history(raw: pd.DataFrame, steps: int = schema.ENCODER_STEPS,
                  max_gap_steps: int = MAX_GAP_STEPS) -> pd.DataFrame:
    """Raw records (any times) -> last <= ``steps`` contiguous 5-minute steps per server.

    The one alignment policy, :func:`models.grid.align` (buckets averaged, gaps of at most
    ``max_gap_steps`` interpolated, the history starts after the last longer gap), on each server's
    last ``steps`` grid steps.
    """
    return grid.align(raw, max_gap_steps=max_gap_steps, steps=steps, segments="last")
