"""The one encoding path from fleet records to the TFT's ``TimeSeriesDataSet``.

Training builds its dataset with :func:`build_training_dataset`; every later use (validation
windows, serving) rebuilds inputs with :func:`dataset_from_parameters` from the parameters the
trained model carries (``model.dataset_parameters``), so encoders and scalers are exactly the
ones fitted at training time. Nothing here knows about Lightning or MLflow.

Inputs the model sees:

- static categorical ``profile`` (``NaNLabelEncoder(add_nan=True)``; unknown profiles are mapped to
  ``generic`` by :func:`models.schema.normalize_profile` first);
- known reals: hour of day and day of week as sin/cos pairs (plus the library's
  ``relative_time_idx`` and ``encoder_length``);
- observed (unknown) inputs: the four metrics and the categorical ``status``;
- targets are scaled per window (:func:`target_normalizer`): the network sees and predicts each
  metric relative to the window's own level, so forecasts start from where a series is now.

``server_name`` is only the group id: it is never an input, so a server the model never saw is
forecast from its profile and its own history.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.data.encoders import EncoderNormalizer, MultiNormalizer, NaNLabelEncoder

from models import grid, schema

TIME_IDX = "time_idx"
TARGETS: list[str] = list(schema.METRICS)
KNOWN_REALS: list[str] = ["hour_sin", "hour_cos", "dow_sin", "dow_cos"]
_EPOCH = pd.Timestamp("1970-01-01")
_STEP_NS = int(schema.STEP.value)


def time_index(timestamps: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Integer 5-minute step index since the Unix epoch (timestamps are floored to the grid)."""
    values = pd.DatetimeIndex(timestamps).as_unit("ns").asi8  # Parquet/Arrow may hand back us or ms
    return (values - _EPOCH.value) // _STEP_NS


