"""Pure data shaping for the dashboard: JSON from the service in, numpy matrices and small frames out.

Nothing here imports Streamlit or does I/O, so it is tested directly. A :class:`FleetForecasts` is built once
per refresh from the ``/predictions`` answer; everything derived from it (forecast matrices, the heatmap
matrix per metric, the long frame the chart draws) is computed at most once per refresh and memoised on
the object, so a rerun caused by a dropdown or a filter only looks results up.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from models import alerts as alert_rules
from models.schema import HORIZON_STEPS, METRIC_LABELS, METRICS, STEPS_PER_HOUR, iso_many, to_utc_naive

# the levels are the alert rules' (models.alerts, ascending there), most urgent first here
RISK_LEVELS: tuple[str, ...] = tuple(reversed(alert_rules.RISK_LEVELS))
SEVERITIES: tuple[str, ...] = tuple(reversed(alert_rules.SEVERITIES))
QUANTILES: tuple[str, ...] = ("p10", "p50", "p90")
DEFAULT_BUCKET_STEPS = STEPS_PER_HOUR // 2  # 30-minute heatmap cells: 16 across the 8 h horizon


def risk_rank(level: str | None) -> int:
    """0 for critical … 3 for low (a severity ranks the same); unknown levels sort last."""
    try:
        return RISK_LEVELS.index(str(level))
    except ValueError:
        return len(RISK_LEVELS)


def _offset_label(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "−"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60}:{minutes % 60:02d}"


def _as_float_row(values: Any, length: int) -> np.ndarray:
    """A list of numbers (None allowed) as a float row of exactly ``length``, NaN-padded on the left."""
    row = np.full(length, np.nan)
    if not values:
        return row
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)[-length:]
    row[length - arr.size :] = arr
    return row


def _bucket_max(matrix: np.ndarray, bucket_steps: int) -> np.ndarray:
    """Peak of each run of ``bucket_steps`` columns; an all-missing bucket stays NaN."""
    n, steps = matrix.shape
    usable = steps - steps % bucket_steps
    blocks = matrix[:, steps - usable :].reshape(n, usable // bucket_steps, bucket_steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice
        return np.nanmax(blocks, axis=2) if n else np.empty((0, usable // bucket_steps))


@dataclass(frozen=True)
class HeatmapMatrix:
    """One heatmap: ``values[i, j]`` is the cell of ``servers[i]`` at ``columns[j]``."""

    metric: str
    servers: tuple[str, ...]
    columns: tuple[str, ...]  # offsets from the forecast origin, e.g. "−0:30" (actual), "+1:00" (P50)
    kinds: tuple[str, ...]  # per column: "actual" or "forecast"
    spans: tuple[str, ...]  # per column: the UTC time span the cell covers, for tooltips
    values: np.ndarray  # (len(servers), len(columns)), NaN where unknown

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape  # type: ignore[return-value]

    def long_frame(self, risk: tuple[str, ...], profiles: tuple[str, ...]) -> pd.DataFrame:
        """The matrix as the long table a Vega-Lite rect layer draws, built with numpy (no Python loop).

        Text columns are categoricals (codes into the row/column labels), so the table is small and
        turns into Arrow dictionary arrays without touching a Python string per cell.
        """
        n, m = self.values.shape
        rows = np.repeat(np.arange(n), m)
        cols = np.tile(np.arange(m), n)
        vals = self.values.reshape(-1)

        def per_row(labels: tuple[str, ...]) -> pd.Categorical:
            cats = list(dict.fromkeys(labels))
            index = {c: i for i, c in enumerate(cats)}
            codes = np.asarray([index[v] for v in labels], dtype=np.int32)
            return pd.Categorical.from_codes(codes[rows] if n else rows, categories=cats)

        def per_col(labels: tuple[str, ...]) -> pd.Categorical:
            cats = list(dict.fromkeys(labels))
            index = {c: i for i, c in enumerate(cats)}
            codes = np.asarray([index[v] for v in labels], dtype=np.int32)
            return pd.Categorical.from_codes(codes[cols] if m else cols, categories=cats)

        return pd.DataFrame(
            {
                "server": per_row(self.servers),
                "risk": per_row(risk),
                "profile": per_row(profiles),
                "offset": per_col(self.columns),
                "kind": per_col(self.kinds),
                "span": per_col(self.spans),
                "value": np.round(vals, 2),
            }
        )


@dataclass
class FleetForecasts:
    """The fleet's forecasts as one ``/predictions`` answer gives them, sorted most-at-risk first (the
    dashboard's view; the simulated dataset is ``models.simulator.FleetData``)."""

    predictions: list[dict[str, Any]]
    timestamp: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    _memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_response(cls, body: dict[str, Any] | None) -> FleetForecasts:
        body = body or {}
        preds = [p for p in body.get("predictions") or [] if isinstance(p, dict) and p.get("server_name")]
        # The service sorts by risk then name; a stable sort on risk alone keeps its order within a level.
        preds.sort(key=lambda p: risk_rank(p.get("risk_level")))
        return cls(predictions=preds, timestamp=body.get("timestamp"), model=body.get("model") or {})

    # --- per-server columns -------------------------------------------------------------------------
    @property
    def servers(self) -> tuple[str, ...]:
        return self._cached(("servers",), lambda: tuple(str(p["server_name"]) for p in self.predictions))

    @property
    def risk_levels(self) -> tuple[str, ...]:
        return self._cached(("risk",), lambda: tuple(str(p.get("risk_level", "")) for p in self.predictions))

    @property
    def profiles(self) -> tuple[str, ...]:
        return self._cached(("profiles",), lambda: tuple(str(p.get("profile", "")) for p in self.predictions))

    def __len__(self) -> int:
        return len(self.predictions)

    def by_name(self, server: str) -> dict[str, Any] | None:
        index = self._cached(("index",), lambda: {name: i for i, name in enumerate(self.servers)})
        i = index.get(server)
        return None if i is None else self.predictions[i]

    def risk_counts(self) -> dict[str, int]:
        counts = Counter(self.risk_levels)
        return {level: counts.get(level, 0) for level in RISK_LEVELS}

    # --- matrices -----------------------------------------------------------------------------------
    def forecast_timestamps(self) -> list[str]:
        for p in self.predictions:
            ts = (p.get("forecast") or {}).get("timestamps")
            if ts:
                return list(ts)
        return []

    def forecast_matrix(self, metric: str, quantile: str = "p50") -> np.ndarray:
        """(servers, 96) forecast of ``metric`` at ``quantile``; NaN where a server sent none."""
        _check_metric(metric)

        def build() -> np.ndarray:
            out = np.full((len(self), HORIZON_STEPS), np.nan)
            for i, p in enumerate(self.predictions):
                series = ((p.get("forecast") or {}).get(metric) or {}).get(quantile)
                if series:
                    arr = np.asarray([np.nan if v is None else v for v in series[:HORIZON_STEPS]], dtype=float)
                    out[i, : arr.size] = arr
            return out

        return self._cached(("forecast", metric, quantile), build)

    def history_matrix(self, metric: str, steps: int = HORIZON_STEPS) -> np.ndarray:
        """(servers, steps) of the most recent actual values, right-aligned; NaN where there are none."""
        _check_metric(metric)

        def build() -> np.ndarray:
            out = np.full((len(self), steps), np.nan)
            for i, p in enumerate(self.predictions):
                out[i] = _as_float_row((p.get("history") or {}).get(metric), steps)
            return out

        return self._cached(("history", metric, steps), build)

    @property
    def has_history(self) -> bool:
        return any(p.get("history") for p in self.predictions)

    def heatmap(
        self, metric: str, include_actual: bool = False, bucket_steps: int = DEFAULT_BUCKET_STEPS
    ) -> HeatmapMatrix:
        """Servers × time buckets: peak P50 per bucket over the next 8 h, optionally after the last 8 h of
        actual values (peak per bucket too, so a short spike is never averaged away)."""
        _check_metric(metric)
        if bucket_steps <= 0 or HORIZON_STEPS % bucket_steps:
            raise ValueError(f"bucket_steps must divide {HORIZON_STEPS}, got {bucket_steps}")

        def build() -> HeatmapMatrix:
            minutes = bucket_steps * 60 // STEPS_PER_HOUR
            n_buckets = HORIZON_STEPS // bucket_steps
            origin = self._forecast_origin()
            forecast = _bucket_max(self.forecast_matrix(metric), bucket_steps)
            columns = [_offset_label((k + 1) * minutes) for k in range(n_buckets)]
            kinds = ["forecast"] * n_buckets
            spans = [_span(origin, k * minutes, (k + 1) * minutes) for k in range(n_buckets)]
            values = forecast
            if include_actual:
                actual = _bucket_max(self.history_matrix(metric, HORIZON_STEPS), bucket_steps)
                starts = [-(n_buckets - k) * minutes for k in range(n_buckets)]
                columns = [_offset_label(s) for s in starts] + columns
                kinds = ["actual"] * n_buckets + kinds
                spans = [_span(origin, s, s + minutes) for s in starts] + spans
                values = np.hstack([actual, forecast])
            return HeatmapMatrix(
                metric=metric,
                servers=self.servers,
                columns=tuple(columns),
                kinds=tuple(kinds),
                spans=tuple(spans),
                values=values,
            )

        return self._cached(("heatmap", metric, include_actual, bucket_steps), build)

    def heatmap_frame(
        self, metric: str, include_actual: bool = False, bucket_steps: int = DEFAULT_BUCKET_STEPS
    ) -> pd.DataFrame:
        """The long table for the heatmap chart, memoised like the matrix it comes from."""
        return self._cached(
            ("heatmap_frame", metric, include_actual, bucket_steps),
            lambda: self.heatmap(metric, include_actual, bucket_steps).long_frame(
                self.risk_levels, self.profiles
            ),
        )

    def server_frames(self, server: str, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(history, forecast) of one server for one metric: ``time, actual`` and ``time, p10, p50, p90``."""
        _check_metric(metric)
        p = self.by_name(server) or {}
        history = p.get("history") or {}
        hist = pd.DataFrame(
            {
                "time": pd.to_datetime(history.get("timestamps") or []),
                # a metric the server never reports is null: a column of NaN as long as the times
                "actual": pd.Series(history.get(metric) or [np.nan] * len(history.get("timestamps") or []),
                                    dtype=float),
            }
        )
        forecast = p.get("forecast") or {}
        quant = forecast.get(metric) or {}
        stamps = forecast.get("timestamps") or []
        fc = pd.DataFrame({"time": pd.to_datetime(stamps)})
        for q in QUANTILES:
            fc[q] = pd.Series(quant.get(q) or [np.nan] * len(stamps), dtype=float).to_numpy()[: len(stamps)]
        return hist, fc

    def detail_frame(self, server: str, metric: str) -> pd.DataFrame:
        """History and forecast of one server and metric in one table (``time`` as ISO text), memoised."""

        def build() -> pd.DataFrame:
            hist, fc = self.server_frames(server, metric)
            frame = pd.concat([hist, fc], ignore_index=True)
            frame["time"] = iso_many(frame["time"])
            return frame

        return self._cached(("detail", server, metric), build)

    # --- helpers ------------------------------------------------------------------------------------
    def _forecast_origin(self) -> datetime | None:
        stamps = self.forecast_timestamps()
        if not stamps:
            return None
        try:
            first = pd.Timestamp(to_utc_naive(stamps[0]))
        except ValueError:
            return None
        step = pd.Timedelta(minutes=60 // STEPS_PER_HOUR)
        return (first - step).to_pydatetime()

    def _cached(self, key: tuple[Any, ...], build: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]


def _span(origin: datetime | None, start_min: int, end_min: int) -> str:
    if origin is None:
        return f"{_offset_label(start_min)} to {_offset_label(end_min)}"
    start = pd.Timestamp(origin) + pd.Timedelta(minutes=start_min)
    end = pd.Timestamp(origin) + pd.Timedelta(minutes=end_min)
    return f"{start:%H:%M}–{end:%H:%M} UTC"


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def thresholds_of(prediction: dict[str, Any] | None, metric: str) -> list[tuple[str, float]]:
    """``[(name, value), …]``, lowest first: the alert thresholds the service applies to this server's
    ``metric`` (the ``thresholds`` of its ``/predictions`` entry); [] when the service sent none."""
    found = ((prediction or {}).get("thresholds") or {}).get(metric) or {}
    pairs = []
    for name, value in found.items():
        try:
            pairs.append((str(name), float(value)))
        except (TypeError, ValueError):
            continue
    return sorted(pairs, key=lambda item: item[1])


ALERT_COLUMNS: tuple[str, ...] = (
    "severity",
    "server_name",
    "profile",
    "alert_type",
    "message",
    "hours_to_breach",
    "prediction_time",
    "metric",
    "threshold",
    "current_value",
    "predicted_value",
    "probability",
    "timestamp",
)
"""Alert fields the dashboard keeps from GET /alerts, in table order."""


def alerts_frame(alerts: list[dict[str, Any]] | None) -> pd.DataFrame:
    """Active alerts as a table, most severe and soonest first."""
    frame = pd.DataFrame([a for a in alerts or [] if isinstance(a, dict)])
    for col in ALERT_COLUMNS:
        if col not in frame:
            frame[col] = pd.Series(dtype=object)
    frame = frame[list(ALERT_COLUMNS)]
    for col in ("hours_to_breach", "threshold", "current_value", "predicted_value", "probability"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    rank = frame["severity"].map(risk_rank)
    order = np.lexsort((frame["hours_to_breach"].fillna(np.inf).to_numpy(), rank.to_numpy()))
    return frame.iloc[order].reset_index(drop=True)


def severity_counts(alerts: list[dict[str, Any]] | None) -> dict[str, int]:
    counts = Counter(str(a.get("severity")) for a in alerts or [] if isinstance(a, dict))
    return {s: counts.get(s, 0) for s in SEVERITIES}


def filter_alerts(frame: pd.DataFrame, severities: list[str], profiles: list[str]) -> pd.DataFrame:
    """Rows whose severity is in ``severities`` and, when ``profiles`` is not empty, profile in it."""
    mask = frame["severity"].isin(severities)
    if profiles:
        mask &= frame["profile"].isin(profiles)
    return frame[mask].reset_index(drop=True)
