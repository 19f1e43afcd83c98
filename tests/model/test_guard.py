"""The forecast guard's plain logic (models/guard.py): scores, decisions, naive bands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import guard, schema

H = schema.HORIZON_STEPS
M = len(schema.METRICS)


def predictions(model: np.ndarray, naives: list[np.ndarray], ensemble: np.ndarray | None = None) -> np.ndarray:
    """[origins, sources, horizon, metrics] from per-source [origins, horizon] arrays (same on every metric).

    ``naives``: last value, seasonal naive, mean 24 h; ``ensemble``: the naive ensemble's (default: the
    per-step median of the three, close to what it is)."""
    if ensemble is None:
        ensemble = np.nanmedian(np.stack(naives), axis=0)
    stacked = np.stack([model, ensemble, *naives], axis=1)
    return np.repeat(stacked[..., None], M, axis=-1)


def test_model_worse_than_the_best_naive_is_replaced_by_it() -> None:
    actual = np.full((3, H), 10.0)
    model = np.full((3, H), 14.0)  # off by 4
    naives = [np.full((3, H), 11.0), np.full((3, H), 13.0), np.full((3, H), 10.5)]  # off by 1, 3, 0.5
    scores = guard.score(predictions(model, naives), np.repeat(actual[..., None], M, axis=-1))
    s = scores[0]
    # the ensemble (the median of the three here: off by 3) loses clearly to mean_24h (off by 0.5)
    assert s.best_naive == "mean_24h" and s.source == "mean_24h"
    assert s.model_mae == pytest.approx(4.0) and s.naive_mae["last_value"] == pytest.approx(1.0)
    assert s.skill == pytest.approx(8.0)
    assert s.scored_steps == 3 * H


def test_model_better_than_every_naive_is_served() -> None:
    actual = np.full((2, H), 10.0)
    model = np.full((2, H), 10.2)
    naives = [np.full((2, H), 12.0)] * 3
    s = guard.score(predictions(model, naives), np.repeat(actual[..., None], M, axis=-1))[0]
    assert s.source == guard.MODEL and s.skill == pytest.approx(0.1)


def test_only_steps_with_actuals_and_forecasts_on_both_sides_count() -> None:
    actual = np.full((2, H), np.nan)
    actual[0, :20] = 10.0  # 20 steps of the first origin have arrived
    model = np.full((2, H), 10.0)
    seasonal = np.full((2, H), np.nan)  # no seasonal naive (under a day of history)
    naives = [np.full((2, H), 30.0), seasonal, np.full((2, H), 30.0)]
    s = guard.score(predictions(model, naives), np.repeat(actual[..., None], M, axis=-1))[0]
    assert s.scored_steps == 20 and s.naive_mae["seasonal_naive"] is None and s.source == guard.MODEL


def test_a_naive_replaces_the_ensemble_only_when_clearly_better() -> None:
    actual = np.repeat(np.full((3, H), 10.0)[..., None], M, axis=-1)
    model = np.full((3, H), 14.0)
    naives = [np.full((3, H), 13.0), np.full((3, H), 13.0), np.full((3, H), 10.5)]
    s = guard.score(predictions(model, naives, np.full((3, H), 11.0)), actual)[0]
    assert s.source == "mean_24h"  # off by 0.5 where the ensemble is off by 1
    close = [naives[0], naives[1], np.full((3, H), 10.8)]  # 0.8 vs 1.0: better, but by under SWITCH_MARGIN
    assert guard.score(predictions(model, close, np.full((3, H), 11.0)), actual)[0].source == guard.ENSEMBLE


def test_the_model_must_beat_the_fallback_not_only_the_best_baseline() -> None:
    actual = np.repeat(np.full((2, H), 10.0)[..., None], M, axis=-1)
    naives = [np.full((2, H), 12.0)] * 3
    s = guard.score(predictions(np.full((2, H), 11.0), naives, np.full((2, H), 10.5)), actual)[0]
    assert s.source == guard.ENSEMBLE and s.skill == pytest.approx(0.5)  # skill: vs the three baselines


def test_too_few_scored_steps_decide_nothing() -> None:
    actual = np.full((1, H), np.nan)
    actual[0, : guard.MIN_SCORED_STEPS - 1] = 10.0
    naives = [np.full((1, H), 10.0)] * 3
    s = guard.score(predictions(np.full((1, H), 99.0), naives), np.repeat(actual[..., None], M, axis=-1))[0]
    assert s is guard.UNSCORED and s.source == guard.MODEL and s.skill is None


def test_fleet_skill_pools_the_servers_errors() -> None:
    a = guard.MetricScore("model", 1.0, {}, "last_value", 10, model_abs=10.0, naive_abs=20.0)
    b = guard.MetricScore("last_value", 3.0, {}, "last_value", 10, model_abs=30.0, naive_abs=20.0)
    assert guard.fleet_skill([a, b, guard.UNSCORED]) == pytest.approx(1.0)
    assert guard.fleet_skill([guard.UNSCORED]) is None


def test_naive_points_follow_the_baselines() -> None:
    t = np.arange(2 * schema.STEPS_PER_DAY, dtype=float)
    values = np.stack([t, t * 0 + 5, t / 10, t / 100], axis=1)
    p = guard.naive_points(values)
    assert p.shape == (len(guard.FALLBACKS), H, M) and guard.FALLBACKS[0] == guard.ENSEMBLE
    assert np.all(p[1, :, 0] == t[-1])  # last value
    assert np.array_equal(p[2, :, 0], t[-288:-288 + H])  # yesterday's
    assert p[3, 0, 0] == pytest.approx(t[-288:].mean())
    assert np.isnan(guard.naive_points(values[-100:])[2]).all()  # no yesterday with 100 steps
    assert np.isfinite(guard.naive_points(values[-100:])[0]).all()  # no yesterday: still an ensemble


def test_the_ensemble_is_the_median_of_its_members() -> None:
    noise = np.random.default_rng(2).normal(20.0, 2.0, (2 * schema.STEPS_PER_DAY, M))  # no cycle, not persistent
    assert guard.cycle_lag(noise[:, 0]) is None
    p = guard.naive_points(noise)
    members = np.stack([p[1, :, 0], np.full(H, np.median(noise[-12:, 0])), p[3, :, 0], p[2, :, 0]])
    assert np.allclose(p[0, :, 0], np.median(members, axis=0))
    # a persistent series (a ramp) correlates with itself an hour later: its last hour joins as a member
    ramp = np.linspace(10.0, 60.0, 2 * schema.STEPS_PER_DAY)
    assert guard.cycle_lag(ramp) == 12
    ens = guard.ensemble_points(np.repeat(ramp[:, None], M, axis=1))[:, 0]
    assert np.all(ens > ramp[-288:].mean())  # pulled towards where the series is, not its daily mean


def test_the_ensemble_follows_a_sub_daily_cycle() -> None:
    rng = np.random.default_rng(3)
    steps = np.arange(288)
    cron = 5.0 + 40.0 * ((steps % 12) < 2) + rng.normal(0.0, 0.3, 288)  # a job at the top of every hour
    values = np.repeat(cron[:, None], M, axis=1)
    assert guard.cycle_lag(cron) == 12
    ens = guard.ensemble_points(values)[:, 0]
    future = 5.0 + 40.0 * (((steps[-1] + 1 + np.arange(H)) % 12) < 2)
    flat = np.median(cron[-12:])
    assert np.abs(ens - future).mean() < np.abs(flat - future).mean()
    assert guard.cycle_lag(rng.normal(0.0, 1.0, 288)) is None  # noise has no cycle
    assert guard.cycle_lag(np.full(288, 3.0)) is None  # nor a constant


def test_the_ensemble_is_not_thrown_by_one_spike_on_an_idle_server() -> None:
    rng = np.random.default_rng(4)
    cpu = 2.0 + rng.normal(0.0, 0.05, 288)
    cpu[-1] = 60.0  # the last sample is a spike
    ens = guard.ensemble_points(np.repeat(cpu[:, None], M, axis=1))[:, 0]
    assert np.abs(ens - 2.0).max() < 1.0  # the median of the hour and the mean outvote the last value


def test_actuals_for_reads_the_steps_after_each_origin() -> None:
    times = pd.date_range("2025-01-01", periods=120, freq="5min").to_numpy(dtype="datetime64[ns]")
    values = np.arange(len(times), dtype=float)[:, None].repeat(M, axis=1)
    origins = np.array([times[10], times[-1]])
    a = guard.actuals_for(origins, times, values)
    assert a[0, 0, 0] == 11.0 and a[0, 5, 0] == 16.0
    assert np.isnan(a[1]).all()  # nothing after the newest step yet
    assert np.isfinite(a[0, : len(times) - 11, 0]).all() and np.isnan(a[0, len(times) - 11:, 0]).all()


def test_a_flat_history_with_one_spike_keeps_a_narrow_honest_band() -> None:
    rng = np.random.default_rng(0)
    values = np.full((576, M), 3.0) + rng.normal(0.0, 0.2, (576, M))
    values[400, :] = 90.0  # one spike
    for name in guard.FALLBACKS:
        q = guard.naive_quantiles(values, name)
        width = q[:, 0, 2] - q[:, 0, 0]
        assert width.max() < 3.0, (name, width.max())  # not blown up by the spike
        assert np.all(np.diff(width) >= -1e-9)  # never narrower further ahead
        assert np.all(q[..., 0] <= q[..., 1]) and np.all(q[..., 1] <= q[..., 2])


def test_naive_band_covers_about_eighty_percent_of_a_random_walk() -> None:
    rng = np.random.default_rng(1)
    series = 50.0 + np.cumsum(rng.normal(0.0, 0.5, 5_000))
    hits = []
    for origin in range(600, 4_900, 50):
        values = np.repeat(series[origin - 576:origin, None], M, axis=1)
        q = guard.naive_quantiles(values, "last_value")[:, 0]
        future = series[origin:origin + H]
        hits.append(np.mean((future >= q[:, 0]) & (future <= q[:, 2])))
    assert 0.65 <= float(np.mean(hits)) <= 0.95


def test_a_history_too_short_for_the_seasonal_naive_is_refused() -> None:
    with pytest.raises(ValueError, match="seasonal_naive needs 288"):
        guard.naive_quantiles(np.ones((100, M)), "seasonal_naive")
    q = guard.naive_quantiles(np.ones((13, M)), "last_value")  # very short: still a band, zero wide here
    assert q.shape == (H, M, 3) and np.allclose(q[..., 1], 1.0)
