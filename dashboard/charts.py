"""Vega-Lite specs for the dashboard's charts, as plain dicts.

Plain specs (rather than Altair objects) keep a rerun cheap: no schema validation per draw, and the data
goes to the browser as one Arrow table that Streamlit serialises. The builders are pure and tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dashboard.data import HeatmapMatrix, metric_label
from models.schema import PERCENT_METRICS

RISK_COLOURS: dict[str, str] = {"critical": "#b71c1c", "high": "#e65100", "medium": "#f9a825", "low": "#2e7d32"}
THRESHOLD_COLOURS: tuple[str, ...] = ("#f9a825", "#e65100", "#b71c1c", "#6a1b9a")
MAX_ROW_PX = 20
MIN_ROW_PX = 3
TARGET_HEIGHT_PX = 640


def unit(metric: str) -> str:
    return "%" if metric in PERCENT_METRICS else ""


# green while comfortable, yellow from half, orange from three quarters, red at the top of the scale
COLOUR_STOPS: tuple[float, ...] = (0.0, 0.5, 0.75, 0.9, 1.0)
COLOUR_RANGE: tuple[str, ...] = ("#e8f5e9", "#9ccc65", "#fdd835", "#fb8c00", "#b71c1c")


def colour_domain(matrix: HeatmapMatrix) -> list[float]:
    """Colour stops: over 0–100 for percentages; over 0 to the fleet's peak (at least 1) for load."""
    top = 100.0
    if matrix.metric not in PERCENT_METRICS:
        finite = matrix.values[np.isfinite(matrix.values)]
        top = max(1.0, round(float(finite.max()), 2)) if finite.size else 1.0
    return [round(top * stop, 2) for stop in COLOUR_STOPS]


