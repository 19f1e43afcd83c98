"""The one alignment policy: fleet records (any times, gaps) -> regular 5-minute steps per server.

Training (:func:`models.features.prepare_frame`), the feed store's history read
(:meth:`serving.store.FeedStore.history`), the forecaster's own history alignment (through
:func:`models.features.regularize`) and the MLflow pyfunc (:class:`models.registry.FleetcastTFT`) all
call :func:`align`, so the same irregular records give the same model inputs wherever they are read.

Policy
------
- of two records with the same (server, timestamp) the later one wins (as the feed store's upsert);
  timestamps are floored to the 5-minute grid; the metrics of one bucket are **averaged** (NaNs
  skipped); status and profile are the last ones in the bucket;
- a gap of at most ``max_gap_steps`` missing steps (15 min) is **linearly interpolated**, a missing
  metric value inside a present bucket too; status is carried forward into interpolated steps;
- a **longer gap cuts** the series: nothing is invented across it. Serving keeps only the contiguous
  tail after the last long gap (``segments="last"``); training keeps every segment as a series of its
  own (``segments="all"``: the segments before the last are named ``<server>@<first step>``, the last
  one keeps the server's name), so a training window never spans a long gap either; ``"keep"``
  keeps every segment under the server's name, the long gaps left as gaps (the production dataset);
- each server's profile is its newest declared one;
- ``steps``: only each server's last ``steps`` grid steps (ending at its newest bucket) are read.

Values are computed in float64 from the raw records and returned as float64; callers cast (the model
path casts to float32 after alignment, the same way on every path).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from models import schema

MAX_GAP_STEPS = 3  # gaps up to 15 minutes are interpolated; longer ones cut the series
_STEP_NS = int(schema.STEP.value)
_METRICS = list(schema.METRICS)

Segments = Literal["last", "all", "keep"]


def _buckets(raw: pd.DataFrame) -> pd.DataFrame:
    """Floor to the grid, normalise labels, average metrics per (server, bucket); sorted."""
    missing = [c for c in (schema.TIMESTAMP, schema.SERVER, *schema.METRICS) if c not in raw.columns]
    if missing:
        raise ValueError(f"records are missing columns: {', '.join(missing)}")
    stamps = pd.to_datetime(raw[schema.TIMESTAMP]).astype("datetime64[ns]")
    exact = pd.DataFrame({"s": raw[schema.SERVER].astype(str).to_numpy(), "t": stamps.to_numpy()})
    repeated = exact.duplicated(keep="last").to_numpy()
    if repeated.any():  # the same (server, time) twice: the later record wins, as in the feed store
        raw, stamps = raw[~repeated], stamps[~repeated]
    n = len(raw)
    frame = pd.DataFrame({
        schema.SERVER: raw[schema.SERVER].astype(str).to_numpy(),
        schema.TIMESTAMP: stamps.dt.floor(schema.STEP_FREQ).to_numpy(),
    })
    for metric in schema.METRICS:
        frame[metric] = pd.to_numeric(raw[metric], errors="coerce").to_numpy(dtype=np.float64)
    if schema.STATUS in raw.columns:
        codes, uniques = pd.factorize(raw[schema.STATUS].astype(str))
        status = pd.Series(uniques, dtype=object).str.lower()
        status = status.where(status.isin(schema.STATUSES), schema.STATUSES[0]).to_numpy(dtype=object)
        frame[schema.STATUS] = status[codes] if n else np.array([], dtype=object)
    else:
        frame[schema.STATUS] = schema.STATUSES[0]
    if schema.PROFILE in raw.columns:
        codes, uniques = pd.factorize(raw[schema.PROFILE].astype(str))
        known = np.array([schema.normalize_profile(p)[0] for p in uniques], dtype=object)
        frame[schema.PROFILE] = known[codes] if n else np.array([], dtype=object)
    else:
        frame[schema.PROFILE] = schema.DEFAULT_PROFILE
    frame = frame.sort_values([schema.SERVER, schema.TIMESTAMP], kind="stable")
    keys = [schema.SERVER, schema.TIMESTAMP]
    duplicated = frame.duplicated(keys, keep=False).to_numpy()
    if not duplicated.any():  # the common case: one record per bucket, nothing to average
        return frame.reset_index(drop=True)
    grouped = frame.groupby(keys, sort=True)
    out = grouped[_METRICS].mean().join(grouped[[schema.STATUS, schema.PROFILE]].last())
    return out.reset_index()


def align(raw: pd.DataFrame, max_gap_steps: int = MAX_GAP_STEPS, steps: int | None = None,
          segments: Segments = "last") -> pd.DataFrame:
    """Raw records -> regular 5-minute rows with the contract's columns (see the module doc).

    Sorted by server name, then time. ``steps``: keep only each server's last ``steps`` grid steps.
    """
    columns = list(schema.COLUMNS)
    if raw.empty:
        return schema.empty_frame()
    b = _buckets(raw)
    servers, server_idx = np.unique(b[schema.SERVER].to_numpy(dtype=str), return_inverse=True)
    t = b[schema.TIMESTAMP].to_numpy(dtype="datetime64[ns]").astype(np.int64) // _STEP_NS
    n = len(servers)
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, server_idx, t)
    if steps is not None:
        keep = t > last[server_idx] - steps
        b, server_idx, t = b[keep].reset_index(drop=True), server_idx[keep], t[keep]
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, server_idx, t)

    # one flat block of grid steps per server: [first, last]
    span = last - first + 1
    offset = np.cumsum(span) - span
    total = int(span.sum())
    pos = offset[server_idx] + (t - first[server_idx])
    present = np.zeros(total, dtype=bool)
    present[pos] = True
    flat_server = np.repeat(np.arange(n), span)

    # missing runs: each lies inside one server's block (a block starts and ends with a bucket)
    missing = (~present).astype(np.int8)
    edges = np.diff(np.concatenate([[0], missing, [0]]))
    run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    long_run = (run_ends - run_starts) > max_gap_steps
    # segment id: long gaps seen so far in the server's block
    cut = np.zeros(total + 1, dtype=np.int64)
    np.add.at(cut, run_ends[long_run], 1)
    seg = np.cumsum(cut[:total])
    seg = seg - seg[offset][flat_server]

    values = {}
    for metric in schema.METRICS:
        v = np.full(total, np.nan)
        v[pos] = b[metric].to_numpy(dtype=np.float64)
        values[metric] = v
    # interpolate short gaps and missing values, one server at a time (only servers that need it)
    need = np.zeros(n, dtype=bool)
    for metric in schema.METRICS:
        need |= np.bincount(flat_server, weights=np.isnan(values[metric]), minlength=n) > 0
    for i in np.flatnonzero(need):
        lo, hi = offset[i], offset[i] + span[i]
        x = np.arange(hi - lo)
        for metric in schema.METRICS:
            v = values[metric][lo:hi]
            ok = ~np.isnan(v)
            if ok.any() and not ok.all():
                v[~ok] = np.interp(x[~ok], x[ok], v[ok])

    status = np.full(total, None, dtype=object)
    status[pos] = b[schema.STATUS].to_numpy(dtype=object)
    status = pd.Series(status).ffill().to_numpy(dtype=object)  # each block starts with a bucket
    newest = np.zeros(n, dtype=np.int64)
    np.maximum.at(newest, server_idx, np.arange(len(b)))  # b is sorted: the last row is the newest
    profile = b[schema.PROFILE].to_numpy(dtype=object)[newest]

    in_long_gap = np.zeros(total + 1, dtype=np.int64)
    np.add.at(in_long_gap, run_starts[long_run], 1)
    np.add.at(in_long_gap, run_ends[long_run], -1)
    keep_row = np.cumsum(in_long_gap[:total]) == 0
    last_seg = np.zeros(n, dtype=np.int64)
    np.maximum.at(last_seg, flat_server, seg)
    names = servers.astype(object)[flat_server]
    if segments == "last":
        keep_row &= seg == last_seg[flat_server]
    elif segments == "all":
        earlier = keep_row & (seg < last_seg[flat_server])
        if earlier.any():
            seg_start = pd.Series(np.arange(total)[earlier]).groupby(
                [flat_server[earlier], seg[earlier]]).transform("min").to_numpy()
            start_step = (first[flat_server[earlier]] + (seg_start - offset[flat_server[earlier]]))
            stamps = pd.to_datetime(start_step * _STEP_NS).strftime("%Y%m%dT%H%M")
            names[earlier] = names[earlier] + "@" + np.asarray(stamps, dtype=object)
    step_idx = first[flat_server] + (np.arange(total) - offset[flat_server])
    out = pd.DataFrame({
        schema.TIMESTAMP: (step_idx[keep_row] * _STEP_NS).astype("datetime64[ns]"),
        schema.SERVER: names[keep_row],
        **{m: values[m][keep_row] for m in schema.METRICS},
        schema.STATUS: status[keep_row],
        schema.PROFILE: profile[flat_server[keep_row]],
    })
    return out[columns].reset_index(drop=True)


def gaps(raw: pd.DataFrame, max_gap_steps: int = MAX_GAP_STEPS) -> pd.DataFrame:
    """Every missing run of grid steps per server: server_name, start (first missing step), steps,
    and ``cuts`` (True for a gap longer than ``max_gap_steps``, which :func:`align` does not fill)."""
    cols = [schema.SERVER, "start", "steps", "cuts"]
    if raw.empty:
        return pd.DataFrame(columns=cols)
    b = _buckets(raw)
    rows = []
    for server, group in b.groupby(schema.SERVER, sort=True):
        t = group[schema.TIMESTAMP].to_numpy(dtype="datetime64[ns]").astype(np.int64) // _STEP_NS
        d = np.diff(t)
        for k in np.flatnonzero(d > 1):
            rows.append((server, pd.Timestamp((t[k] + 1) * _STEP_NS), int(d[k] - 1), bool(d[k] - 1 > max_gap_steps)))
    return pd.DataFrame(rows, columns=cols)
