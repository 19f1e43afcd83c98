"""The forecast guard's plain logic (models/guard.py): scores, decisions, naive bands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import guard, schema

H = schema.HORIZON_STEPS
M = len(schema.METRICS)


def predictions(model: np.ndarray, naives: list[np.ndarray]) -> np.ndarray:
    """[origins, sources, horizon, metrics] from per-source [origins, horizon] arrays (same on every metric)."""
    stacked = np.stack([model, *naives], axis=1)
    return np.repeat(stacked[..., None], M, axis=-1)


def test_model_worse_than_the_best_naive_is_replaced_by_it() -> None:
    actual = np.full((3, H), 10.0)
    model = np.full((3, H), 14.0)  # off by 4
    naives = [np.full((3, H), 11.0), np.full((3, H), 13.0), np.full((3, H), 10.5)]  # off by 1, 3, 0.5
    scores = guard.score(predictions(model, naives), np.repeat(actual[..., None], M, axis=-1))
    s = scores[0]
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
    assert p.shape == (3, H, M)
    assert np.all(p[0, :, 0] == t[-1])  # last value
    assert np.array_equal(p[1, :, 0], t[-288:-288 + H])  # yesterday's
    assert p[2, 0, 0] == pytest.approx(t[-288:].mean())
    assert np.isnan(guard.naive_points(values[-100:])[1]).all()  # no yesterday with 100 steps


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
    for name in guard.NAIVES:
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
