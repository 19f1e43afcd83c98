"""The forecast guard: never serve a server a forecast worse than a naive one.

Plain numpy, no IO (the service's adapter, ``serving/forecast_guard.py``, keeps the forecasts it issued
and calls these functions). For each server and metric:

1. every issued forecast is kept beside the naive forecasts made at the same origin
   (:func:`naive_points`): the three of :mod:`models.baselines` (last value, seasonal naive 24 h, mean of
   the last 24 h) and the naive ensemble (:func:`ensemble_points`);
2. once actuals arrived, the P50 of each is scored on the steps that have actuals (:func:`score`):
   mean absolute error over the forecasts of the last 24 h of origins (:data:`WINDOW_STEPS`), the model
   and each naive on the same (origin, step) pairs;
3. the model is served when its error is at most that of the ensemble and of every naive (plus
   :data:`TIE`, float noise); otherwise the fallback is served: the naive ensemble, unless one of the
   three naives beat it clearly (an error :data:`SWITCH_MARGIN` lower; e.g. the seasonal naive on a server
   that repeats its day) (:attr:`MetricScore.source`). Without :data:`MIN_SCORED_STEPS` scored steps
   there is no evidence yet, and the model is served;
4. a naive is served with an honest band (:func:`naive_band`): P10/P90 are the naive's P50 plus the 10th
   and 90th percentiles of a naive's own errors on the server's history, per horizon step.

Why an ensemble: picking the best of three naives per server from a few backtests is noisy (the
winner on 4 backtest cuts of a new server is often not the winner of the next 8 h), and no single naive
is safe: last value chases noise on idle servers, the mean lags level shifts, the seasonal naive needs a
day and a daily pattern. The per-step median of up to five naive forecasts (:func:`ensemble_points`:
last value, median of the last hour, mean of the last 24 h, the same time yesterday, and the last cycle
when the history correlates with itself 1-12 h later, e.g. an hourly cron job or a persistent level) is
never far from the best of them and often better than each (the median of forecasts is the classic
robust combination). It was chosen on
the dev traces of ../shared/data/nab/other/ (docs/performance.md "Guard"), not on the ec2 test traces.

``skill`` = model MAE / best-naive MAE on the same pairs (the three baselines, as every evaluation
reports): below 1 the model beats every naive baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models import baselines, schema

MODEL = "model"
ENSEMBLE = "naive_ensemble"
NAIVES: tuple[str, ...] = tuple(baselines.BASELINES)  # last_value, seasonal_naive, mean_24h
FALLBACKS: tuple[str, ...] = (ENSEMBLE, *NAIVES)  # what the guard may serve instead of the model
SOURCES: tuple[str, ...] = (MODEL, *FALLBACKS)
WINDOW_STEPS = schema.STEPS_PER_DAY  # forecasts whose origin lies in the last 24 h are scored
MIN_SCORED_STEPS = 12  # an hour of actuals before a score decides anything
TIE = 1e-6  # float noise (the P50s are kept as float32): a model this close to the best naive is not worse
BAND_LEADS = np.array([1, 2, 3, 4, 6, 9, 12, 18, 24, 36, 48, 60, 72, 84, 96])
MIN_PAIRS = 12  # residuals needed for a band quantile at one lead
SWITCH_MARGIN = 0.25  # a single naive replaces the ensemble only when its error is >= 25 % lower
RECENT_STEPS = schema.STEPS_PER_HOUR  # "median of the last hour"
PERIOD_LAGS = (12, 24, 36, 48, 72, 96, 144)  # sub-daily cycles looked for: 1, 2, 3, 4, 6, 8, 12 h
PERIOD_MIN_CORRELATION = 0.3  # autocorrelation at the lag needed to call it a cycle
PERIOD_TOLERANCE = 0.05  # a shorter lag this close to the best correlation is the cycle (not its multiple)
BAND_WIDEN = 1.1  # the ensemble's band: the median-of-the-hour naive's error quantiles x this (dev traces)
_UPPER = np.array([100.0 if m in schema.PERCENT_METRICS else schema.MAX_LOAD_AVERAGE for m in schema.METRICS])


def _baseline_points(values: np.ndarray, horizon: int) -> np.ndarray:
    """``[len(NAIVES), horizon, metrics]``: the three baselines (the seasonal naive NaN under a day)."""
    hist = values[None, :, :]
    out = np.full((len(NAIVES), horizon, values.shape[1]), np.nan)
    for i, name in enumerate(NAIVES):
        if name == "seasonal_naive" and values.shape[0] < schema.STEPS_PER_DAY:
            continue
        out[i] = baselines.BASELINES[name](hist, horizon)[0]
    return out


def cycle_lag(series: np.ndarray) -> int | None:
    """The sub-daily cycle of one metric's history (steps), or None.

    The shortest lag of :data:`PERIOD_LAGS` (at least two cycles in the history) whose autocorrelation
    around the median is within :data:`PERIOD_TOLERANCE` of the highest, if that reaches
    :data:`PERIOD_MIN_CORRELATION`. A persistent series (a wandering
    level, a ramp) correlates with itself an hour later too and is given lag 12: its last hour then joins
    the ensemble, which pulls the median towards where the series is now. That is wanted: on the dev
    traces, without this member the ensemble loses 36-48 % to last value on persistent series
    (docs/performance.md "Guard"); a detrended correlation measured the same on the dev traces.
    """
    x = series - np.median(series)
    found: dict[int, float] = {}
    for candidate in PERIOD_LAGS:
        if len(x) < 2 * candidate:
            break
        a, b = x[:-candidate], x[candidate:]
        denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
        if denom > 1e-12:
            found[candidate] = float(np.dot(a, b)) / denom
    if not found or max(found.values()) < PERIOD_MIN_CORRELATION:
        return None
    top = max(found.values())  # multiples of a cycle correlate as well: the shortest lag close to the top
    return min(lag for lag, r in found.items() if r >= top - PERIOD_TOLERANCE)


def ensemble_points(values: np.ndarray, horizon: int = schema.HORIZON_STEPS,
                    points: np.ndarray | None = None) -> np.ndarray:
    """``[horizon, metrics]``: the naive ensemble, the per-step median of the naive forecasts available.

    Members: last value, median of the last hour, mean of the last <= 24 h, the same time yesterday (with
    a day of history), and per metric the last cycle repeated when :func:`cycle_lag` finds one.
    ``points``: :func:`_baseline_points`' answer when already computed.
    """
    base = _baseline_points(values, horizon) if points is None else points
    recent = np.median(values[-RECENT_STEPS:], axis=0)
    members = [base[i] for i in range(len(NAIVES)) if not np.isnan(base[i]).any()]
    members.append(np.repeat(recent[None, :], horizon, axis=0))
    stacked = np.stack(members)  # [members, horizon, metrics]
    out = np.median(stacked, axis=0)
    steps = np.arange(horizon)
    for m in range(values.shape[1]):
        lag = cycle_lag(values[:, m])
        if lag is not None:
            cycle = values[-lag:, m][steps % lag]
            out[:, m] = np.median(np.vstack([stacked[:, :, m], cycle[None, :]]), axis=0)
    return out


def naive_points(values: np.ndarray, horizon: int = schema.HORIZON_STEPS) -> np.ndarray:
    """The fallbacks' P50 forecasts from ``values`` ([steps, metrics], oldest first, no NaN).

    Returns ``[len(FALLBACKS), horizon, metrics]`` in :data:`FALLBACKS` order (the ensemble, then the three
    naives); the seasonal naive is NaN with under a day of history (it has no yesterday to repeat), the
    mean is over the last <= 24 h.
    """
    base = _baseline_points(values, horizon)
    return np.concatenate([ensemble_points(values, horizon, base)[None], base], axis=0)


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
    if name == ENSEMBLE:  # its band: the errors of its steadiest member, the median of the last hour
        if n < RECENT_STEPS + lead:
            return np.empty((0, values.shape[1]))
        windows = np.lib.stride_tricks.sliding_window_view(values[: n - lead], RECENT_STEPS, axis=0)
        return values[RECENT_STEPS - 1 + lead:] - np.median(windows, axis=-1)
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
    widen = BAND_WIDEN if name == ENSEMBLE else 1.0
    for i, lead in enumerate(leads):
        res = _residuals(values, name, int(lead))
        if res.shape[0] < MIN_PAIRS and name != "last_value":
            res = _residuals(values, "last_value", int(lead))
        if res.shape[0] >= MIN_PAIRS:
            at[i] = np.quantile(res, quantiles, axis=0).T * widen
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


def naive_quantiles(values: np.ndarray, name: str, horizon: int = schema.HORIZON_STEPS,
                    band: np.ndarray | None = None, p50: np.ndarray | None = None) -> np.ndarray:
    """``[horizon, metrics, 3]``: P10, P50, P90 of fallback ``name`` (:data:`FALLBACKS`) from ``values``
    ([steps, metrics]), clipped to the contract's ranges. ``band``: :func:`naive_band`'s offsets and
    ``p50``: the fallback's forecast (``naive_points(values)[FALLBACKS.index(name)]``), when already known."""
    if p50 is None:  # only the forecast asked for: this runs on every refresh for servers served one
        p50 = (ensemble_points(values, horizon) if name == ENSEMBLE
               else _baseline_points(values, horizon)[NAIVES.index(name)])
    if np.isnan(p50).any():
        raise ValueError(f"{name} needs {schema.STEPS_PER_DAY} steps of history, got {values.shape[0]}")
    if band is None:
        band = naive_band(values, name, horizon)
    out = np.stack([p50 + band[:, :, 0], p50, p50 + band[:, :, 1]], axis=-1)
    return np.clip(out, 0.0, _UPPER[: values.shape[1], None])


