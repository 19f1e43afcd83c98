"""Validation windows: the forecast origins every evaluation scores, and the model's forecasts on them.

One origin every 2 h (24 steps) from the split's ``cutoff`` to the last origin whose 96-step horizon
is still inside the data, for every server; the encoder is the full 288 steps before the origin (it
may reach back into the training period: that is history, not target).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet

from models import features, schema
from models.tft import predict_dataset

WINDOW_EVERY = 2 * schema.STEPS_PER_HOUR  # one origin every 2 h
TARGETS = features.TARGETS


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
    values, index = predict_dataset(model, ds)
    key = pd.MultiIndex.from_arrays([index[schema.SERVER].astype(str), index[features.TIME_IDX].astype(int)])
    pos = pd.Series(np.arange(len(index)), index=key)
    wanted = pd.MultiIndex.from_arrays([windows[schema.SERVER].astype(str), windows["origin_idx"].astype(int)])
    missing = ~wanted.isin(key)
    if missing.any():
        raise RuntimeError(f"{int(missing.sum())} validation windows got no model forecast")
    return values[pos.loc[wanted].to_numpy()]

