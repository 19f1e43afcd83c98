"""The service's side of the forecast guard (``models/guard.py``): which forecast each server gets.

State: the forecasts the service issued are kept in the feed store's database, table ``guard_forecasts``
(one row per server and origin: the model's P50 and the fallbacks' P50s, float32), not in the worker's
memory, so they survive a restart and any worker reads the same. A forecast is logged at most every
:data:`LOG_EVERY_STEPS` steps per server (hourly origins: 24 rows per server and day, about 4 KB each);
rows two days older than the server's own newest are deleted (servers need not share a clock).
The decisions (source per server and metric, the scores) are
recomputed from those rows when a server's origin has moved on by :data:`LOG_EVERY_STEPS` steps (and after
a restart), in the worker, from rows and the history the refresh already read.

A new server (no logged forecast yet; or, once, a server with a day of history and no score yet: one
that streamed in, whose first forecasts came from a partial history)
is backtested on its own history: the model forecasts from the
history cut ``BACKTEST_LEADS`` steps before its end (one batched call per cut, for every new server of
the refresh; ``FLEETCAST_GUARD_BACKTEST_ORIGINS`` cuts, 0: none), those forecasts and the naive ones at
the same cuts are logged as if issued then, and scored like the rest. A server with under
``MIN_SCORED_STEPS`` + 12 steps gets the model until it has a score.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from models import guard, schema
from models.tft import ServerForecast

logger = logging.getLogger(__name__)

LOG_EVERY_STEPS = 12  # one logged forecast per server and hour
KEEP = pd.Timedelta(days=2)  # a server's logged forecasts older than this (vs its newest origin) are deleted
BACKTEST_LEADS = (96, 72, 48, 24)  # cuts before the end of a new server's history, most first
_STEP = pd.Timedelta(minutes=schema.STEP_MINUTES)
_SHAPE = (len(guard.SOURCES), schema.HORIZON_STEPS, len(schema.METRICS))
_BLOB_BYTES = 4 * len(guard.SOURCES) * schema.HORIZON_STEPS * len(schema.METRICS)  # rows of another layout
# (an earlier version's, with fewer sources) are skipped: the server is scored on the new rows only

_metadata = sa.MetaData()
guard_table = sa.Table(
    "guard_forecasts",
    _metadata,
    sa.Column(schema.SERVER, sa.String(128), primary_key=True),
    sa.Column("origin", sa.DateTime(), primary_key=True),
    sa.Column("model", sa.String(256), primary_key=True),  # which model issued it (see model_key)
    sa.Column("p50", sa.LargeBinary(), nullable=False),  # float32 [sources, horizon, metrics]
)


@functools.cache
def _prometheus() -> tuple[Any, Any]:
    """The guard's series on BentoML's ``GET /metrics`` (made in the worker on first use, see runtime)."""
    from prometheus_client import Gauge

    return (Gauge("fleetcast_guard_servers", "Servers per forecast source served, per metric",
                  ["metric", "source"], multiprocess_mode="livesum"),
            Gauge("fleetcast_guard_skill", "Fleet's rolling skill: model MAE / best-naive MAE over the last 24 h "
                  "of scored forecasts (below 1: the model beats every naive baseline; NaN: nothing scored)",
                  ["metric"], multiprocess_mode="livesum"))


def model_key(info: dict[str, Any]) -> str:
    """Names the model whose forecasts a row holds (registry name, version, run, or the file served)."""
    parts = [str(info.get(k)) for k in ("name", "version", "run_id", "tag", "source") if info.get(k) is not None]
    return "|".join(parts)[:256] or "unknown"


class ForecastGuard:
    """Decides per server and metric between the model and the best naive; see the module doc."""

    def __init__(self, engine: sa.Engine, backtest_origins: int = len(BACKTEST_LEADS),
                 model_info: dict[str, Any] | None = None) -> None:
        self.engine = engine
        self.model = model_key(model_info or {})
        _metadata.create_all(engine)
        self.backtest_leads = BACKTEST_LEADS[len(BACKTEST_LEADS) - max(0, min(backtest_origins, len(BACKTEST_LEADS))):]
        self._scores: dict[str, list[guard.MetricScore]] = {}
        self._scored_at: dict[str, pd.Timestamp] = {}
        self._backtested: set[str] = set()  # servers backtested by this worker for this model
        self._bands: dict[str, dict[str, tuple[pd.Timestamp, np.ndarray]]] = {}  # server -> naive -> (origin, band)
        self._lock = threading.Lock()

    # --- refresh ---------------------------------------------------------------------------------------
    def apply(self, forecasts: dict[str, ServerForecast], history: dict[str, pd.DataFrame],
              forecaster: Any) -> tuple[dict[str, ServerForecast], dict[str, dict[str, str]]]:
        """The forecasts to serve (a naive's where it scored better) and ``{server: {metric: source}}``.

        ``history``: each forecast server's aligned history (longer than the encoder: see the engine).
        Logs this refresh's forecasts, backtests new servers, rescores servers whose origin moved on.
        """
        if not forecasts:
            return forecasts, {}
        names = list(forecasts)
        values = {n: history[n][list(schema.METRICS)].to_numpy(dtype=float) for n in names}
        logged = self._last_logged(names)
        rows: list[dict[str, Any]] = []
        points: dict[str, np.ndarray] = {}  # the fallbacks' P50s of this origin, where logged: served from too
        # a backtest for a server never logged, and once (per model and worker) for one that has a day of
        # history and still no score (it streamed in: its first forecasts came from a partial history and
        # their actuals have not arrived, e.g. a backfill posted in several requests)
        with self._lock:
            unscored = {n for n in names if n in logged and n not in self._backtested
                        and len(values[n]) >= schema.ENCODER_STEPS
                        and not any(s.best_naive for s in self._scores.get(n) or [])}
        new = [n for n in names if n not in logged or n in unscored]
        if new and self.backtest_leads:
            rows += self._backtest(new, history, values, forecaster)
            with self._lock:
                self._backtested.update(n for n in new if len(values[n]) >= schema.ENCODER_STEPS)
        for n in names:
            fc = forecasts[n]
            last = logged.get(n)
            if last is None or fc.origin - last >= LOG_EVERY_STEPS * _STEP:
                p50 = np.stack([fc.quantiles[m][:, 1] for m in schema.METRICS], axis=-1)
                rows.append(self._row(n, fc.origin, p50, values[n], points))
        self._write(rows)
        written = {r[schema.SERVER] for r in rows} | set(new)
        due = [n for n in names if n in written or n not in self._scored_at
               or forecasts[n].origin - self._scored_at[n] >= LOG_EVERY_STEPS * _STEP]
        if due:
            self._rescore(due, forecasts, history, values)
        served: dict[str, ServerForecast] = {}
        sources: dict[str, dict[str, str]] = {}
        with self._lock:
            scores = {n: self._scores.get(n) for n in names}
        for n in names:
            fc, per_metric = forecasts[n], scores[n]
            chosen = {m: (per_metric[k].source if per_metric else guard.MODEL) for k, m in enumerate(schema.METRICS)}
            naive = {m: s for m, s in chosen.items() if s != guard.MODEL}
            if naive:
                quantiles = dict(fc.quantiles)
                for name in set(naive.values()):
                    try:
                        q = self._naive(n, name, values[n], fc.origin, points.get(n))
                    except ValueError:  # history shorter than the naive needs now: keep the model
                        for m in [m for m, s in naive.items() if s == name]:
                            chosen[m] = guard.MODEL
                        continue
                    for k, m in enumerate(schema.METRICS):
                        if chosen[m] == name:
                            quantiles[m] = q[:, k, :]
                fc = replace(fc, quantiles=quantiles)
            served[n] = fc
            sources[n] = chosen
        return served, sources

    def _naive(self, server: str, name: str, values: np.ndarray, origin: pd.Timestamp,
               points: np.ndarray | None = None) -> np.ndarray:
        """The naive's quantiles; its band (the costly part) is recomputed hourly, like the scores.
        ``points``: the fallbacks' P50s from ``values`` when this refresh logged them (not computed twice)."""
        bands = self._bands.setdefault(server, {})
        cached = bands.get(name)
        if cached is None or origin - cached[0] >= LOG_EVERY_STEPS * _STEP:
            cached = bands[name] = (origin, guard.naive_band(values, name))
        p50 = None if points is None else points[guard.FALLBACKS.index(name)]
        return guard.naive_quantiles(values, name, band=cached[1], p50=p50)

    def _row(self, server: str, origin: pd.Timestamp, model_p50: np.ndarray, values: np.ndarray,
             keep: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """A ledger row: the model's P50 beside the fallbacks' from ``values`` (into ``keep[server]`` too)."""
        naive = guard.naive_points(values)
        if keep is not None:
            keep[server] = naive
        p50 = np.concatenate([model_p50[None], naive], axis=0).astype(np.float32)
        return {schema.SERVER: server, "origin": pd.Timestamp(origin).to_pydatetime(), "model": self.model,
                "p50": p50.tobytes()}

    def _backtest(self, servers: list[str], history: dict[str, pd.DataFrame], values: dict[str, np.ndarray],
                  forecaster: Any) -> list[dict[str, Any]]:
        """Forecast each new server from its history cut ``lead`` steps before the end (one call per cut)."""
        rows = []
        for lead in self.backtest_leads:
            cut = {n: len(history[n]) - lead for n in servers if len(history[n]) - lead >= guard.MIN_SCORED_STEPS}
            if not cut:
                continue
            frame = pd.concat([history[n].iloc[:c] for n, c in cut.items()], ignore_index=True)
            try:
                past = forecaster.forecast(frame)
            except Exception:  # a backtest must never cost the refresh
                logger.exception("guard backtest failed")
                return rows
            for n, fc in past.items():
                p50 = np.stack([fc.quantiles[m][:, 1] for m in schema.METRICS], axis=-1)
                rows.append(self._row(n, fc.origin, p50, values[n][: cut[n]]))
        return rows

    def _rescore(self, servers: list[str], forecasts: dict[str, ServerForecast],
                 history: dict[str, pd.DataFrame], values: dict[str, np.ndarray]) -> None:
        logged = self._read(servers, {n: forecasts[n].origin for n in servers})
        scores = {}
        for n in servers:
            found = logged.get(n)
            if not found:
                scores[n] = [guard.UNSCORED] * len(schema.METRICS)
                continue
            origins = np.array([o for o, _ in found], dtype="datetime64[ns]")
            preds = np.stack([p for _, p in found])
            times = history[n][schema.TIMESTAMP].to_numpy(dtype="datetime64[ns]")
            actual = guard.actuals_for(origins, times, values[n])
            scores[n] = guard.score(preds, actual)
        with self._lock:
            self._scores.update(scores)
            for n in servers:
                self._scored_at[n] = forecasts[n].origin

    # --- ledger ----------------------------------------------------------------------------------------
    def _last_logged(self, servers: list[str]) -> dict[str, pd.Timestamp]:
        col = guard_table.c[schema.SERVER]
        out: dict[str, pd.Timestamp] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(servers), 900):
                part = servers[i:i + 900]
                q = sa.select(col, sa.func.max(guard_table.c.origin)).where(
                    col.in_(part), guard_table.c.model == self.model).group_by(col)
                out.update({s: pd.Timestamp(o) for s, o in conn.execute(q)})
        return out

    def _read(self, servers: list[str], origins: dict[str, pd.Timestamp]) -> dict[str, list[tuple[Any, np.ndarray]]]:
        """Logged forecasts of the last 24 h of origins before each server's current one."""
        col = guard_table.c[schema.SERVER]
        since = min(origins.values()) - guard.WINDOW_STEPS * _STEP
        out: dict[str, list[tuple[Any, np.ndarray]]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(servers), 900):
                part = servers[i:i + 900]
                q = sa.select(col, guard_table.c.origin, guard_table.c.p50).where(
                    col.in_(part), guard_table.c.model == self.model,
                    guard_table.c.origin > since.to_pydatetime()).order_by(col, guard_table.c.origin)
                for server, origin, blob in conn.execute(q):
                    o = pd.Timestamp(origin)
                    now = origins[server]
                    if now - guard.WINDOW_STEPS * _STEP < o < now and len(blob) == _BLOB_BYTES:
                        out.setdefault(server, []).append((o, np.frombuffer(blob, dtype=np.float32).reshape(_SHAPE)))
        return out

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(guard_table).on_conflict_do_nothing(index_elements=[schema.SERVER, "origin", "model"])
        latest: dict[str, Any] = {}
        for r in rows:
            latest[r[schema.SERVER]] = max(latest.get(r[schema.SERVER], r["origin"]), r["origin"])
        col = guard_table.c[schema.SERVER]
        expire = sa.delete(guard_table).where(col == sa.bindparam("s"), guard_table.c.origin < sa.bindparam("cut"))
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)
            # per server, relative to its own newest origin: servers need not share a clock (a backfill, a
            # replay, a benchmark posting windows of different months). A server gone quiet keeps its last
            # two days of rows (<= 48, ~200 KB), as the store keeps its records
            conn.execute(expire, [{"s": s, "cut": o - KEEP.to_pytimedelta()} for s, o in latest.items()])

    def use_model(self, model_info: dict[str, Any]) -> None:
        """Score another model from now on: its own logged forecasts (or a backtest of it) decide."""
        with self._lock:
            self.model = model_key(model_info)
            self._scores.clear()
            self._scored_at.clear()
            self._backtested.clear()
            self._bands.clear()

    # --- reporting -------------------------------------------------------------------------------------
    def forget(self, servers: list[str]) -> None:
        with self._lock:
            for n in servers:
                self._scores.pop(n, None)
                self._scored_at.pop(n, None)
                self._bands.pop(n, None)
                self._backtested.discard(n)

    def summary(self, sources: dict[str, dict[str, str]]) -> dict[str, Any]:
        """For /health: servers per source and metric, and the fleet's skill per metric (of ``sources``'
        servers, the ones served now)."""
        with self._lock:
            scores = {n: self._scores.get(n) for n in sources}
        by_source: dict[str, dict[str, int]] = {}
        skill: dict[str, float | None] = {}
        scored: dict[str, int] = {}
        for k, m in enumerate(schema.METRICS):
            counts = Counter(s[m] for s in sources.values())
            by_source[m] = {src: int(counts.get(src, 0)) for src in guard.SOURCES}
            per = [s[k] for s in scores.values() if s]
            value = guard.fleet_skill(per)
            skill[m] = None if value is None else round(value, 3)
            scored[m] = sum(1 for s in per if s.best_naive is not None)
        return {"servers_by_source": by_source, "skill": skill, "servers_scored": scored,
                "window_hours": guard.WINDOW_STEPS * schema.STEP_MINUTES // 60}

    def export(self, summary: dict[str, Any]) -> None:
        """Set the Prometheus gauges from :meth:`summary`'s answer."""
        servers, skill = _prometheus()
        for m, counts in summary["servers_by_source"].items():
            for src, n in counts.items():
                servers.labels(metric=m, source=src).set(n)
            value = summary["skill"][m]
            skill.labels(metric=m).set(float("nan") if value is None else value)

    def metric_scores(self, server: str) -> list[guard.MetricScore] | None:
        with self._lock:
            return self._scores.get(server)