@dataclass(frozen=True)
class MetricScore:
    """One server's metric: the scored errors and which forecast to serve."""

    source: str  # MODEL or a naive's name
    model_mae: float | None  # on the best naive's pairs
    naive_mae: dict[str, float | None]  # each fallback's MAE (on its pairs with the model)
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


UNSCORED = MetricScore(MODEL, None, dict.fromkeys(FALLBACKS), None, 0)


def score(predictions: np.ndarray, actuals: np.ndarray, min_steps: int = MIN_SCORED_STEPS) -> list[MetricScore]:
    """Score past forecasts and decide per metric.

    ``predictions``: ``[origins, len(SOURCES), horizon, metrics]`` P50s (SOURCES order, NaN where a source
    had none); ``actuals``: ``[origins, horizon, metrics]`` (NaN where not arrived yet). Each fallback is
    compared with the model on the pairs both forecast and that have actuals. The fallback is the
    ensemble unless a naive's error is :data:`SWITCH_MARGIN` lower; the model
    is served when it is at most as wrong as that fallback. ``best_naive``/``skill`` compare the model
    with the best of the three baselines.
    """
    metrics = predictions.shape[-1]
    out = []
    model = predictions[:, 0]
    for m in range(metrics):
        a = actuals[..., m]
        per_naive: dict[str, float | None] = {}
        sums: dict[str, tuple[float, float, int]] = {}
        for i, name in enumerate(FALLBACKS, start=1):
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
        baselines_scored = [k for k in NAIVES if k in sums]
        if not baselines_scored:
            out.append(UNSCORED)
            continue
        best = min(baselines_scored, key=lambda k: sums[k][1] / sums[k][2])
        fallback = ENSEMBLE if ENSEMBLE in sums else best
        if fallback == ENSEMBLE:
            ens = sums[ENSEMBLE][1] / sums[ENSEMBLE][2]
            confident = [k for k in baselines_scored if sums[k][1] / sums[k][2] < ens * (1.0 - SWITCH_MARGIN)]
            if confident:
                fallback = min(confident, key=lambda k: sums[k][1] / sums[k][2])
        fm_abs, fn_abs, fcount = sums[fallback]
        source = MODEL if fm_abs / fcount <= fn_abs / fcount + TIE else fallback
        m_abs, n_abs, count = sums[best]
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
