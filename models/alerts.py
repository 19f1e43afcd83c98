"""Alert rules: quantile forecasts (and, for slow fills, a robust trend) -> alerts with a time to breach,
a probability, a severity and an explanation.

Thresholds live in ``models/alerts.yaml`` (``FLEETCAST_ALERTS_FILE`` points elsewhere). For each rule
(metric) the critical threshold is checked first, then the warning one. A threshold is *reached*

- when the current value is already at or above it (and, when the history is given, so were the last
  ``persistence.above_steps`` values: one noisy sample is not an alert), or
- when the *chance of reaching it* within the horizon is at least the *probability cut* of that metric and
  level. The cuts are chosen on a calibration fleet by :func:`models.backtest.calibrate` and stored in the
  calibration file (``calibration_file`` in the YAML, default ``models/alert_calibration.yaml``);
  ``min_probability`` is the cut where the file has none.

The chance per step comes from the forecast's P10/P50/P90 (:func:`exceed_probability`: P10 crossing
~0.9, P50 0.5, P90 0.1, linear between them). For the metrics in ``trend.metrics`` (memory, disk: leaks and
fills are slow ramps a forecaster tends to pull back to the profile's level) a **robust trend** joins the
forecast when it rises significantly (slope >= 5 standard errors): the Theil-Sen slope of the last
``trend.hours`` of history, projected over the horizon with a band from the line's standard errors
(:func:`robust_trend`, :func:`trend_quantiles`); the chance per step is the larger of the two. Then

- ``prediction_time`` is the first step where the chance reaches 0.5 (the expected breach: P50 of the
  forecast or of the trend crosses), or where it first reaches the cut (a possible breach), or the
  forecast's origin when the value is already above;
- ``probability`` is the largest chance over the horizon (1.0 when already above);
- ``severity`` adds up threshold level (critical 2, warning 1), certainty (chance reaches 0.5 or the
  value is above: +1) and urgency (breach within ``soon_hours``: +1): 4 critical, 3 high, 2 medium, 1 low;
- ``explanation`` says what drove it (a mapping with ``source`` ``trend``/``forecast``/``value`` and a
  one-line ``text``): the trend and its rate, the forecast's P50 and band, or how long the value is above.
  The service adds ``drivers`` when the alert opens on the model's forecast: the TFT's variable-selection
  weights of that forecast (:mod:`models.drivers`, :meth:`AlertBook.annotate`), kept while it stays open.

:class:`AlertBook` keeps the active alerts, one per (server, alert_type), **in data time** (the forecast's
origin, never the wall clock, so a backtest replays exactly what the service does). Persistence: an
alert *opens* when its rule has held at every evaluation for ``persistence.open_minutes`` (an
already-above alert confirmed by its history opens at once); it is *resolved* when no evaluation has
raised it for ``persistence.close_minutes`` and the latest one is clear (forecast and trend below the cut,
value below the threshold). One noisy forecast therefore neither opens nor closes an alert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from models import schema
from models.settings import get_settings

ALERTS_FILE = Path(__file__).with_name("alerts.yaml")
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")  # ascending
RISK_LEVELS = SEVERITIES
_SCORE_TO_SEVERITY = {1: "low", 2: "medium", 3: "high", 4: "critical"}
_EPS = 1e-6
TREND_MIN_T = 5.0  # a trend joins the forecast only when its slope is this many standard errors above 0
_NOWHERE = -1e9  # a trend band value no threshold is below


@dataclass(frozen=True)
class Rule:
    alert_type: str
    metric: str
    warning: float
    critical: float


@dataclass(frozen=True)
class AlertConfig:
    rules: tuple[Rule, ...]
    profile_overrides: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    soon_hours: float = 2.0
    min_probability: float = 0.2
    cuts: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # metric -> level -> cut
    trend_metrics: tuple[str, ...] = ()
    trend_hours: float = 3.0
    trend_max_hours: float | None = None  # the trend is carried this far at most (None: the whole horizon)
    trend_recent: float = 0.0  # the last third's slope must be at least this fraction of the trend's
    open_minutes: float = 0.0
    close_minutes: float = 0.0
    above_steps: int = 1

    def thresholds(self, rule: Rule, profile: str | None) -> dict[str, float]:
        """``{"warning": w, "critical": c}`` for ``rule`` and ``profile`` (per-profile overrides applied)."""
        out = {"warning": rule.warning, "critical": rule.critical}
        override = self.profile_overrides.get(profile or "", {}).get(rule.metric, {})
        out.update({k: float(v) for k, v in override.items() if k in out})
        return out

    def cut(self, metric: str, level: str) -> float:
        """The probability cut of ``metric`` at ``level`` (calibrated; ``min_probability`` otherwise)."""
        return float(self.cuts.get(metric, {}).get(level, self.min_probability))

    @property
    def trend_steps(self) -> int:
        return int(round(self.trend_hours * schema.STEPS_PER_HOUR))

    def trend_args(self, metric: str) -> dict[str, Any]:
        """The trend keyword arguments of :func:`evaluate_metric` / :func:`metric_scores` for ``metric``."""
        if metric not in self.trend_metrics:
            return {"trend_steps": 0}
        max_steps = None if self.trend_max_hours is None else int(round(self.trend_max_hours * schema.STEPS_PER_HOUR))
        return {"trend_steps": self.trend_steps, "trend_max_steps": max_steps, "trend_recent": self.trend_recent}

    def with_trend(self, **changes: Any) -> AlertConfig:
        """This config with other trend settings (``trend_hours``, ``trend_max_hours``, ``trend_recent``)."""
        return replace(self, **changes)

    def with_cuts(self, cuts: Mapping[str, Mapping[str, float]]) -> AlertConfig:
        """This config with other probability cuts (the calibration tries several)."""
        return replace(self, cuts={m: dict(v) for m, v in cuts.items()})

    def with_persistence(self, open_minutes: float, close_minutes: float) -> AlertConfig:
        return replace(self, open_minutes=float(open_minutes), close_minutes=float(close_minutes))


def _alerts_path() -> Path:
    return get_settings().alerts_file


def _parse_cuts(data: Mapping[str, Any], where: str) -> dict[str, dict[str, float]]:
    cuts: dict[str, dict[str, float]] = {}
    for metric, levels in (data or {}).items():
        if metric not in schema.METRICS:
            raise ValueError(f"{where}: unknown metric {metric!r}")
        cuts[str(metric)] = {}
        for level, value in (levels or {}).items():
            if level not in ("warning", "critical") or not 0.0 < float(value) <= 1.0:
                raise ValueError(f"{where}: {metric}.{level} must be warning/critical with a cut in (0, 1]")
            cuts[str(metric)][str(level)] = float(value)
    return cuts


def parse_config(data: Mapping[str, Any], base_dir: Path | None = None) -> AlertConfig:
    """Build an :class:`AlertConfig` from the YAML's mapping; ValueError naming what is wrong.

    ``base_dir``: where a relative ``calibration_file`` lives (the alerts file's folder)."""
    rules = []
    for i, item in enumerate(data.get("rules") or []):
        try:
            rule = Rule(str(item["alert_type"]), str(item["metric"]), float(item["warning"]),
                        float(item["critical"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"alerts config: rules[{i}] needs alert_type, metric, warning, critical: {exc}") from exc
        if rule.metric not in schema.METRICS:
            raise ValueError(f"alerts config: rules[{i}]: unknown metric {rule.metric!r}")
        if not rule.warning < rule.critical:
            raise ValueError(f"alerts config: rules[{i}]: warning must be below critical")
        rules.append(rule)
    if not rules:
        raise ValueError("alerts config: no rules")
    profiles = {str(p): {str(m): dict(v) for m, v in (metrics or {}).items()}
                for p, metrics in (data.get("profiles") or {}).items()}
    soon = float((data.get("severity") or {}).get("soon_hours", 2.0))
    min_probability = float(data.get("min_probability", 0.2))
    if not 0.0 < min_probability <= 1.0:
        raise ValueError("alerts config: min_probability must be in (0, 1]")
    trend = data.get("trend") or {}
    trend_metrics = tuple(str(m) for m in trend.get("metrics") or ())
    for m in trend_metrics:
        if m not in schema.METRICS:
            raise ValueError(f"alerts config: trend.metrics: unknown metric {m!r}")
    trend_hours = float(trend.get("hours", 3.0))
    if not 0.5 <= trend_hours <= 24.0:
        raise ValueError("alerts config: trend.hours must be between 0.5 and 24")
    trend_max_hours = None if trend.get("max_hours") is None else float(trend["max_hours"])
    if trend_max_hours is not None and not 0.0 < trend_max_hours <= 24.0:
        raise ValueError("alerts config: trend.max_hours must be in (0, 24]")
    trend_recent = float(trend.get("recent_fraction", 0.0))
    if not 0.0 <= trend_recent <= 1.0:
        raise ValueError("alerts config: trend.recent_fraction must be between 0 and 1")
    persistence = data.get("persistence") or {}
    open_minutes = float(persistence.get("open_minutes", 0.0))
    close_minutes = float(persistence.get("close_minutes", 0.0))
    above_steps = int(persistence.get("above_steps", 1))
    if open_minutes < 0 or close_minutes < 0 or above_steps < 1:
        raise ValueError("alerts config: persistence minutes must be >= 0 and above_steps >= 1")
    cuts = _parse_cuts(data.get("cuts") or {}, "alerts config: cuts")
    calibration = data.get("calibration_file")
    if calibration:
        path = Path(calibration)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.is_file():  # a missing calibration file leaves min_probability as the cut
            with path.open(encoding="utf-8") as f:
                calibrated = yaml.safe_load(f) or {}
            from_file = _parse_cuts(calibrated.get("cuts") or {}, f"calibration file {path}")
            cuts = {m: {**from_file.get(m, {}), **cuts.get(m, {})} for m in {*from_file, *cuts}}  # YAML wins
    return AlertConfig(tuple(rules), profiles, soon, min_probability, cuts, trend_metrics, trend_hours,
                       trend_max_hours, trend_recent, open_minutes, close_minutes, above_steps)


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> AlertConfig:
    with Path(path).open(encoding="utf-8") as f:
        return parse_config(yaml.safe_load(f) or {}, Path(path).parent)


def load_config(path: str | Path | None = None) -> AlertConfig:
    """The alert rules from ``path`` (default ``models/alerts.yaml`` or ``FLEETCAST_ALERTS_FILE``)."""
    p = Path(path) if path is not None else _alerts_path()
    return _load(str(p), p.stat().st_mtime)


def thresholds_for(metric: str, profile: str | None = None) -> dict[str, float]:
    """``{"warning": w, "critical": c}`` for ``metric`` (and ``profile``); KeyError for an unknown metric."""
    cfg = load_config()
    for rule in cfg.rules:
        if rule.metric == metric:
            return cfg.thresholds(rule, profile)
    raise KeyError(f"no alert rule for metric {metric!r}")


# --- evaluation -----------------------------------------------------------------------------------------
def exceed_probability(quantiles: np.ndarray, threshold: float) -> np.ndarray:
    """P(value >= threshold) per step from P10/P50/P90 (``quantiles``: [steps, 3]).

    Piecewise linear in the quantiles: 0.9 at P10, 0.5 at P50, 0.1 at P90, reaching 1 one band
    below P10 and 0 one band above P90.
    """
    q = np.asarray(quantiles, dtype=float)
    lo, mid, hi = q[:, 0], q[:, 1], q[:, 2]
    d1 = np.maximum(mid - lo, _EPS)
    d2 = np.maximum(hi - mid, _EPS)
    t = float(threshold)
    return np.where(
        t <= lo, 0.9 + 0.1 * np.clip((lo - t) / d1, 0, 1),
        np.where(t <= mid, 0.9 - 0.4 * (t - lo) / d1,
                 np.where(t <= hi, 0.5 - 0.4 * (t - mid) / d2, 0.1 - 0.1 * np.clip((t - hi) / d2, 0, 1))))


def humanize_minutes(minutes: float) -> str:
    """5 -> '5 minutes', 60 -> '1 hour', 150 -> '2 hours 30 minutes', 360 -> '6 hours'."""
    m = max(0, round(float(minutes)))
    if m < 60:
        return f"{m} minute" + ("" if m == 1 else "s")
    hours, rest = divmod(5 * round(m / 5), 60)
    text = f"{hours} hour" + ("" if hours == 1 else "s")
    if rest:
        text += f" {rest} minutes"
    return text


def _fmt_value(metric: str, value: float) -> str:
    if metric in schema.PERCENT_METRICS:
        return f"{value:g}%"
    return f"{value:g}"


def severity_for(level: str, certain: bool, hours_to_breach: float, soon_hours: float) -> str:
    score = (2 if level == "critical" else 1) + int(certain) + int(hours_to_breach <= soon_hours)
    return _SCORE_TO_SEVERITY[score]


# --- trend ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trend:
    """A robust linear trend of the last ``n`` steps: value ``level`` at the last step, ``slope`` per step
    (Theil-Sen: the median of all pairwise slopes), its standard error and the residuals' spread."""

    level: float
    slope: float
    slope_se: float
    sigma: float
    n: int

    @property
    def rising(self) -> bool:
        """A significant rise: the slope is positive and at least ``TREND_MIN_T`` standard errors."""
        return self.slope > 0 and self.slope >= TREND_MIN_T * self.slope_se

    @property
    def per_hour(self) -> float:
        return self.slope * schema.STEPS_PER_HOUR


@lru_cache(maxsize=8)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def robust_trend(values: np.ndarray, steps: int) -> Trend | None:
    """The Theil-Sen trend of the last ``steps`` values of ``values`` (NaN skipped); None with fewer than
    half of them or fewer than 6 finite values."""
    y = np.asarray(values, dtype=float)[-steps:]
    x = np.arange(len(y), dtype=float)
    ok = np.isfinite(y)
    if ok.sum() < max(6, steps // 2):
        return None
    x, y = x[ok], y[ok]
    i, j = _pairs(len(y))
    slope = float(np.median((y[j] - y[i]) / (x[j] - x[i])))
    last = x[-1] if len(x) else 0.0
    level = float(np.median(y - slope * (x - last)))
    resid = y - (level + slope * (x - last))
    sigma = float(1.4826 * np.median(np.abs(resid - np.median(resid))))
    n = len(y)
    slope_se = sigma * float(np.sqrt(12.0 / max(n * (n * n - 1), 1)))
    return Trend(level, slope, slope_se, sigma, n)


def trend_quantiles(trend: Trend, horizon: int) -> np.ndarray:
    """P10/P50/P90 ``[horizon, 3]`` of the trend line carried forward ``1..horizon`` steps: P50 on the line,
    the band from the line's own uncertainty (slope and level standard errors; normal, z = 1.2816)."""
    h = np.arange(1, horizon + 1, dtype=float)
    mid = trend.level + trend.slope * h
    half = 1.2816 * np.sqrt((trend.slope_se * h) ** 2 + trend.sigma ** 2 / trend.n)
    return np.stack([mid - half, mid, mid + half], axis=1)


# --- evaluation of one rule -------------------------------------------------------------------------------
def breach_chance(quantiles: np.ndarray, threshold: float, trend_q: np.ndarray | None = None) -> np.ndarray:
    """The chance per step of being at or above ``threshold``: the forecast's, or the larger of the
    forecast's and the trend's (``trend_q``: :func:`trend_quantiles`)."""
    chance = exceed_probability(quantiles, threshold)
    if trend_q is not None:
        chance = np.maximum(chance, exceed_probability(trend_q[: len(chance)], threshold))
    return chance


def metric_scores(
    rule: Rule, thresholds: Mapping[str, float], quantiles: np.ndarray, current: float | None,
    history: np.ndarray | None = None, trend_steps: int = 0, above_steps: int = 1, *,
    trend_max_steps: int | None = None, trend_recent: float = 0.0,
) -> dict[str, tuple[bool, float]]:
    """Per level: (already above and held, score). The rule of :func:`evaluate_metric` raises a level when
    it is already above, or when its score (the largest chance over the steps the P90 of the forecast or
    the trend reaches) is at least the level's cut. The calibration sweeps cuts over these scores."""
    q = np.asarray(quantiles, dtype=float)
    recent = None if history is None else np.asarray(history, dtype=float)
    trend_q = _trend_band(recent, trend_steps, len(q), trend_max_steps, trend_recent)[1]
    out = {}
    for level in ("critical", "warning"):
        threshold = float(thresholds[level])
        held = (recent is None or len(recent) < above_steps
                or bool(np.all(recent[-above_steps:] >= threshold)))
        chance = breach_chance(q, threshold, trend_q)
        upper = np.maximum(q[:, 2], trend_q[:, 2]) if trend_q is not None else q[:, 2]
        reach = chance[upper >= threshold]
        out[level] = (current is not None and current >= threshold and held,
                      float(reach.max()) if reach.size else 0.0)
    return out


def _trend_band(recent: np.ndarray | None, trend_steps: int, horizon: int, max_steps: int | None = None,
                recent_fraction: float = 0.0) -> tuple[Trend | None, np.ndarray | None]:
    """The trend and its band over the horizon when it rises significantly (None, None otherwise).

    ``recent_fraction`` > 0: the rise must go on now, the Theil-Sen slope of the window's last third at
    least that fraction of the whole window's (a level that stepped up and stays there is no trend).
    ``max_steps``: the band is carried that far only (beyond it the trend says nothing)."""
    trend = robust_trend(recent, trend_steps) if (recent is not None and trend_steps > 0) else None
    if trend is None or not trend.rising:
        return None, None  # only a significant rise is carried forward
    if recent_fraction > 0:
        last = robust_trend(recent, max(6, trend_steps // 3))
        if last is None or last.slope < recent_fraction * trend.slope:
            return None, None
    band = trend_quantiles(trend, horizon)
    if max_steps is not None and max_steps < horizon:
        band[max_steps:] = _NOWHERE  # no chance beyond the trend's reach
    return trend, band


def _explanation(label: str, metric: str, threshold: float, q: np.ndarray, step: int, minutes: float,
                 trend: Trend | None, trend_q: np.ndarray | None) -> dict[str, Any]:
    """What drove a forecast alert: the trend (when its chance at the breach step is the larger) or the
    forecast's band there; ``text`` says it in one line."""
    target = _fmt_value(metric, threshold)
    unit = "%" if metric in schema.PERCENT_METRICS else ""
    if trend is not None and trend_q is not None:
        forecast_chance = float(exceed_probability(q[step:step + 1], threshold)[0])
        trend_chance = float(exceed_probability(trend_q[step:step + 1], threshold)[0])
        if trend_chance > forecast_chance:
            hours = trend.n * schema.STEP_MINUTES / 60
            return {"source": "trend", "method": "theil-sen", "window_hours": round(hours, 2),
                    "rate_per_hour": round(trend.per_hour, 3), "level": round(trend.level, 2),
                    "text": f"trend {trend.per_hour:+.2f}{unit}/h over the last {hours:g} h (Theil-Sen, now "
                            f"{trend.level:.1f}{unit}) reaches {target} in {humanize_minutes(minutes)}"}
    return {"source": "forecast", "minutes": round(minutes), "p10": round(float(q[step, 0]), 2),
            "p50": round(float(q[step, 1]), 2), "p90": round(float(q[step, 2]), 2),
            "text": f"forecast P50 {q[step, 1]:.1f}{unit} (P10-P90 {q[step, 0]:.1f}-{q[step, 2]:.1f}) in "
                    f"{humanize_minutes(minutes)}, {label} threshold {target}"}


def evaluate_metric(
    rule: Rule, thresholds: Mapping[str, float], quantiles: np.ndarray, timestamps: pd.DatetimeIndex,
    origin: pd.Timestamp, current: float | None, soon_hours: float = 2.0, min_probability: float = 0.2, *,
    cuts: Mapping[str, float] | None = None, history: np.ndarray | None = None, trend_steps: int = 0,
    above_steps: int = 1, trend_max_steps: int | None = None, trend_recent: float = 0.0,
) -> dict[str, Any] | None:
    """The alert of one rule for one server's forecast, or None when no threshold is reached.

    ``cuts``: probability cut per level (default ``min_probability`` for both); ``history``: the metric's
    recent values, oldest first, ending with ``current`` (for the already-above persistence and the trend);
    ``trend_steps`` > 0: a Theil-Sen trend of that many steps joins the forecast."""
    q = np.asarray(quantiles, dtype=float)
    label = schema.METRIC_LABELS.get(rule.metric, rule.metric)
    recent = None if history is None else np.asarray(history, dtype=float)
    trend, trend_q = _trend_band(recent, trend_steps, len(q), trend_max_steps, trend_recent)
    for level in ("critical", "warning"):
        threshold = float(thresholds[level])
        cut = float((cuts or {}).get(level, min_probability))
        held = (recent is None or len(recent) < above_steps
                or bool(np.all(recent[-above_steps:] >= threshold)))
        if current is not None and current >= threshold and held:
            hours, certain, probability = 0.0, True, 1.0
            when = pd.Timestamp(origin)
            predicted = float(q[0, 1])
            message = f"{label} already above {_fmt_value(rule.metric, threshold)} (now {current:.1f})"
            explanation = {"source": "value", "above_for_minutes": above_steps * schema.STEP_MINUTES,
                           "text": f"{label} at or above {_fmt_value(rule.metric, threshold)} for the last "
                                   f"{humanize_minutes(above_steps * schema.STEP_MINUTES)}"}
        else:
            chance = breach_chance(q, threshold, trend_q)
            upper = np.maximum(q[:, 2], trend_q[:, 2]) if trend_q is not None else q[:, 2]
            likely = np.flatnonzero((upper >= threshold) & (chance >= cut - _EPS))
            if likely.size == 0:
                continue
            p50_cross = np.flatnonzero(chance >= 0.5 - _EPS)
            certain = p50_cross.size > 0
            step = int(p50_cross[0] if certain else likely[0])
            probability = float(chance.max())
            when = pd.Timestamp(timestamps[step])
            minutes = (when - pd.Timestamp(origin)).total_seconds() / 60.0
            hours = minutes / 60.0
            predicted = float(q[step, 1] if certain else q[step, 2])
            verb = "expected to reach" if certain else "could reach"
            message = f"{label} {verb} {_fmt_value(rule.metric, threshold)} in {humanize_minutes(minutes)}"
            if not certain:
                message += f" (probability {probability:.0%})"
            explanation = _explanation(label, rule.metric, threshold, q, step, minutes, trend, trend_q)
        return {
            "alert_type": rule.alert_type,
            "severity": severity_for(level, certain, hours, soon_hours),
            "level": level,
            "message": message,
            "explanation": explanation,
            "prediction_time": schema.iso(when),
            "metric": rule.metric,
            "threshold": round(threshold, 2),
            "current_value": None if current is None else round(float(current), 2),
            "predicted_value": round(predicted, 2),
            "probability": round(probability, 2),
            "hours_to_breach": round(hours, 2),
            "already_above": hours == 0.0 and probability == 1.0 and current is not None and current >= threshold,
        }
    return None


def evaluate_forecast(
    server_name: str, profile: str, quantiles: Mapping[str, np.ndarray], timestamps: pd.DatetimeIndex,
    origin: pd.Timestamp, current: Mapping[str, float], config: AlertConfig | None = None,
    history: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """All alerts for one server: ``quantiles`` metric -> [steps, 3]; ``current`` metric -> last value;
    ``history`` metric -> recent values ending with the current one (the trend and the already-above
    persistence use it; without it only the current value counts)."""
    cfg = config or load_config()
    out = []
    for rule in cfg.rules:
        if rule.metric not in quantiles:
            continue
        value = current.get(rule.metric)
        recent = None if history is None else history.get(rule.metric)
        alert = evaluate_metric(
            rule, cfg.thresholds(rule, profile), quantiles[rule.metric], timestamps, origin,
            None if value is None else float(value), cfg.soon_hours, cfg.min_probability,
            cuts={lv: cfg.cut(rule.metric, lv) for lv in ("warning", "critical")}, history=recent,
            above_steps=cfg.above_steps, **cfg.trend_args(rule.metric))
        if alert is not None:
            out.append({"server_name": server_name, "profile": profile, **alert})
    return out


def risk_level(alerts: Iterable[Mapping[str, Any]]) -> str:
    """The server's risk: the highest severity among its alerts, ``low`` without any."""
    best = 0
    for alert in alerts:
        best = max(best, SEVERITIES.index(alert["severity"]))
    return SEVERITIES[best]


def severity_rank(severity: str) -> int:
    """critical 0, high 1, medium 2, low 3: for sorting most urgent first."""
    return len(SEVERITIES) - 1 - SEVERITIES.index(severity)


class AlertBook:
    """Active alerts, one per (server, alert_type), with persistence in data time.

    :meth:`update` takes each evaluation of a server with its data time (the forecast's origin). An alert
    *opens* once its rule held at every evaluation for ``open_minutes`` (already-above alerts confirmed
    by their history open at once); it is *resolved* when the latest evaluation is clear and none raised
    it for ``close_minutes``. ``first_seen`` is the data time it opened; ``timestamp`` the data time of
    the evaluation that last raised it. Defaults: the ``persistence`` section of the alert config.
    """

    def __init__(self, open_minutes: float | None = None, close_minutes: float | None = None) -> None:
        if open_minutes is None or close_minutes is None:
            cfg = load_config()
            open_minutes = cfg.open_minutes if open_minutes is None else open_minutes
            close_minutes = cfg.close_minutes if close_minutes is None else close_minutes
        self.open_after = pd.Timedelta(minutes=float(open_minutes))
        self.close_after = pd.Timedelta(minutes=float(close_minutes))
        self._active: dict[tuple[str, str], dict[str, Any]] = {}
        self._last_raised: dict[tuple[str, str], pd.Timestamp] = {}  # active: data time last raised
        self._pending: dict[tuple[str, str], pd.Timestamp] = {}  # not yet open: data time of the run's start

    def update(self, server_name: str, alerts: Iterable[Mapping[str, Any]], now: pd.Timestamp | str) -> list[str]:
        """Take ``server_name``'s latest evaluation ``alerts`` at data time ``now``; returns the alert types
        that opened with it."""
        t = pd.Timestamp(now)
        stamp = schema.iso(t)
        fresh = {(server_name, a["alert_type"]): dict(a) for a in alerts}
        for key in [k for k in self._pending if k[0] == server_name and k not in fresh]:
            del self._pending[key]  # the run broke before the alert opened
        for key in [k for k in self._active if k[0] == server_name and k not in fresh]:
            if t - self._last_raised[key] >= self.close_after:
                del self._active[key], self._last_raised[key]  # resolved: clear for close_minutes
        opened = []
        for key, alert in fresh.items():
            previous = self._active.get(key)
            if previous is None:
                since = self._pending.setdefault(key, t)
                if not (alert.get("already_above") or t - since >= self.open_after):
                    continue
                self._pending.pop(key, None)
                opened.append(key[1])
            alert["first_seen"] = previous["first_seen"] if previous else stamp
            alert["timestamp"] = stamp
            drivers = (previous.get("explanation") or {}).get("drivers") if previous else None
            if drivers and isinstance(alert.get("explanation"), dict) and "drivers" not in alert["explanation"]:
                alert["explanation"] = {**alert["explanation"], "drivers": drivers}  # kept from its opening
            self._active[key] = alert
            self._last_raised[key] = t
        return opened

    def annotate(self, server_name: str, alert_type: str, drivers: Mapping[str, Any]) -> bool:
        """Add ``drivers`` (the TFT's variable weights for the forecast that opened it,
        :func:`models.drivers.explain`) to the active alert's explanation; later evaluations keep them.
        False when no such alert is active or it has no explanation mapping."""
        alert = self._active.get((server_name, alert_type))
        if alert is None or not isinstance(alert.get("explanation"), dict):
            return False
        alert["explanation"] = {**alert["explanation"], "drivers": dict(drivers)}
        return True

    def clear(self, server_name: str) -> None:
        """Forget ``server_name``'s alerts at once (its data no longer allows a forecast)."""
        for d in (self._active, self._last_raised, self._pending):
            for key in [k for k in d if k[0] == server_name]:
                del d[key]

    def is_active(self, server_name: str, alert_type: str) -> bool:
        return (server_name, alert_type) in self._active

    def for_server(self, server_name: str) -> list[dict[str, Any]]:
        return [a for (s, _), a in self._active.items() if s == server_name]

    def all(self) -> list[dict[str, Any]]:
        """Active alerts, most severe first, then soonest breach, then server name."""
        return sorted(self._active.values(), key=lambda a: (severity_rank(a["severity"]), a["hours_to_breach"],
                                                            a["server_name"], a["alert_type"]))

    def __len__(self) -> int:
        return len(self._active)
