"""Alert rules: quantile forecasts -> alerts with a time to breach, a probability and a severity.

Thresholds live in ``models/alerts.yaml`` (``FLEETCAST_ALERTS_FILE`` points elsewhere). For each rule
(metric) the critical threshold is checked first, then the warning one. A threshold is *reached*
when the current value is already at or above it, or when the forecast's P90 crosses it within the
horizon with a chance of at least ``min_probability`` (YAML). Then

- ``prediction_time`` is the first step where P50 crosses (the expected breach), or where the chance
  first reaches ``min_probability`` when P50 never crosses (a possible breach), or the time of the
  last observation when the value is already above;
- ``probability`` is the chance of reaching the threshold at the most likely step, interpolated from
  the quantiles (P10 crossing ~0.9, P50 0.5, P90 0.1; linear between them);
- ``severity`` adds up threshold level (critical 2, warning 1), certainty (P50 or current crosses: +1)
  and urgency (breach within ``soon_hours``: +1): 4 critical, 3 high, 2 medium, 1 low.

:class:`AlertBook` keeps the active alerts deduplicated per (server, alert_type) with a stable
``first_seen``, and clears an alert as soon as the server's forecast no longer reaches a threshold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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

    def thresholds(self, rule: Rule, profile: str | None) -> dict[str, float]:
        """``{"warning": w, "critical": c}`` for ``rule`` and ``profile`` (per-profile overrides applied)."""
        out = {"warning": rule.warning, "critical": rule.critical}
        override = self.profile_overrides.get(profile or "", {}).get(rule.metric, {})
        out.update({k: float(v) for k, v in override.items() if k in out})
        return out


def _alerts_path() -> Path:
    return get_settings().alerts_file


def parse_config(data: Mapping[str, Any]) -> AlertConfig:
    """Build an :class:`AlertConfig` from the YAML's mapping; ValueError naming what is wrong."""
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
    return AlertConfig(tuple(rules), profiles, soon, min_probability)


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> AlertConfig:
    with Path(path).open(encoding="utf-8") as f:
        return parse_config(yaml.safe_load(f) or {})


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


def _iso(ts: pd.Timestamp | Any) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%S")


def severity_for(level: str, certain: bool, hours_to_breach: float, soon_hours: float) -> str:
    score = (2 if level == "critical" else 1) + int(certain) + int(hours_to_breach <= soon_hours)
    return _SCORE_TO_SEVERITY[score]


def evaluate_metric(
    rule: Rule, thresholds: Mapping[str, float], quantiles: np.ndarray, timestamps: pd.DatetimeIndex,
    origin: pd.Timestamp, current: float | None, soon_hours: float = 2.0, min_probability: float = 0.2,
) -> dict[str, Any] | None:
    """The alert of one rule for one server's forecast, or None when no threshold is reached."""
    q = np.asarray(quantiles, dtype=float)
    label = schema.METRIC_LABELS.get(rule.metric, rule.metric)
    for level in ("critical", "warning"):
        threshold = float(thresholds[level])
        if current is not None and current >= threshold:
            hours, certain, probability = 0.0, True, 1.0
            when = pd.Timestamp(origin)
            predicted = float(q[0, 1])
            message = f"{label} already above {_fmt_value(rule.metric, threshold)} (now {current:.1f})"
        else:
            chance = exceed_probability(q, threshold)
            p50_cross = np.flatnonzero(q[:, 1] >= threshold)
            likely = np.flatnonzero((q[:, 2] >= threshold) & (chance >= min_probability - _EPS))
            if likely.size == 0:
                continue
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
        return {
            "alert_type": rule.alert_type,
            "severity": severity_for(level, certain, hours, soon_hours),
            "level": level,
            "message": message,
            "prediction_time": _iso(when),
            "metric": rule.metric,
            "threshold": round(threshold, 2),
            "current_value": None if current is None else round(float(current), 2),
            "predicted_value": round(predicted, 2),
            "probability": round(probability, 2),
            "hours_to_breach": round(hours, 2),
        }
    return None


def evaluate_forecast(
    server_name: str, profile: str, quantiles: Mapping[str, np.ndarray], timestamps: pd.DatetimeIndex,
    origin: pd.Timestamp, current: Mapping[str, float], config: AlertConfig | None = None,
) -> list[dict[str, Any]]:
    """All alerts for one server: ``quantiles`` metric -> [steps, 3]; ``current`` metric -> last value."""
    cfg = config or load_config()
    out = []
    for rule in cfg.rules:
        if rule.metric not in quantiles:
            continue
        value = current.get(rule.metric)
        alert = evaluate_metric(rule, cfg.thresholds(rule, profile), quantiles[rule.metric], timestamps,
                                origin, None if value is None else float(value), cfg.soon_hours,
                                cfg.min_probability)
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
    """Active alerts, one per (server, alert_type); ``first_seen`` stays while the alert holds."""

    def __init__(self) -> None:
        self._active: dict[tuple[str, str], dict[str, Any]] = {}

    def update(self, server_name: str, alerts: Iterable[Mapping[str, Any]], now: pd.Timestamp | str) -> None:
        """Replace ``server_name``'s alerts with ``alerts`` (the latest evaluation) at time ``now``."""
        stamp = _iso(now)
        fresh = {(server_name, a["alert_type"]): dict(a) for a in alerts}
        for key in [k for k in self._active if k[0] == server_name and k not in fresh]:
            del self._active[key]  # cleared: the forecast no longer reaches a threshold
        for key, alert in fresh.items():
            previous = self._active.get(key)
            alert["first_seen"] = previous["first_seen"] if previous else stamp
            alert["timestamp"] = stamp
            self._active[key] = alert

    def for_server(self, server_name: str) -> list[dict[str, Any]]:
        return [a for (s, _), a in self._active.items() if s == server_name]

    def all(self) -> list[dict[str, Any]]:
        """Active alerts, most severe first, then soonest breach, then server name."""
        return sorted(self._active.values(), key=lambda a: (severity_rank(a["severity"]), a["hours_to_breach"],
                                                            a["server_name"], a["alert_type"]))

    def __len__(self) -> int:
        return len(self._active)
