"""The forecast guard: never serve a server a forecast worse than a naive one.

Plain numpy, no IO (the service's adapter, ``serving/forecast_guard.py``, keeps the forecasts it issued
and calls these functions). For each server and metric:

1. every issued forecast is kept beside the three naive forecasts of :mod:`models.baselines`
   (last value, seasonal naive 24 h, mean of the last 24 h) made at the same origin
   (:func:`naive_points`);
2. once actuals arrived, the P50 of each is scored on the steps that have actuals (:func:`score`):
   mean absolute error over the forecasts of the last 24 h of origins (:data:`WINDOW_STEPS`), the model
   and each naive on the same (origin, step) pairs;
3. the best naive is the one with the lowest error; the model is served when its error is at most the
   best naive's (plus :data:`TIE`, float noise), else that naive is (:attr:`MetricScore.source`).
   Without :data:`MIN_SCORED_STEPS` scored steps there is no evidence yet, and the model is served;
4. a naive is served with an honest band (:func:`naive_band`): P10/P90 are the naive's P50 plus the 10th
   and 90th percentiles of that naive's own errors on the server's history, per horizon step.

``skill`` = model MAE / best-naive MAE on the same pairs: below 1 the model beats every naive baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models import baselines, schema

MODEL = "model"
NAIVES: tuple[str, ...] = tuple(baselines.BASELINES)  # last_value, seasonal_naive, mean_24h
SOURCES: tuple[str, ...] = (MODEL, *NAIVES)
WINDOW_STEPS = schema.STEPS_PER_DAY  # forecasts whose origin lies in the last 24 h are scored
MIN_SCORED_STEPS = 12  # an hour of actuals before a score decides anything
TIE = 1e-6  # float noise (the P50s are kept as float32): a model this close to the best naive is not worse
BAND_LEADS = np.array([1, 2, 3, 4, 6, 9, 12, 18, 24, 36, 48, 60, 72, 84, 96])
MIN_PAIRS = 12  # residuals needed for a band quantile at one lead
_UPPER = np.array([100.0 if m in schema.PERCENT_METRICS else schema.MAX_LOAD_AVERAGE for m in schema.METRICS])


def naive_points(values: np.ndarray, horizon: int = schema.HORIZON_STEPS) -> np.ndarray:
    """The three naive P50 forecasts from ``values`` ([steps, metrics], oldest first, no NaN).

    Returns ``[len(NAIVES), horizon, metrics]``; the seasonal naive is NaN with under a day of history
    (it has no yesterday to repeat), the mean is over the last <= 24 h.
    """
    hist = values[None, :, :]
    out = np.full((len(NAIVES), horizon, values.shape[1]), np.nan)
    for i, name in enumerate(NAIVES):
        if name == "seasonal_naive" and values.shape[0] < schema.STEPS_PER_DAY:
            continue
        out[i] = baselines.BASELINES[name](hist, horizon)[0]
    return out


def _residuals(values: np.ndarray, name: str, lead: int) -> np.ndarray:
    """``[pairs, metrics]``: actual minus the naive's forecast ``lead`` steps ahead, at every origin of
    ``values`` that has that actual (the seasonal naive: yesterday's value, when there is one)."""
    n = values.shape[0]
    if n <= lead:
        return np.empty((0, values.shape[1]))
    if name == "last_value":
        return values[lead:] - values[:-lead]
    if name == "seasonal_naive":
        season = schema.STEPS_PER_DAY
        return values[season:] - values[:-season] if n > season else np.empty((0, values.shape[1]))
    # mean_24h: mean of the last <= 24 h at each origin t (at least MIN_PAIRS steps of it)
    csum = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    origins = np.arange(MIN_PAIRS - 1, n - lead)
    if origins.size == 0:
        return np.empty((0, values.shape[1]))
    start = np.maximum(0, origins + 1 - schema.STEPS_PER_DAY)
    means = (csum[origins + 1] - csum[start]) / (origins + 1 - start)[:, None]
    return values[origins + lead] - means


def naive_band(values: np.ndarray, name: str, horizon: int = schema.HORIZON_STEPS,
               quantiles: tuple[float, float] = (0.1, 0.9)) -> np.ndarray:
    """``[horizon, metrics, 2]``: offsets to add to the naive's P50 for P10 and P90.

    Empirical quantiles of the naive's residuals on the server's own history at the leads of
    :data:`BAND_LEADS`, interpolated between them and widened monotonically with the lead (a later step
    is never more certain). A lead with under :data:`MIN_PAIRS` residuals (short history; the seasonal
    naive with under two days) takes the last-value naive's residuals at that lead, and failing those the
    widest lead measured.
    """
    metrics = values.shape[1]
    leads = BAND_LEADS[horizon >= BAND_LEADS]
    at = np.full((len(leads), metrics, 2), np.nan)
    for i, lead in enumerate(leads):
        res = _residuals(values, name, int(lead))
        if res.shape[0] < MIN_PAIRS and name != "last_value":
            res = _residuals(values, "last_value", int(lead))
        if res.shape[0] >= MIN_PAIRS:
            at[i] = np.quantile(res, quantiles, axis=0).T
    known = ~np.isnan(at[:, 0, 0])
    if not known.any():  # under MIN_PAIRS + 1 steps: the spread of the history around its last value
        at[:] = np.quantile(values - values[-1], quantiles, axis=0).T if values.shape[0] > 1 else 0.0
    else:
        last = np.flatnonzero(known)[-1]
        at[last + 1:] = at[last]
        first = np.flatnonzero(known)[0]
        at[:first] = at[first]
        for i in range(len(leads)):  # interior gaps: the previous lead's
            if np.isnan(at[i, 0, 0]):
                at[i] = at[i - 1]
    steps = np.arange(1, horizon + 1)
    out = np.empty((horizon, metrics, 2))
    for m in range(metrics):
        for q in range(2):
            out[:, m, q] = np.interp(steps, leads, at[:, m, q])
    out[:, :, 0] = np.minimum.accumulate(np.minimum(out[:, :, 0], 0.0), axis=0)
    out[:, :, 1] = np.maximum.accumulate(np.maximum(out[:, :, 1], 0.0), axis=0)
    return out


def naive_quantiles(values: np.ndarray, name: str, horizon: int = schema.HORIZON_STEPS) -> np.ndarray:
    """``[horizon, metrics, 3]``: P10, P50, P90 of naive ``name`` from ``values`` ([steps, metrics]),
    clipped to the contract's ranges."""
    p50 = naive_points(values, horizon)[NAIVES.index(name)]
    if np.isnan(p50).any():
        raise ValueError(f"{name} needs {schema.STEPS_PER_DAY} steps of history, got {values.shape[0]}")
    band = naive_band(values, name, horizon)
    out = np.stack([p50 + band[:, :, 0], p50, p50 + band[:, :, 1]], axis=-1)
    return np.clip(out, 0.0, _UPPER[: values.shape[1], None])


@dataclass(frozen=True)
class MetricScore:
    """One server's metric: the scored errors and which forecast to serve."""

    source: str  # MODEL or a naive's name
    model_mae: float | None  # on the best naive's pairs
    naive_mae: dict[str, float | None]  # each naive's MAE (on its pairs with the model)
    best_naive: str | None
    scored_steps: int  # (origin, step) pairs behind best_naive's comparison
    model_abs: float = 0.0  # sums behind the fleet's pooled skill
    naive_abs: float = 0.0

    @property
    def skill(self) -> float | None:
        """model MAE / best-naive MAE (below 1: the model is better); None without a score."""
        if self.best_naive is None or self.model_mae is None:
            return None
        return _ratio(self.model_abs, self.naive_abs)


def _ratio(model_abs: float, naive_abs: float) -> float:
    if naive_abs <= 1e-9:
        return 1.0 if model_abs <= 1e-9 else 1e6
    return model_abs / naive_abs


UNSCORED = MetricScore(MODEL, None, dict.fromkeys(NAIVES), None, 0)


def score(predictions: np.ndarray, actuals: np.ndarray, min_steps: int = MIN_SCORED_STEPS) -> list[MetricScore]:
    """Score past forecasts and decide per metric.

    ``predictions``: ``[origins, len(SOURCES), horizon, metrics]`` P50s (SOURCES order, NaN where a source
    had none); ``actuals``: ``[origins, horizon, metrics]`` (NaN where not arrived yet). Each naive is
    compared with the model on the pairs both forecast and that have actuals.
    """
    metrics = predictions.shape[-1]
    out = []
    model = predictions[:, 0]
    for m in range(metrics):
        a = actuals[..., m]
        per_naive: dict[str, float | None] = {}
        sums: dict[str, tuple[float, float, int]] = {}
        for i, name in enumerate(NAIVES, start=1):
            naive = predictions[:, i, :, m]
            mask = np.isfinite(a) & np.isfinite(model[..., m]) & np.isfinite(naive)
            count = int(mask.sum())
            if count < min_steps:
                per_naive[name] = None
                continue
            n_abs = float(np.abs(naive[mask] - a[mask]).sum())
            m_abs = float(np.abs(model[..., m][mask] - a[mask]).sum())
            per_naive[name] = n_abs / count
            sums[name] = (m_abs, n_abs, count)
        if not sums:
            out.append(UNSCORED)
            continue
        best = min(sums, key=lambda k: sums[k][1] / sums[k][2])
        m_abs, n_abs, count = sums[best]
        source = MODEL if m_abs / count <= n_abs / count + TIE else best
        out.append(MetricScore(source, m_abs / count, per_naive, best, count, m_abs, n_abs))
    return out


def fleet_skill(scores: list[MetricScore]) -> float | None:
    """The fleet's skill for one metric: summed model errors / summed best-naive errors over the servers
    scored (a pooled ratio, so a server with more scored steps weighs more); None when none is."""
    scored = [s for s in scores if s.best_naive is not None]
    if not scored:
        return None
    return _ratio(sum(s.model_abs for s in scored), sum(s.naive_abs for s in scored))


def actuals_for(origins: np.ndarray, times: np.ndarray, values: np.ndarray,
                horizon: int = schema.HORIZON_STEPS) -> np.ndarray:
    """``[origins, horizon, metrics]``: the actuals of forecasts issued at ``origins`` (datetime64) from a
    server's aligned history (``times`` on the 5-minute grid, contiguous; ``values`` [steps, metrics]);
    NaN where the history has no value (not arrived yet, or before its start)."""
    step = np.timedelta64(schema.STEP_MINUTES, "m")
    first = times[0]
    pos = ((origins - first) // step).astype(np.int64)[:, None] + np.arange(1, horizon + 1)[None, :]
    ok = (pos >= 0) & (pos < len(times))
    out = np.full((len(origins), horizon, values.shape[1]), np.nan)
    out[ok] = values[pos[ok]]
    return out
