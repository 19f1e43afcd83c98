"""Split, validation windows and metrics: the one place training, promotion and benchmarks evaluate.

Protocol
--------
- **Split by time**: the first 80 % of the timeline trains, the last 20 % validates
  (``cutoff`` = first validation timestamp).
- **Unseen servers**: two servers with different profiles are held out of training entirely
  (:func:`choose_holdout`); they are forecast only from their profile and their own history.
- **Windows**: one forecast origin every 2 h (24 steps) from ``cutoff`` to the last origin whose
  96-step horizon is still inside the data, for every server; the encoder is the full 288 steps
  before the origin (it may reach back into the training period: that is history, not target).
- **Metrics** (P50 for MAE), horizon buckets are *disjoint*: ``1h`` = steps 1-12, ``4h`` = steps
  13-48, ``8h`` = steps 49-96; the name without a bucket is the MAE over all 96 steps.

  ========================================  =====================================================
  ``val_mae_<metric>[_<bucket>]``           TFT on the seen servers' windows
  ``baseline_<name>_mae_<metric>[_<b>]``    baseline on exactly those windows
  ``coverage_p10_p90_<metric>``             share of actuals inside [P10, P90] (ideal 0.8)
  ``unseen_mae_<metric>``, ``seen_mae_<metric>``  TFT on unseen / seen servers' windows
  ``unseen_baseline_<name>_mae_<metric>``   baselines on the unseen servers' windows
  ``val_score``                             mean over targets of MAE / scale (lower is better)
  ``baseline_score_<name>``, ``best_baseline_score``  the same score for each baseline
  ========================================  =====================================================

  ``scale`` of a target is the mean of the three baselines' MAE on the same windows, so every
  score computed on one window set is comparable (the gated promotion relies on it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet

from models import baselines, features, schema
from models.tft import QUANTILES, Forecaster, predict_windows

TRAIN_FRACTION = 0.8
WINDOW_EVERY = 2 * schema.STEPS_PER_HOUR  # one origin every 2 h
N_HOLDOUT = 2
BUCKETS: dict[str, slice] = {"1h": slice(0, 12), "4h": slice(12, 48), "8h": slice(48, 96)}
TARGETS = features.TARGETS


def dataset_fingerprint(records: pd.DataFrame) -> str:
    """A stable hash of the records' contract columns (order-independent of row order)."""
    cols = [c for c in schema.COLUMNS if c in records.columns]
    data = records[cols].sort_values([schema.SERVER, schema.TIMESTAMP]).reset_index(drop=True)
    hashed = pd.util.hash_pandas_object(data, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def choose_holdout(servers: pd.DataFrame, n: int = N_HOLDOUT) -> list[str]:
    """Pick ``n`` servers with different profiles to keep out of training, deterministically.

    ``servers`` has columns server_name and profile. Profiles with several servers are preferred, so
    the held-out servers' profiles are still represented in training.
    """
    table = servers[[schema.SERVER, schema.PROFILE]].drop_duplicates(schema.SERVER)
    table = table.sort_values([schema.PROFILE, schema.SERVER])
    counts = table[schema.PROFILE].value_counts()
    if len(table) <= n:
        raise ValueError(f"need more than {n} servers to hold {n} out")
    chosen: list[str] = []
    for need_several in (True, False):
        for profile in sorted(counts.index):
            if len(chosen) == n:
                break
            if need_several and counts[profile] < 2:
                continue
            if any(table.set_index(schema.SERVER).loc[c, schema.PROFILE] == profile for c in chosen):
                continue
            chosen.append(str(table[table[schema.PROFILE] == profile][schema.SERVER].iloc[-1]))
    return chosen


@dataclass
class Split:
    cutoff: pd.Timestamp  # first timestamp of the validation period
    seen: list[str]
    unseen: list[str]
    fingerprint: str

    def train_records(self, records: pd.DataFrame) -> pd.DataFrame:
        mask = records[schema.SERVER].isin(self.seen) & (records[schema.TIMESTAMP] < self.cutoff)
        return records[mask].reset_index(drop=True)

    def as_params(self) -> dict[str, Any]:
        return {
            "split_cutoff": str(self.cutoff),
            "unseen_servers": ",".join(self.unseen),
            "n_seen_servers": len(self.seen),
            "dataset_fingerprint": self.fingerprint,
        }


def make_split(
    records: pd.DataFrame, train_fraction: float = TRAIN_FRACTION, holdout: Sequence[str] | None = None
) -> Split:
    times = np.sort(records[schema.TIMESTAMP].unique())
    if len(times) < 2:
        raise ValueError("records span fewer than two timestamps")
    cutoff = pd.Timestamp(times[int(len(times) * train_fraction)])
    servers = records[[schema.SERVER, schema.PROFILE]].drop_duplicates(schema.SERVER)
    unseen = list(holdout) if holdout is not None else choose_holdout(servers)
    seen = sorted(set(servers[schema.SERVER]) - set(unseen))
    return Split(cutoff=cutoff, seen=seen, unseen=sorted(unseen), fingerprint=dataset_fingerprint(records))


# --- windows -----------------------------------------------------------------------------------------
@dataclass
class SeriesArrays:
    """Dense per-server arrays of the four targets, indexed by ``time_idx``."""

    start: dict[str, int]
    values: dict[str, np.ndarray]  # [steps, targets]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> SeriesArrays:
        start: dict[str, int] = {}
        values: dict[str, np.ndarray] = {}
        for server, g in frame.groupby(schema.SERVER, sort=True):
            start[str(server)] = int(g[features.TIME_IDX].iloc[0])
            values[str(server)] = g[TARGETS].to_numpy(dtype=np.float64)
        return cls(start, values)

    def slab(self, windows: pd.DataFrame, before: int, after: int) -> np.ndarray:
        """[windows, before + after, targets]: ``before`` steps before each origin, ``after`` from it."""
        out = np.empty((len(windows), before + after, len(TARGETS)))
        for i, (server, origin) in enumerate(zip(windows[schema.SERVER], windows["origin_idx"], strict=True)):
            pos = int(origin) - self.start[server]
            out[i] = self.values[server][pos - before : pos + after]
        return out


def validation_windows(
    frame: pd.DataFrame,
    cutoff: pd.Timestamp,
    every: int = WINDOW_EVERY,
    encoder: int = schema.ENCODER_STEPS,
    horizon: int = schema.HORIZON_STEPS,
    unseen: Sequence[str] = (),
) -> pd.DataFrame:
    """Origins (time_idx of the first forecast step) every ``every`` steps from ``cutoff``, per server.

    Columns: server_name, profile, origin_idx, origin (timestamp of the first forecast step), unseen.
    """
    cutoff_idx = int(features.time_index(pd.DatetimeIndex([cutoff]))[0])
    rows: list[pd.DataFrame] = []
    for server, g in frame.groupby(schema.SERVER, sort=True):
        first, last = int(g[features.TIME_IDX].iloc[0]), int(g[features.TIME_IDX].iloc[-1])
        lo = max(cutoff_idx, first + encoder)
        lo = cutoff_idx + -(-(lo - cutoff_idx) // every) * every  # stay on the cutoff + k*every grid
        origins = np.arange(lo, last - horizon + 2, every, dtype=np.int64)
        if len(origins) == 0:
            continue
        rows.append(pd.DataFrame({
            schema.SERVER: str(server),
            schema.PROFILE: g[schema.PROFILE].iloc[-1],
            "origin_idx": origins,
        }))
    if not rows:
        raise ValueError("no validation window fits: the validation period is shorter than the horizon")
    out = pd.concat(rows, ignore_index=True)
    out["origin"] = pd.to_datetime(out["origin_idx"] * schema.STEP.value)
    out["unseen"] = out[schema.SERVER].isin(list(unseen))
    return out


def windows_dataset(parameters: dict[str, Any], frame: pd.DataFrame, windows: pd.DataFrame) -> TimeSeriesDataSet:
    """The library dataset over exactly ``windows`` (full encoder, full horizon), with the model's encoders."""
    encoder = int(parameters["max_encoder_length"])
    horizon = int(parameters["max_prediction_length"])
    first_origin = int(windows["origin_idx"].min())
    servers = windows[schema.SERVER].unique()
    data = frame[frame[schema.SERVER].isin(servers)
                 & (frame[features.TIME_IDX] >= first_origin - encoder)].reset_index(drop=True)
    ds = features.dataset_from_parameters(parameters, data, predict=False, min_prediction_idx=first_origin)
    wanted = set(zip(windows[schema.SERVER], windows["origin_idx"].astype(int), strict=True))

    def keep(index: pd.DataFrame) -> pd.Series:
        full = ((index["time_idx_first_prediction"] - index["time_idx_first"] == encoder)
                & (index["time_idx_last"] - index["time_idx_first_prediction"] == horizon - 1))
        pairs = [(str(s), int(t)) in wanted
                 for s, t in zip(index[schema.SERVER], index["time_idx_first_prediction"], strict=True)]
        return full & np.asarray(pairs, dtype=bool)

    return ds.filter(keep)


def model_window_forecasts(
    model: TemporalFusionTransformer, frame: pd.DataFrame, windows: pd.DataFrame
) -> np.ndarray:
    """[windows, horizon, targets, quantiles] in the order of ``windows``."""
    ds = windows_dataset(model.dataset_parameters, frame, windows)
    values, index = predict_windows(model, ds)  # fast path (windows as tensors, fused forward), same values
    key = pd.MultiIndex.from_arrays([index[schema.SERVER].astype(str), index[features.TIME_IDX].astype(int)])
    pos = pd.Series(np.arange(len(index)), index=key)
    wanted = pd.MultiIndex.from_arrays([windows[schema.SERVER].astype(str), windows["origin_idx"].astype(int)])
    missing = ~wanted.isin(key)
    if missing.any():
        raise RuntimeError(f"{int(missing.sum())} validation windows got no model forecast")
    return values[pos.loc[wanted].to_numpy()]


# --- metrics -----------------------------------------------------------------------------------------
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


# --- artifacts ---------------------------------------------------------------------------------------
def plot_forecasts(evaluation: Evaluation, frame: pd.DataFrame, n_servers: int = 4) -> dict[str, Any]:
    """Forecast-vs-actual figures (P50 with P10-P90 band, 24 h of history) for a few servers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = evaluation.windows.reset_index(drop=True)
    picks: list[int] = []
    for flag in (True, False):  # unseen servers first, then one per profile
        sub = w[w["unseen"] == flag]
        for _, g in sub.groupby(schema.PROFILE if not flag else schema.SERVER, sort=True):
            picks.append(int(g.index[len(g) // 2]))
    picks = picks[:n_servers]
    arrays = SeriesArrays.from_frame(frame)
    figures: dict[str, Any] = {}
    for i in picks:
        row = w.iloc[[i]]
        hist = arrays.slab(row, schema.ENCODER_STEPS, 0)[0]
        fig, axes = plt.subplots(len(TARGETS), 1, figsize=(10, 9), sharex=True)
        x_hist = np.arange(-schema.ENCODER_STEPS, 0)
        x_fut = np.arange(schema.HORIZON_STEPS)
        for j, m in enumerate(TARGETS):
            ax = axes[j]
            ax.plot(x_hist, hist[:, j], color="0.4", lw=0.8, label="history")
            ax.plot(x_fut, evaluation.actuals[i, :, j], color="k", lw=0.9, label="actual")
            q = evaluation.forecasts[i, :, j, :]
            ax.fill_between(x_fut, q[:, 0], q[:, -1], alpha=0.3, color="tab:blue", label="P10-P90")
            ax.plot(x_fut, q[:, 1], color="tab:blue", lw=1.2, label="P50")
            ax.set_ylabel(schema.METRIC_LABELS[m])
        axes[0].legend(loc="upper left", fontsize=7, ncol=4)
        axes[-1].set_xlabel("steps from origin (5 min)")
        server = str(row[schema.SERVER].iloc[0])
        tag = "unseen" if bool(row["unseen"].iloc[0]) else "seen"
        fig.suptitle(f"{server} ({row[schema.PROFILE].iloc[0]}, {tag}) origin {row['origin'].iloc[0]}")
        fig.tight_layout()
        figures[f"forecast_{server}.png"] = fig
    return figures


def variable_importance(model: TemporalFusionTransformer, frame: pd.DataFrame, windows: pd.DataFrame,
                        max_windows: int = 512) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """TFT variable importance (static / encoder / decoder) over some windows, and its figures."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    sample = windows.iloc[np.linspace(0, len(windows) - 1, min(max_windows, len(windows))).astype(int)]
    ds = windows_dataset(model.dataset_parameters, frame, sample.drop_duplicates([schema.SERVER, "origin_idx"]))
    x, _ = next(iter(ds.to_dataloader(train=False, batch_size=max_windows, num_workers=0)))
    model.eval()
    with torch.inference_mode():
        out = model(x)
        interp = model.interpret_output(out, reduction="sum")
    figures = model.plot_interpretation(interp)

    def named(values: Any, names: list[str]) -> dict[str, float]:
        v = values.detach().cpu().numpy()
        v = v / v.sum() if v.sum() > 0 else v
        return {n: float(x) for n, x in zip(names, v, strict=True)}

    importance = {
        "static": named(interp["static_variables"], list(model.static_variables)),
        "encoder": named(interp["encoder_variables"], list(model.encoder_variables)),
        "decoder": named(interp["decoder_variables"], list(model.decoder_variables)),
    }
    return importance, {f"importance_{k}.png": f for k, f in figures.items()}


# --- one experiment: split, frames and windows built once ---------------------------------------------
@dataclass
class Experiment:
    """Everything training, evaluation and promotion need from one dataset, built once
    (the Dagster asset ``experiment_split``)."""

    split: Split
    frame: pd.DataFrame  # all servers, whole timeline, prepared (features.prepare_frame)
    train_frame: pd.DataFrame  # seen servers before the cutoff
    windows: pd.DataFrame  # validation windows, seen and unseen servers
    n_records: int  # rows of the records it was built from

    def val_dataset_builder(self, parameters: dict[str, Any]) -> TimeSeriesDataSet:
        """Validation-loss dataset for the Lightning loop: the seen servers' validation windows."""
        seen = self.windows[~self.windows["unseen"]]
        return windows_dataset(parameters, self.frame, seen)

    def evaluate(self, model: TemporalFusionTransformer) -> Evaluation:
        """:func:`evaluate` on this experiment's frame and windows."""
        return evaluate(model, self.frame, self.windows)

    def rescore(self, forecaster: Forecaster) -> float:
        """``val_score`` of ``forecaster`` on these windows: how the gated promotion re-scores the champion."""
        return self.evaluate(forecaster.model).metrics["val_score"]

    def check_same_split(self, upstream: str, fingerprint: str) -> None:
        """ValueError when ``upstream`` (e.g. an evaluation) was computed on another dataset than this split's."""
        if fingerprint != self.split.fingerprint:
            raise ValueError(f"{upstream} was computed on dataset {fingerprint}, this split is on "
                             f"{self.split.fingerprint}: compute {upstream} again on this split")

    def summary(self) -> dict[str, Any]:
        """What the split is, in plain values (Dagster metadata, logs)."""
        unseen = self.windows["unseen"].to_numpy(dtype=bool)
        return {
            "cutoff": self.split.cutoff.isoformat(),
            "seen_servers": list(self.split.seen),
            "unseen_servers": list(self.split.unseen),
            "n_records": self.n_records,
            "n_train_rows": len(self.train_frame),
            "n_windows": int((~unseen).sum()),
            "n_unseen_windows": int(unseen.sum()),
            "fingerprint": self.split.fingerprint,
        }


def prepare_experiment(
    records: pd.DataFrame, train_fraction: float = TRAIN_FRACTION, holdout: Sequence[str] | None = None
) -> Experiment:
    split = make_split(records, train_fraction, holdout)
    frame = features.prepare_frame(records)
    train_frame = frame[frame[schema.SERVER].isin(split.seen)
                        & (frame[schema.TIMESTAMP] < split.cutoff)].reset_index(drop=True)
    windows = validation_windows(frame, split.cutoff, unseen=split.unseen)
    return Experiment(split=split, frame=frame, train_frame=train_frame, windows=windows, n_records=len(records))
