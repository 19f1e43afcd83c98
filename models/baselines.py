"""Three naive forecasters that every evaluation reports beside the TFT.

Each takes ``history`` shaped ``[windows, steps, targets]`` (the ``steps`` observations right
before each forecast origin, oldest first; at least one day) and returns point forecasts shaped
``[windows, horizon, targets]``.

They are statsforecast's ``Naive``, ``SeasonalNaive(288)`` and ``WindowAverage(288)``, and a test
checks the forecasts are identical on the evaluation's windows (tests/model/test_evaluation.py).
They stay numpy one-liners on the slab the evaluation already holds: statsforecast needs a long
frame of one series per window and target and is about 10-30x slower for the same numbers
(tests/benchmarks/bench_baselines.py, docs/performance.md "Baselines"). A statistical baseline
(AutoETS, MSTL) costs minutes to an hour per evaluation there, so it is measured in that benchmark,
not run in every evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models import schema

Baseline = Callable[[np.ndarray, int], np.ndarray]


def last_value(history: np.ndarray, horizon: int = schema.HORIZON_STEPS) -> np.ndarray:
    """Repeat the last observation."""
    return np.repeat(history[:, -1:, :], horizon, axis=1)


def seasonal_naive(
    history: np.ndarray, horizon: int = schema.HORIZON_STEPS, season: int = schema.STEPS_PER_DAY
) -> np.ndarray:
    """The value at the same time of day yesterday (``season`` steps earlier)."""
    if history.shape[1] < season:
        raise ValueError(f"seasonal naive needs {season} steps of history, got {history.shape[1]}")
    if horizon > season:
        raise ValueError("seasonal naive supports horizons up to one season")
    start = history.shape[1] - season
    return history[:, start : start + horizon, :].copy()


def mean_last_day(
    history: np.ndarray, horizon: int = schema.HORIZON_STEPS, window: int = schema.STEPS_PER_DAY
) -> np.ndarray:
    """The mean of the last 24 h, flat over the horizon."""
    mean = history[:, -window:, :].mean(axis=1, keepdims=True)
    return np.repeat(mean, horizon, axis=1)


BASELINES: dict[str, Baseline] = {
    "last_value": last_value,
    "seasonal_naive": seasonal_naive,
    "mean_24h": mean_last_day,
}
