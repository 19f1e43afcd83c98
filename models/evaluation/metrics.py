"""Metrics: MAE per target and horizon bucket, P10-P90 coverage, the baselines on the same windows.

Horizon buckets are *disjoint*: ``1h`` = steps 1-12, ``4h`` = steps 13-48, ``8h`` = steps 49-96; the
name without a bucket is the MAE over all 96 steps (P50 for the TFT). The metric names are listed in
:mod:`models.evaluation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pytorch_forecasting import TemporalFusionTransformer

from models import baselines, schema
from models.evaluation.windows import TARGETS, SeriesArrays, model_window_forecasts
from models.tft import QUANTILES

BUCKETS: dict[str, slice] = {"1h": slice(0, 12), "4h": slice(12, 48), "8h": slice(48, 96)}


def _mae(forecast: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """MAE per target overall and per bucket; keys '<metric>' and '<metric>_<bucket>'."""
    err = np.abs(forecast - actual)
    out: dict[str, float] = {}
    for i, m in enumerate(TARGETS):
        out[m] = float(err[:, :, i].mean()) if len(err) else float("nan")
        for b, sl in BUCKETS.items():
            out[f"{m}_{b}"] = float(err[:, sl, i].mean()) if len(err) else float("nan")
    return out


def score(mae: dict[str, float], scale: dict[str, float]) -> float:
    """Mean over targets of MAE / scale (scale: mean baseline MAE of that target on the same windows)."""
    return float(np.mean([mae[m] / max(scale[m], 1e-9) for m in TARGETS]))


@dataclass
class Evaluation:
    metrics: dict[str, float]
    table: pd.DataFrame  # model, servers, metric, bucket, mae (+ coverage rows)
    windows: pd.DataFrame
    actuals: np.ndarray  # [windows, horizon, targets]
    forecasts: np.ndarray  # [windows, horizon, targets, quantiles]
    baseline_forecasts: dict[str, np.ndarray] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)


def baseline_table(frame: pd.DataFrame, windows: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(actuals, {baseline: forecasts}) on ``windows``."""
    arrays = SeriesArrays.from_frame(frame)
    slab = arrays.slab(windows, schema.ENCODER_STEPS, schema.HORIZON_STEPS)
    history, actual = slab[:, : schema.ENCODER_STEPS], slab[:, schema.ENCODER_STEPS :]
    return actual, {name: fn(history, schema.HORIZON_STEPS) for name, fn in baselines.BASELINES.items()}


def compute_metrics(
    forecasts: np.ndarray, actuals: np.ndarray, base: dict[str, np.ndarray], unseen: np.ndarray
) -> tuple[dict[str, float], pd.DataFrame, dict[str, float]]:
    """Metrics dict (stable names, see module doc), long table, per-target scale."""
    seen = ~unseen
    p50 = forecasts[..., QUANTILES.index(0.5)]
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []

    def add(model: str, servers: str, mae: dict[str, float]) -> None:
        for m in TARGETS:
            for b in ("all", *BUCKETS):
                key = m if b == "all" else f"{m}_{b}"
                rows.append({"model": model, "servers": servers, "metric": m, "bucket": b,
                             "stat": "mae", "value": mae[key]})

    tft_seen = _mae(p50[seen], actuals[seen])
    add("tft", "seen", tft_seen)
    for key, v in tft_seen.items():
        metrics[f"val_mae_{key}"] = v
    base_seen = {name: _mae(f[seen], actuals[seen]) for name, f in base.items()}
    for name, mae in base_seen.items():
        add(name, "seen", mae)
        for key, v in mae.items():
            metrics[f"baseline_{name}_mae_{key}"] = v
    scale = {m: float(np.mean([base_seen[b][m] for b in base_seen])) for m in TARGETS}
    metrics["val_score"] = score(tft_seen, scale)
    for name, mae in base_seen.items():
        metrics[f"baseline_score_{name}"] = score(mae, scale)
    metrics["best_baseline_score"] = min(metrics[f"baseline_score_{b}"] for b in base_seen)

    lo, hi = forecasts[..., 0], forecasts[..., -1]
    inside = (actuals >= lo) & (actuals <= hi)
    for i, m in enumerate(TARGETS):
        metrics[f"coverage_p10_p90_{m}"] = float(inside[seen][:, :, i].mean()) if seen.any() else float("nan")
        rows.append({"model": "tft", "servers": "seen", "metric": m, "bucket": "all",
                     "stat": "coverage_p10_p90", "value": metrics[f"coverage_p10_p90_{m}"]})
        metrics[f"seen_mae_{m}"] = tft_seen[m]
    if unseen.any():
        tft_unseen = _mae(p50[unseen], actuals[unseen])
        add("tft", "unseen", tft_unseen)
        for i, m in enumerate(TARGETS):
            metrics[f"unseen_mae_{m}"] = tft_unseen[m]
            metrics[f"unseen_coverage_p10_p90_{m}"] = float(inside[unseen][:, :, i].mean())
        for name, f in base.items():
            mae = _mae(f[unseen], actuals[unseen])
            add(name, "unseen", mae)
            for m in TARGETS:
                metrics[f"unseen_baseline_{name}_mae_{m}"] = mae[m]
    metrics["n_windows"] = float(seen.sum())
    metrics["n_unseen_windows"] = float(unseen.sum())
    return metrics, pd.DataFrame(rows), scale


def evaluate(model: TemporalFusionTransformer, frame: pd.DataFrame, windows: pd.DataFrame) -> Evaluation:
    """Evaluate ``model`` and the baselines on exactly ``windows`` of ``frame`` (a prepared frame)."""
    actuals, base = baseline_table(frame, windows)
    forecasts = model_window_forecasts(model, frame, windows)
    unseen = windows["unseen"].to_numpy(dtype=bool)
    metrics, table, scale = compute_metrics(forecasts, actuals, base, unseen)
    return Evaluation(metrics=metrics, table=table, windows=windows, actuals=actuals, forecasts=forecasts,
                      baseline_forecasts=base, scale=scale)


def beats_baselines(metrics: dict[str, float], targets: Sequence[str] = ("cpu_percent", "memory_percent")
                    ) -> dict[str, bool]:
    """Per target: does the TFT's overall P50 MAE beat the best baseline's (seen servers)?"""
    out: dict[str, bool] = {}
    for m in targets:
        best = min(metrics[f"baseline_{b}_mae_{m}"] for b in baselines.BASELINES)
        out[m] = metrics[f"val_mae_{m}"] < best
    return out

