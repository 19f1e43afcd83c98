"""Vectorised inference tensors for the TFT, without a ``TimeSeriesDataSet`` per call.

``TimeSeriesDataSet.from_parameters(..., predict=True)`` plus its dataloader is exact but slow at fleet
scale (pandas preprocessing of every row, one ``__getitem__`` per series, a Python collate per batch).
Serving only ever needs one window per server: the last <= ``max_encoder_length`` steps of a regular
5-minute history and ``max_prediction_length`` future steps. This module builds the same ``x`` dict
the network's ``forward`` reads, with numpy over a servers x time array:

- :func:`align_history` does what the history half of :func:`models.features.inference_frame` does
  (clean, keep the last steps, regularise, drop servers below the minimum) on integer codes instead
  of per-row Python, delegating to :func:`models.features.regularize` when a history has gaps;
- :class:`TensorBuilder` applies the model's OWN fitted ``dataset_parameters``: categorical encoders,
  scalers, target normalizers (global ``TorchNormalizer``s and per-window ``EncoderNormalizer``s,
  alone or in a ``MultiNormalizer``), the order of reals/categoricals, ``relative_time_idx`` and
  ``encoder_length`` exactly as ``TimeSeriesDataSet.__getitem__`` computes them. Nothing is fitted
  here except what the library itself fits per window (``EncoderNormalizer``);
- :meth:`EncodedFleet.batch` collates any subset of servers exactly like
  ``TimeSeriesDataSet._collate_fn`` (encoders right-padded with zeros to the batch's longest one).

Anything the builder does not support raises :class:`UnsupportedDataset` at construction, so callers
can fall back to the ``TimeSeriesDataSet`` path. ``tests/model/test_inference.py`` checks every
tensor against the library's.
"""

from __future__ import annotations

import warnings
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting.data.encoders import (
    EncoderNormalizer,
    GroupNormalizer,
    MultiNormalizer,
    NaNLabelEncoder,
    TorchNormalizer,
)

from models import features, schema

_RELATIVE_TIME_IDX = "relative_time_idx"  # names the library reserves for the features it adds
_ENCODER_LENGTH = "encoder_length"
_GROUP_PREFIX = "__group_id__"


class UnsupportedDataset(ValueError):
    """The dataset parameters use a feature the fast builder does not implement."""