def row_px(n_servers: int) -> int:
    """Row height: 20 px for a small fleet, shrinking so 1,000 servers stay a scrollable 3,000 px."""
    if n_servers <= 0:
        return MAX_ROW_PX
    return int(max(MIN_ROW_PX, min(MAX_ROW_PX, TARGET_HEIGHT_PX // n_servers)))


def heatmap_spec(matrix: HeatmapMatrix) -> dict[str, Any]:
    """One rect layer over servers × buckets, rows in the matrix's order (most at risk on top)."""
    n_servers, n_cols = matrix.shape
    step = row_px(n_servers)
    label = metric_label(matrix.metric)
    suffix = unit(matrix.metric)
    has_actual = "actual" in matrix.kinds
    x_title = (
        "hours from now: actual (left of the line) · P50 forecast (right)" if has_actual else "hours ahead (P50)"
    )
    rect: dict[str, Any] = {
        "mark": {"type": "rect", "stroke": "white", "strokeWidth": 0.5 if step >= 8 else 0},
        "encoding": {
            "y": {
                "field": "server",
                "type": "nominal",
                "sort": None,
                "title": None,
                "axis": {"labels": step >= 9, "ticks": step >= 9, "labelLimit": 180},
            },
            "x": {
                "field": "offset",
                "type": "ordinal",
                "sort": list(matrix.columns),
                "title": x_title,
                "axis": {"labelAngle": 0, "orient": "top"},
            },
            "color": {
                "field": "value",
                "type": "quantitative",
                "title": f"{label} {suffix}".strip(),
                "scale": {"domain": colour_domain(matrix), "range": list(COLOUR_RANGE), "clamp": True},
            },
            "tooltip": [
                {"field": "server", "type": "nominal", "title": "server"},
                {"field": "profile", "type": "nominal", "title": "profile"},
                {"field": "risk", "type": "nominal", "title": "risk"},
                {"field": "kind", "type": "nominal", "title": "value"},
                {"field": "span", "type": "nominal", "title": "time"},
                {"field": "value", "type": "quantitative", "title": f"peak {label}", "format": ".1f"},
            ],
        },
    }
    spec: dict[str, Any] = {
        "height": {"step": step},
        "config": {"view": {"stroke": None}, "axis": {"grid": False}},
    }
    if has_actual and n_cols:
        first_forecast = matrix.columns[matrix.kinds.index("forecast")]
        now_rule = {
            "data": {"values": [{"offset": first_forecast}]},
            "mark": {"type": "rule", "color": "#1f2937", "strokeWidth": 2},
            # the same sort as the rect layer: layers with differing sorts lose theirs when unioned
            "encoding": {"x": {"field": "offset", "type": "ordinal", "sort": list(matrix.columns), "bandPosition": 0}},
        }
        spec["layer"] = [rect, now_rule]
    else:
        spec.update(rect)
    return spec


def detail_spec(
    metric: str, origin: str | None, thresholds: list[tuple[str, float]], y_max: float | None = None
) -> dict[str, Any]:
    """History, P50 and the P10–P90 band of one metric, with threshold rules and a 'now' rule.

    Expects the data frame of :func:`dashboard.data.FleetForecasts.server_frames` merged on ``time``
    (columns ``time, actual, p10, p50, p90``), passed to Streamlit as the chart's data.
    """
    label = metric_label(metric)
    suffix = unit(metric)
    y_scale: dict[str, Any] = {"zero": True}
    if metric in PERCENT_METRICS:
        y_scale["domain"] = [0, 100]
    elif y_max is not None:
        y_scale["domainMax"] = y_max
    x = {"field": "time", "type": "temporal", "title": None, "axis": {"format": "%H:%M"}}
    y_title = f"{label} {suffix}".strip()
    layers: list[dict[str, Any]] = [
        {
            "mark": {"type": "area", "opacity": 0.25, "color": "#1565c0"},
            "encoding": {
                "x": x,
                "y": {"field": "p10", "type": "quantitative", "scale": y_scale, "title": y_title},
                "y2": {"field": "p90"},
                "tooltip": [
                    {"field": "time", "type": "temporal", "format": "%H:%M", "title": "time (UTC)"},
                    {"field": "p10", "type": "quantitative", "format": ".1f", "title": "P10"},
                    {"field": "p50", "type": "quantitative", "format": ".1f", "title": "P50"},
                    {"field": "p90", "type": "quantitative", "format": ".1f", "title": "P90"},
                ],
            },
        },
        {
            "mark": {"type": "line", "color": "#1565c0", "strokeDash": [5, 3], "strokeWidth": 2},
            "encoding": {"x": x, "y": {"field": "p50", "type": "quantitative"}},
        },
        {
            "mark": {"type": "line", "color": "#37474f", "strokeWidth": 1.5},
            "encoding": {
                "x": x,
                "y": {"field": "actual", "type": "quantitative"},
                "tooltip": [
                    {"field": "time", "type": "temporal", "format": "%H:%M", "title": "time (UTC)"},
                    {"field": "actual", "type": "quantitative", "format": ".1f", "title": "actual"},
                ],
            },
        },
    ]
    if thresholds:
        values = [{"threshold": float(v), "rule": f"{name} {v:g}{suffix}"} for name, v in thresholds]
        colours = [THRESHOLD_COLOURS[i % len(THRESHOLD_COLOURS)] for i in range(len(values))]
        layers.append(
            {
                "data": {"values": values},
                "mark": {"type": "rule", "strokeDash": [2, 2], "strokeWidth": 1.5},
                "encoding": {
                    "y": {"field": "threshold", "type": "quantitative"},
                    "color": {
                        "field": "rule",
                        "type": "nominal",
                        "scale": {"domain": [v["rule"] for v in values], "range": colours},
                        "legend": {"title": None, "orient": "bottom"},
                    },
                    "tooltip": [{"field": "rule", "type": "nominal", "title": "threshold"}],
                },
            }
        )
    if origin:
        layers.append(
            {
                "data": {"values": [{"time": origin}]},
                "mark": {"type": "rule", "color": "#9e9e9e", "strokeWidth": 1},
                "encoding": {"x": {"field": "time", "type": "temporal"}},
            }
        )
    return {"title": {"text": label, "anchor": "start"}, "height": 220, "layer": layers}