def add_time_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``time_idx`` and the known calendar features; returns a new frame."""
    out = frame.copy()
    ts = pd.DatetimeIndex(out[schema.TIMESTAMP])
    out[TIME_IDX] = time_index(ts)
    day_fraction = (ts.hour * 60 + ts.minute).to_numpy() / (24 * 60)
    week_fraction = (ts.dayofweek.to_numpy() + day_fraction) / 7
    out["hour_sin"] = np.sin(2 * np.pi * day_fraction).astype(np.float32)
    out["hour_cos"] = np.cos(2 * np.pi * day_fraction).astype(np.float32)
    out["dow_sin"] = np.sin(2 * np.pi * week_fraction).astype(np.float32)
    out["dow_cos"] = np.cos(2 * np.pi * week_fraction).astype(np.float32)
    return out


def clean_records(records: pd.DataFrame) -> pd.DataFrame:
    """Contract columns only, typed, profiles normalised, sorted, duplicates (server, time) dropped."""
    missing = [c for c in schema.COLUMNS if c not in records.columns and c not in (schema.STATUS,)]
    if missing:
        raise ValueError(f"records are missing columns: {', '.join(missing)}")
    out = records.copy()
    if schema.STATUS not in out.columns:
        out[schema.STATUS] = schema.STATUSES[0]
    if schema.PROFILE not in out.columns:
        out[schema.PROFILE] = schema.DEFAULT_PROFILE
    out = out[list(schema.COLUMNS)]
    out[schema.TIMESTAMP] = pd.to_datetime(out[schema.TIMESTAMP]).dt.floor(schema.STEP_FREQ).astype("datetime64[ns]")
    out[schema.SERVER] = out[schema.SERVER].astype(str)
    out[schema.PROFILE] = [schema.normalize_profile(p)[0] for p in out[schema.PROFILE].astype(str)]
    status = out[schema.STATUS].astype(str).str.lower()
    out[schema.STATUS] = status.where(status.isin(schema.STATUSES), schema.STATUSES[0])
    for metric in schema.METRICS:
        out[metric] = pd.to_numeric(out[metric], errors="coerce").astype(np.float32)
    out = out.drop_duplicates([schema.SERVER, schema.TIMESTAMP], keep="last")
    return out.sort_values([schema.SERVER, schema.TIMESTAMP], kind="stable").reset_index(drop=True)


def regularize(records: pd.DataFrame, segments: grid.Segments = "last") -> pd.DataFrame:
    """Put each server on the regular 5-minute grid with the one alignment policy (:func:`models.grid.align`).

    Buckets averaged, gaps up to 15 min interpolated, a longer gap cuts the series: ``segments="last"``
    keeps the contiguous tail (what a forecast reads), ``"all"`` keeps every segment as its own series
    (what training reads). Returns :func:`clean_records`-clean rows (float32 metrics).
    """
    if records.empty:
        return records.copy()
    return clean_records(grid.align(records, segments=segments))


def prepare_frame(records: pd.DataFrame) -> pd.DataFrame:
    """Records (schema.COLUMNS, long format) -> model frame: on the grid (every segment), with time features."""
    return add_time_features(regularize(records, segments="all"))


def extend_future(history: pd.DataFrame, steps: int = schema.HORIZON_STEPS) -> pd.DataFrame:
    """Append ``steps`` future rows per server (calendar features known, observed values carried).

    The TFT's decoder reads only known inputs, so the carried metric/status values of the future
    rows are placeholders that never reach the network. Input: a clean, regular frame.
    """
    last = history.groupby(schema.SERVER, sort=True).tail(1)
    n = len(last)
    offsets = np.tile(np.arange(1, steps + 1), n)
    future = last.loc[last.index.repeat(steps)].reset_index(drop=True)
    future[schema.TIMESTAMP] = future[schema.TIMESTAMP] + pd.to_timedelta(offsets * schema.STEP_MINUTES,
                                                                           unit="min")
    out = pd.concat([history[list(schema.COLUMNS)], future[list(schema.COLUMNS)]], ignore_index=True)
    return out.sort_values([schema.SERVER, schema.TIMESTAMP], kind="stable").reset_index(drop=True)


# per-window scaling: the centre is the median of the last hour, the spread a robust (IQR) one with a floor
CENTER_STEPS = schema.STEPS_PER_HOUR
IQR_TO_STD = 1.349  # the interquartile range of a normal distribution in standard deviations
# smallest spread a window is scaled by, in metric units: a flat window (idle server, constant companion
# metric) is then forecast as flat, and one spike in it does not blow up the scaled history
SCALE_FLOORS: dict[str, float] = {"cpu_percent": 0.5, "memory_percent": 0.5, "disk_percent": 0.5,
                                  "load_average": 0.05}
INPUT_CLIP = 10.0  # scaled history values fed to the network are clipped to +-INPUT_CLIP spreads


class RobustWindowNormalizer(EncoderNormalizer):
    """Per-window target scaling that stays sane on real series (an ``EncoderNormalizer``, fitted per window).

    centre = median of the window's last ``max_length[0]`` steps (where the server is now);
    scale = max(IQR of the whole window / 1.349, ``floor``) (a standard deviation on normal data, but one
    spike in a flat window moves neither, and a flat window is not divided by ~0).
    :meth:`transform` (the network's scaled history) clips at +-``clip`` spreads; the inverse transform
    (forecasts back to metric units) is the library's ``y * scale + centre``, unclipped.

    Being an ``EncoderNormalizer``, ``TimeSeriesDataSet`` fits it on each sample's encoder window and
    :class:`models.inference.TensorBuilder` on each server's window (batched rows, same code).
    """

    def __init__(self, method: str = "robust", center: bool = True,
                 max_length: int | list[int] | None = None, transformation: Any = None,
                 method_kwargs: dict[str, Any] | None = None, floor: float = 0.5,
                 clip: float = INPUT_CLIP) -> None:
        super().__init__(method=method, center=center, max_length=max_length, transformation=transformation,
                         method_kwargs=method_kwargs)
        self.floor = floor
        self.clip = clip

    def _set_parameters(self, y_center: Any, y_scale: Any) -> None:
        if isinstance(y_center, torch.Tensor):
            yc, ys = y_center.float(), y_scale.float()
            self.center_ = torch.quantile(yc, 0.5, dim=-1).to(y_center.dtype)
            q = torch.quantile(ys, torch.tensor([0.25, 0.75], dtype=ys.dtype), dim=-1)
            self.scale_ = torch.clamp((q[1] - q[0]) / IQR_TO_STD, min=self.floor).to(y_scale.dtype)
        else:
            yc, ys = np.asarray(y_center, dtype=np.float64), np.asarray(y_scale, dtype=np.float64)
            self.center_ = np.quantile(yc, 0.5, axis=-1)
            q25, q75 = np.quantile(ys, [0.25, 0.75], axis=-1)
            self.scale_ = np.maximum((q75 - q25) / IQR_TO_STD, self.floor)

    def transform(self, y: Any, return_norm: bool = False, target_scale: Any = None) -> Any:
        out = super().transform(y, return_norm=return_norm, target_scale=target_scale)
        if return_norm:
            scaled, norm = out
            return self._clip(scaled), norm
        return self._clip(out)

    def _clip(self, values: Any) -> Any:
        if isinstance(values, torch.Tensor):
            return values.clamp(-self.clip, self.clip)
        if isinstance(values, pd.Series):
            return values.clip(-self.clip, self.clip)
        return np.clip(values, -self.clip, self.clip)


def target_normalizer() -> MultiNormalizer:
    """One :class:`RobustWindowNormalizer` per target, fitted on each window's own history (not per server).

    Centre = median of the window's last hour, scale = robust spread of the whole window with a
    per-metric floor (:data:`SCALE_FLOORS`). The network predicts the deviation from that level in
    those units, so it starts from where the series is now, for any server.
    """
    return MultiNormalizer([
        RobustWindowNormalizer(max_length=[CENTER_STEPS, schema.ENCODER_STEPS], floor=SCALE_FLOORS[t])
        for t in TARGETS
    ])


def dataset_kwargs(
    max_encoder_length: int = schema.ENCODER_STEPS,
    max_prediction_length: int = schema.HORIZON_STEPS,
    min_encoder_length: int = schema.MIN_ENCODER_STEPS,
) -> dict[str, Any]:
    """Constructor arguments of the training ``TimeSeriesDataSet`` (the one place they are written)."""
    return dict(
        time_idx=TIME_IDX,
        target=list(TARGETS),
        group_ids=[schema.SERVER],
        max_encoder_length=max_encoder_length,
        min_encoder_length=min_encoder_length,
        max_prediction_length=max_prediction_length,
        min_prediction_length=max_prediction_length,
        static_categoricals=[schema.PROFILE],
        time_varying_known_reals=list(KNOWN_REALS),
        time_varying_unknown_categoricals=[schema.STATUS],
        time_varying_unknown_reals=list(TARGETS),
        categorical_encoders={
            schema.SERVER: NaNLabelEncoder(add_nan=True),
            # fitted on the contract's full category lists, not just the ones in this slice
            schema.PROFILE: NaNLabelEncoder(add_nan=True).fit(pd.Series(schema.PROFILES)),
            schema.STATUS: NaNLabelEncoder(add_nan=True).fit(pd.Series(schema.STATUSES)),
        },
        # per-window scaling (see target_normalizer): the forecast is anchored on the window's own
        # recent level and nothing depends on which server it is
        target_normalizer=target_normalizer(),
        add_relative_time_idx=True,
        add_encoder_length=True,
        add_target_scales=False,
        randomize_length=True,  # teaches short histories (down to 1 h) for newly added servers
        allow_missing_timesteps=False,
    )


def build_training_dataset(frame: pd.DataFrame, **length_kwargs: int) -> TimeSeriesDataSet:
    """Fit encoders/scalers on ``frame`` (a :func:`prepare_frame` output) and index every window."""
    return TimeSeriesDataSet(frame, **dataset_kwargs(**length_kwargs))


def dataset_from_parameters(
    parameters: dict[str, Any], frame: pd.DataFrame, predict: bool, **update: Any
) -> TimeSeriesDataSet:
    """Same encoders and scalers as training, new data (``frame`` from :func:`prepare_frame`)."""
    return TimeSeriesDataSet.from_parameters(
        parameters, frame, predict=predict, stop_randomization=True, **update
    )


def inference_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` for forecasting any window: without the training data's ``min_prediction_idx``.

    A fitted dataset remembers the first time index it could predict, and ``from_parameters`` keeps
    it, so a server whose history predates the training data (a replay, a backfill, a trace from
    2014) would get no forecast at all. Forecasting has no such limit: the time index only orders steps.
    """
    return {**parameters, "min_prediction_idx": None}


def inference_frame(history: pd.DataFrame, max_encoder_length: int = schema.ENCODER_STEPS,
                    min_encoder_length: int = schema.MIN_ENCODER_STEPS,
                    horizon: int = schema.HORIZON_STEPS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Last <= ``max_encoder_length`` steps per server plus ``horizon`` future rows.

    Returns (frame with time features, per-server info: server_name, profile, origin, history_steps).
    Servers with fewer than ``min_encoder_length`` steps are left out.
    """
    regular = clean_records(grid.align(history, steps=max_encoder_length)) if not history.empty else \
        clean_records(history)
    sizes = regular.groupby(schema.SERVER, sort=True).size()
    keep = sizes[sizes >= min_encoder_length].index
    regular = regular[regular[schema.SERVER].isin(keep)].reset_index(drop=True)
    last = regular.groupby(schema.SERVER, sort=True).tail(1).set_index(schema.SERVER)
    info = pd.DataFrame({
        schema.PROFILE: last[schema.PROFILE],
        "origin": last[schema.TIMESTAMP],
        "history_steps": sizes.reindex(last.index).astype(int),
    })
    if regular.empty:
        return add_time_features(regular), info
    return add_time_features(extend_future(regular, horizon)), info