# --- history alignment ---------------------------------------------------------------------------
@dataclass
class AlignedHistory:
    """Per-server windows of a regular history, server-major, servers sorted by name.

    ``columns`` hold one value per row (``time_idx`` and the contract's columns); rows of server ``i``
    are ``starts[i] : starts[i] + lengths[i]``.
    """

    servers: np.ndarray  # str, sorted
    lengths: np.ndarray  # int64, history steps per server
    starts: np.ndarray  # int64, first row of each server
    columns: dict[str, np.ndarray]
    info: pd.DataFrame  # index server_name; profile, origin, history_steps

    @property
    def n_rows(self) -> int:
        return int(self.lengths.sum())

    def last_rows(self) -> np.ndarray:
        return self.starts + self.lengths - 1

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(server index, position within the server's window) of every row."""
        server = np.repeat(np.arange(len(self.servers)), self.lengths)
        return server, np.arange(self.n_rows) - self.starts[server]


def _clean_arrays(records: pd.DataFrame) -> dict[str, np.ndarray]:
    """:func:`models.features.clean_records` on arrays: same checks and values, rows not yet sorted."""
    missing = [c for c in schema.COLUMNS if c not in records.columns and c not in (schema.STATUS,)]
    if missing:
        raise ValueError(f"records are missing columns: {', '.join(missing)}")
    n = len(records)
    ts = pd.to_datetime(records[schema.TIMESTAMP]).dt.floor(schema.STEP_FREQ).astype("datetime64[ns]")
    out: dict[str, np.ndarray] = {
        schema.SERVER: records[schema.SERVER].astype(str).to_numpy(dtype=object),
        features.TIME_IDX: features.time_index(ts),
    }
    raw_profile = (records[schema.PROFILE].astype(str) if schema.PROFILE in records.columns
                   else pd.Series([schema.DEFAULT_PROFILE] * n, index=records.index))
    codes, uniques = pd.factorize(raw_profile)
    known = np.array([schema.normalize_profile(p)[0] for p in uniques], dtype=object)
    out[schema.PROFILE] = known[codes] if n else np.array([], dtype=object)
    if schema.STATUS in records.columns:  # lower-cased and checked once per distinct value
        codes, uniques = pd.factorize(records[schema.STATUS].astype(str))
        status = pd.Series(uniques, dtype=object).str.lower()
        status = status.where(status.isin(schema.STATUSES), schema.STATUSES[0]).to_numpy(dtype=object)
        out[schema.STATUS] = status[codes] if n else np.array([], dtype=object)
    else:
        out[schema.STATUS] = np.full(n, schema.STATUSES[0], dtype=object)
    for metric in schema.METRICS:
        out[metric] = pd.to_numeric(records[metric], errors="coerce").to_numpy(dtype=np.float32)
    return out


def _sorted_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` through a hash table (sorting only the distinct values)."""
    codes, uniques = pd.factorize(values)
    uniques = np.asarray(uniques, dtype=object)
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return uniques[order], rank[codes]


def _take(columns: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in columns.items()}


def align_history(history: pd.DataFrame, max_encoder_length: int, min_encoder_length: int) -> AlignedHistory:
    """The history half of :func:`models.features.inference_frame`, vectorised.

    Cleans like :func:`~models.features.clean_records` (profiles normalised, statuses checked, metrics
    numeric, the last of duplicate (server, timestamp) rows kept), keeps the last ``max_encoder_length``
    samples per server, puts them on the regular grid (the common, already regular case in numpy;
    otherwise through :func:`~models.features.regularize`), keeps the last ``max_encoder_length`` steps
    again and drops servers with fewer than ``min_encoder_length``.
    """
    cols = _clean_arrays(history)
    server_names, server_codes = _sorted_codes(cols.pop(schema.SERVER))
    # sort by (server, time), stable: among duplicates the last one keeps the highest position
    order = np.lexsort((cols[features.TIME_IDX], server_codes))
    code = server_codes[order]
    t = cols[features.TIME_IDX][order]
    last_of_run = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        last_of_run[:-1] = (code[1:] != code[:-1]) | (t[1:] != t[:-1])
    rows = order[last_of_run]
    cols = _take(cols, rows)
    code = server_codes[rows]
    # last max_encoder_length samples per server
    counts = np.bincount(code, minlength=len(server_names))
    starts = (np.cumsum(counts) - counts).astype(np.int64)
    pos = np.arange(len(code)) - starts[code]
    keep = pos >= counts[code] - max_encoder_length
    cols = _take(cols, np.flatnonzero(keep))
    code = code[keep]
    counts = np.minimum(counts, max_encoder_length)
    present = counts > 0
    server_names, counts = server_names[present], counts[present]
    code = np.cumsum(present)[code] - 1
    starts = (np.cumsum(counts) - counts).astype(np.int64)
    last = starts + counts - 1
    same = code[1:] == code[:-1]
    regular = (
        bool((np.diff(cols[features.TIME_IDX])[same] == 1).all())
        and not any(np.isnan(cols[m]).any() for m in schema.METRICS)
        and bool((cols[schema.PROFILE] == np.repeat(cols[schema.PROFILE][last], counts)).all())
    )
    if not regular:  # gaps, missing values or a changed profile: the shared (pandas) regulariser
        frame = pd.DataFrame({c: cols[c] for c in schema.COLUMNS if c not in (schema.TIMESTAMP, schema.SERVER)})
        frame[schema.SERVER] = server_names[code]
        frame[schema.TIMESTAMP] = (features._EPOCH
                                   + pd.to_timedelta(cols[features.TIME_IDX] * schema.STEP_MINUTES, unit="min"))
        frame = features.regularize(frame[list(schema.COLUMNS)])
        frame = frame.groupby(schema.SERVER, sort=True).tail(max_encoder_length)
        cols = {c: frame[c].to_numpy() for c in schema.COLUMNS if c != schema.TIMESTAMP}
        for metric in schema.METRICS:
            cols[metric] = cols[metric].astype(np.float32)
        cols[schema.SERVER] = cols[schema.SERVER].astype(object)
        cols[schema.PROFILE] = cols[schema.PROFILE].astype(object)
        cols[schema.STATUS] = cols[schema.STATUS].astype(object)
        cols[features.TIME_IDX] = features.time_index(frame[schema.TIMESTAMP])
        server_names, counts = np.unique(cols.pop(schema.SERVER), return_counts=True)
    enough = counts >= min_encoder_length
    if not enough.all():
        row_ok = np.repeat(enough, counts)
        cols = _take(cols, np.flatnonzero(row_ok))
        server_names, counts = server_names[enough], counts[enough]
    counts = counts.astype(np.int64)
    starts = (np.cumsum(counts) - counts).astype(np.int64)
    last = starts + counts - 1
    origin = features._EPOCH + pd.to_timedelta(cols[features.TIME_IDX][last] * schema.STEP_MINUTES, unit="min")
    info = pd.DataFrame(
        {schema.PROFILE: cols[schema.PROFILE][last], "origin": origin, "history_steps": counts.astype(int)},
        index=pd.Index(server_names.astype(object), name=schema.SERVER),
    )
    return AlignedHistory(servers=server_names.astype(object), lengths=counts, starts=starts, columns=cols,
                          info=info)


# --- tensors -------------------------------------------------------------------------------------
@dataclass
class EncodedFleet:
    """Every server's encoded window; :meth:`batch` collates a subset like the library's dataloader."""

    servers: np.ndarray
    encoder_lengths: np.ndarray  # int64 (S,)
    horizon: int
    encoder_cont: np.ndarray  # float32 (S, max L, n_reals), zero beyond each server's length
    decoder_cont: np.ndarray  # float32 (S, H, n_reals)
    encoder_cat: np.ndarray  # int64 (S, max L, n_cat)
    decoder_cat: np.ndarray  # int64 (S, H, n_cat)
    encoder_target: list[np.ndarray]  # per target, float32 (S, max L)
    decoder_target: list[np.ndarray]  # per target, float32 (S, H)
    target_scale: list[torch.Tensor]  # per target (S, 2)
    groups: np.ndarray  # int64 (S, n_group_ids)
    first_time_idx: np.ndarray  # int64 (S,), time_idx of the first encoder step
    multi_target: bool

    def __len__(self) -> int:
        return len(self.servers)

    def dataset_order(self) -> np.ndarray:
        """Server rows in the order a predict-mode ``TimeSeriesDataSet`` yields them (by encoded group id)."""
        return np.lexsort(self.groups.T[::-1])

    def batch(self, rows: np.ndarray | slice) -> dict[str, Any]:
        """The ``x`` dict of ``TimeSeriesDataSet._collate_fn`` for these servers, in this order."""
        lengths = self.encoder_lengths[rows]
        width = int(lengths.max())
        n = len(lengths)
        decoder_lengths = torch.full((n,), self.horizon, dtype=torch.long)
        enc_lengths = torch.from_numpy(lengths.astype(np.int64))
        start = torch.from_numpy(self.first_time_idx[rows].astype(np.int64)) + enc_lengths
        encoder_target = [torch.from_numpy(np.ascontiguousarray(t[rows, :width])) for t in self.encoder_target]
        decoder_target = [torch.from_numpy(np.ascontiguousarray(t[rows])) for t in self.decoder_target]
        target_scale = [s[torch.as_tensor(np.arange(len(self))[rows])] for s in self.target_scale]
        return dict(
            encoder_cat=torch.from_numpy(np.ascontiguousarray(self.encoder_cat[rows, :width])),
            encoder_cont=torch.from_numpy(np.ascontiguousarray(self.encoder_cont[rows, :width])),
            encoder_target=encoder_target if self.multi_target else encoder_target[0],
            encoder_lengths=enc_lengths,
            decoder_cat=torch.from_numpy(np.ascontiguousarray(self.decoder_cat[rows])),
            decoder_cont=torch.from_numpy(np.ascontiguousarray(self.decoder_cont[rows])),
            decoder_target=decoder_target if self.multi_target else decoder_target[0],
            decoder_lengths=decoder_lengths,
            decoder_time_idx=start.unsqueeze(1) + torch.arange(self.horizon).unsqueeze(0),
            groups=torch.from_numpy(np.ascontiguousarray(self.groups[rows])),
            target_scale=target_scale if self.multi_target else target_scale[0],
        )


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class TensorBuilder:
    """Builds the TFT's input tensors from an :class:`AlignedHistory` with fitted dataset parameters."""

    def __init__(self, parameters: dict[str, Any], model_reals: list[str] | None = None,
                 model_categoricals: list[str] | None = None) -> None:
        p = parameters
        for key, what in (("lags", "lags"), ("variable_groups", "variable groups")):
            if p.get(key):
                raise UnsupportedDataset(f"{what} are not supported by the fast builder")
        if p.get("time_idx") != features.TIME_IDX:
            raise UnsupportedDataset(f"time_idx {p.get('time_idx')!r} is not {features.TIME_IDX!r}")
        if _names(p.get("group_ids")) != [schema.SERVER]:
            raise UnsupportedDataset(f"group ids {p.get('group_ids')} are not [{schema.SERVER!r}]")
        self.parameters = p
        self.targets = _names(p["target"])
        self.multi_target = not isinstance(p["target"], str)
        normalizer = p["target_normalizer"]
        normalizers = list(normalizer.normalizers) if isinstance(normalizer, MultiNormalizer) else [normalizer]
        if len(normalizers) != len(self.targets):
            raise UnsupportedDataset("one target normalizer per target is required")
        for n in normalizers:
            if not isinstance(n, TorchNormalizer) or isinstance(n, GroupNormalizer | MultiNormalizer):
                raise UnsupportedDataset(f"target normalizer {type(n).__name__} is not supported")
        self.target_normalizers: list[TorchNormalizer] = normalizers
        self.max_encoder_length = int(p["max_encoder_length"])
        self.min_encoder_length = int(p["min_encoder_length"])
        self.horizon = int(p["max_prediction_length"])
        self.min_prediction_idx = int(p["min_prediction_idx"]) if p.get("min_prediction_idx") is not None else None
        # the library's ordering (TimeSeriesDataSet.reals / flat_categoricals)
        static_reals = _names(p.get("static_reals"))
        known_reals = _names(p.get("time_varying_known_reals"))
        self.add_relative_time_idx = bool(p.get("add_relative_time_idx"))
        add_encoder_length = p.get("add_encoder_length")
        if add_encoder_length == "auto":
            add_encoder_length = self.min_encoder_length != self.max_encoder_length
        self.add_encoder_length = bool(add_encoder_length)
        if self.add_relative_time_idx and _RELATIVE_TIME_IDX not in known_reals + static_reals:
            known_reals.append(_RELATIVE_TIME_IDX)
        if self.add_encoder_length and _ENCODER_LENGTH not in known_reals + static_reals:
            static_reals.append(_ENCODER_LENGTH)
        # add_target_scales: each target's window centre and scale, static reals appended in this order
        self.scale_features: dict[str, tuple[int, int]] = {}
        if p.get("add_target_scales"):
            for i, target in enumerate(self.targets):
                for k, what in enumerate(("center", "scale")):
                    feature = f"{target}_{what}"
                    self.scale_features[feature] = (i, k)
                    if feature not in static_reals + known_reals + _names(p.get("time_varying_unknown_reals")):
                        static_reals.append(feature)
        self.reals = static_reals + known_reals + _names(p.get("time_varying_unknown_reals"))
        self.categoricals = (_names(p.get("static_categoricals")) + _names(p.get("time_varying_known_categoricals"))
                             + _names(p.get("time_varying_unknown_categoricals")))
        if model_reals is not None and list(model_reals) != self.reals:
            raise UnsupportedDataset(f"model reals {list(model_reals)} differ from the dataset's {self.reals}")
        if model_categoricals is not None and list(model_categoricals) != self.categoricals:
            raise UnsupportedDataset(f"model categoricals {list(model_categoricals)} differ from {self.categoricals}")
        self.scalers: dict[str, Any] = dict(p.get("scalers") or {})
        self.encoders: dict[str, Any] = dict(p.get("categorical_encoders") or {})
        for name in self.reals:
            scaler = self.scalers.get(name)
            if name not in self.targets and isinstance(scaler, GroupNormalizer):
                raise UnsupportedDataset(f"GroupNormalizer scaler for {name!r} is not supported")
        for name in self.categoricals:
            if name in self.targets:
                raise UnsupportedDataset(f"categorical target {name!r} is not supported")
            if self.encoders.get(name) is None:
                raise UnsupportedDataset(f"no fitted encoder for categorical {name!r}")

    # helpers
    def _calendar(self, time_idx: np.ndarray) -> tuple[pd.DataFrame, int]:
        """Time features (from :func:`models.features.add_time_features`) for a range of steps."""
        lo, hi = int(time_idx.min()), int(time_idx.max())
        grid = np.arange(lo, hi + 1)
        ts = features._EPOCH + pd.to_timedelta(grid * schema.STEP_MINUTES, unit="min")
        frame = features.add_time_features(pd.DataFrame({schema.TIMESTAMP: ts}))
        return frame, lo

    def _scale(self, name: str, values: np.ndarray) -> np.ndarray:
        """A non-target real through its fitted scaler, as ``TimeSeriesDataSet.transform_values`` does."""
        scaler = self.scalers.get(name)
        if scaler is None or isinstance(scaler, EncoderNormalizer):
            return values
        frame = pd.Series(values, name=name).to_frame()
        return np.asarray(scaler.transform(frame)).reshape(-1)

    @staticmethod
    def _per_window(normalizer: TorchNormalizer, enc: np.ndarray, dec: np.ndarray,
                    lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``EncoderNormalizer``: fit on each encoder window, transform the window (batched per length)."""
        enc_out = np.zeros_like(enc, dtype=np.float32)
        dec_out = np.zeros_like(dec, dtype=np.float32)
        scales = np.zeros((len(lengths), 2), dtype=np.float32)
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            window = torch.from_numpy(np.ascontiguousarray(enc[rows, :length]))
            full = torch.cat([window, torch.from_numpy(np.ascontiguousarray(dec[rows]))], dim=1)
            fitted = deepcopy(normalizer).fit(window)  # the library's fit, one row per window
            params = fitted.get_parameters()  # (n, 2): center, scale per window
            scaled = fitted.transform(full, target_scale=params).numpy()
            enc_out[rows, :length] = scaled[:, :length]
            dec_out[rows] = scaled[:, length:]
            scales[rows] = params.numpy()
        return enc_out, dec_out, scales

    def encode(self, history: AlignedHistory) -> EncodedFleet:
        """Encode every server's window (encoder = its history, decoder = the next ``horizon`` steps)."""
        h = history
        n_servers, horizon = len(h.servers), self.horizon
        lengths = h.lengths.astype(np.int64)
        width = int(lengths.max())
        server, pos = h.positions()
        last = h.last_rows()
        t_rows = h.columns[features.TIME_IDX].astype(np.int64)
        t_future = t_rows[last][:, None] + np.arange(1, horizon + 1)[None, :]
        if self.min_prediction_idx is not None and (t_future[:, 0] < self.min_prediction_idx).any():
            raise UnsupportedDataset("a forecast would start before the dataset's min_prediction_idx")
        calendar, cal_lo = self._calendar(np.concatenate([t_rows, t_future[:, -1]]))

        def rows_and_future(name: str) -> tuple[np.ndarray, np.ndarray]:
            """Raw values of a column on history rows and on future steps (carried, as extend_future does)."""
            if name in calendar.columns and name not in h.columns:
                col = calendar[name].to_numpy()
                return col[t_rows - cal_lo], col[t_future - cal_lo]
            if name in h.columns:
                col = h.columns[name]
                return col, np.repeat(col[last][:, None], horizon, axis=1)
            raise UnsupportedDataset(f"column {name!r} is neither in the history nor a time feature")

        def scatter(dtype: Any, row_values: np.ndarray, future: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            enc = np.zeros((n_servers, width), dtype=dtype)
            enc[server, pos] = row_values
            return enc, future.astype(dtype)

        # targets: raw values (the library keeps them unscaled in encoder_target / decoder_target)
        raw_targets = {name: scatter(np.float32, *rows_and_future(name)) for name in self.targets}
        enc_cont = np.zeros((n_servers, width, len(self.reals)), dtype=np.float32)
        dec_cont = np.zeros((n_servers, horizon, len(self.reals)), dtype=np.float32)
        valid = np.arange(width)[None, :] < lengths[:, None]
        # scaled targets and their per-server (centre, scale): per window for an EncoderNormalizer
        n = len(t_rows)
        scaled_targets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        target_scale: list[torch.Tensor] = []
        for i, name in enumerate(self.targets):
            normalizer = self.target_normalizers[i]
            enc_raw, dec_raw = raw_targets[name]
            if isinstance(normalizer, EncoderNormalizer):
                enc_s, dec_s, scales = self._per_window(normalizer, enc_raw, dec_raw, lengths)
                scaled_targets[name] = (enc_s, dec_s)
                target_scale.append(torch.from_numpy(scales))
                continue
            rows, future = rows_and_future(name)
            flat = np.concatenate([rows.astype(np.float32), future.astype(np.float32).reshape(-1)])
            scaled = np.asarray(normalizer.transform(flat), dtype=np.float32)
            enc_s = np.zeros((n_servers, width), dtype=np.float32)
            enc_s[server, pos] = scaled[:n]
            scaled_targets[name] = (enc_s, scaled[n:].reshape(n_servers, horizon))
            params = normalizer.get_parameters()
            target_scale.append(params.unsqueeze(0).expand(n_servers, *params.shape).clone())
        for j, name in enumerate(self.reals):
            if name in self.scale_features:  # the window's centre/scale through its fitted scaler
                i, k = self.scale_features[name]
                value = self._scale(name, target_scale[i][:, k].numpy()).astype(np.float32)
                enc_cont[:, :, j] = np.where(valid, value[:, None], np.float32(0))
                dec_cont[:, :, j] = value[:, None]
                continue
            if name == _RELATIVE_TIME_IDX and self.add_relative_time_idx:
                rel = (pos - lengths[server]).astype(np.float32) / np.float32(self.max_encoder_length)
                enc_cont[server, pos, j] = rel
                dec_cont[:, :, j] = np.arange(horizon, dtype=np.float32)[None, :] / np.float32(self.max_encoder_length)
                continue
            if name == _ENCODER_LENGTH and self.add_encoder_length:
                value = ((lengths - 0.5 * self.max_encoder_length) / self.max_encoder_length * 2.0).astype(np.float32)
                enc_cont[:, :, j] = np.where(valid, value[:, None], np.float32(0))
                dec_cont[:, :, j] = value[:, None]
                continue
            if name in self.targets:
                enc_cont[:, :, j], dec_cont[:, :, j] = scaled_targets[name]
                continue
            scaler = self.scalers.get(name)
            if isinstance(scaler, EncoderNormalizer):
                enc_raw, dec_raw = scatter(np.float32, *rows_and_future(name))
                enc_cont[:, :, j], dec_cont[:, :, j], _ = self._per_window(scaler, enc_raw, dec_raw, lengths)
                continue
            if name in calendar.columns and name not in h.columns:  # scale the calendar once, then look up
                col = self._scale(name, calendar[name].to_numpy()).astype(np.float32)
                enc_cont[server, pos, j] = col[t_rows - cal_lo]
                dec_cont[:, :, j] = col[t_future - cal_lo]
                continue
            rows, future = rows_and_future(name)
            scaled = self._scale(name, np.concatenate([rows, future.reshape(-1)])).astype(np.float32)
            enc_cont[server, pos, j] = scaled[:n]
            dec_cont[:, :, j] = scaled[n:].reshape(n_servers, horizon)
        bad = [name for j, name in enumerate(self.reals)
               if not (np.isfinite(enc_cont[:, :, j]).all() and np.isfinite(dec_cont[:, :, j]).all())]
        if bad:  # as TimeSeriesDataSet refuses them (e.g. a metric never reported by some server)
            raise ValueError(f"{', '.join(bad)} have infinite or NaN values after encoding")
        # categoricals through the fitted encoders, one lookup per distinct value
        enc_cat = np.zeros((n_servers, width, len(self.categoricals)), dtype=np.int64)
        dec_cat = np.zeros((n_servers, horizon, len(self.categoricals)), dtype=np.int64)
        for j, name in enumerate(self.categoricals):
            rows, future = rows_and_future(name)
            values = np.concatenate([rows, future.reshape(-1)])
            inverse, uniques = pd.factorize(values)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # unknown classes -> NaN class, as the library
                codes = np.asarray(self.encoders[name].transform(pd.Series(uniques)), dtype=np.int64)
            coded = codes[inverse]
            enc_cat[server, pos, j] = coded[:n]
            dec_cat[:, :, j] = coded[n:].reshape(n_servers, horizon)
        # group ids: the training encoder, extended (not refitted) with unseen servers, as the library does
        group_encoder = deepcopy(self.encoders.get(_GROUP_PREFIX + schema.SERVER, NaNLabelEncoder()))
        group_encoder.fit(h.servers, overwrite=False)
        groups = np.asarray(group_encoder.transform(h.servers), dtype=np.int64).reshape(-1, 1)
        return EncodedFleet(
            servers=h.servers,
            encoder_lengths=lengths,
            horizon=horizon,
            encoder_cont=enc_cont,
            decoder_cont=dec_cont,
            encoder_cat=enc_cat,
            decoder_cat=dec_cat,
            encoder_target=[raw_targets[n][0] for n in self.targets],
            decoder_target=[raw_targets[n][1] for n in self.targets],
            target_scale=target_scale,
            groups=groups,
            first_time_idx=t_rows[h.starts],
            multi_target=self.multi_target,
        )
