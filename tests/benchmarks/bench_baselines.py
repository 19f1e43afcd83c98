"""Benchmark: the evaluation's baselines in numpy vs statsforecast, and what a statistical baseline costs.

On the validation windows of the contract dataset (20 servers x 17,280 steps, seed 42; one origin
every 2 h over the last 20 %, seen and unseen servers; 4 targets per window):

1. the three naive baselines as ``models/baselines.py`` computes them (numpy on the evaluation's
   [windows, steps, targets] slab) and as statsforecast's ``Naive``, ``SeasonalNaive(288)`` and
   ``WindowAverage(288)`` on the same 288-step histories: wall time and the largest difference;
2. ``AutoETS`` on the same 288-step histories (with a 288-step day ETS cannot be seasonal on one day
   of history, so statsforecast fits a non-seasonal model) and ``MSTL`` (daily season 288, AutoETS
   trend; given 3 days of history, it needs at least two seasons) on every ``--every``-th /
   ``--mstl-every``-th window: seconds per series, the projected time for all windows on one core,
   and the P50 MAE beside the naive baselines on the same sample;
3. with ``--checkpoint``: ``evaluation.evaluate`` of that TFT on all windows, for scale.

    .venv/bin/python tests/benchmarks/bench_baselines.py --checkpoint /work/baseline/champion_v1.pt
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import pandas as pd

HISTORY = 288
HORIZON = 96


def _long(history: np.ndarray) -> pd.DataFrame:
    """[windows, steps, targets] -> statsforecast's long frame, one series per (window, target)."""
    n, steps, k = history.shape
    return pd.DataFrame({
        "unique_id": np.repeat(np.arange(n * k), steps),
        "ds": np.tile(np.arange(steps), n * k),
        "y": history.transpose(0, 2, 1).reshape(-1),
    })


def _back(values: np.ndarray, n: int, k: int) -> np.ndarray:
    """statsforecast's forecast column (series-major) -> [windows, horizon, targets]."""
    return values.reshape(n, k, HORIZON).transpose(0, 2, 1)


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--steps", type=int, default=17_280)
    parser.add_argument("--every", type=int, default=20, help="AutoETS on every Nth window (0: skip)")
    parser.add_argument("--mstl-every", type=int, default=60, help="MSTL on every Nth window (0: skip)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checkpoint", help="a models.tft.Forecaster checkpoint to time evaluation.evaluate")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS, Naive, SeasonalNaive, WindowAverage

    from models import baselines, evaluation, schema, simulator

    print(f"fleetcast bench-baselines: {args.servers} servers x {args.steps} steps, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    exp = evaluation.prepare_experiment(simulator.generate_fleet(n_servers=args.servers, steps=args.steps).records)
    windows = exp.windows
    n, k = len(windows), len(evaluation.TARGETS)
    print(f"{n} validation windows x {k} targets = {n * k} series of {HISTORY} steps, horizon {HORIZON}")

    # 1. the naive baselines: numpy (what the evaluation runs) vs statsforecast on the same histories
    arrays = evaluation.SeriesArrays.from_frame(exp.frame)
    numpy_s, (actual, base) = _best(lambda: evaluation.baseline_table(exp.frame, windows), args.repeat)
    history = arrays.slab(windows, HISTORY, 0)
    sf = StatsForecast(models=[Naive(), SeasonalNaive(season_length=HISTORY), WindowAverage(window_size=HISTORY)],
                       freq=1, n_jobs=1)
    sf_s, out = _best(lambda: sf.forecast(df=_long(history), h=HORIZON), args.repeat)
    diff = max(float(np.abs(_back(out[col].to_numpy(), n, k) - base[name]).max())
               for col, name in (("Naive", "last_value"), ("SeasonalNaive", "seasonal_naive"),
                                 ("WindowAverage", "mean_24h")))
    print(f"\n1. naive baselines on all windows (best of {args.repeat})")
    print(f"  numpy (evaluation.baseline_table, incl. slicing the windows) {numpy_s:8.3f} s")
    print(f"  statsforecast Naive + SeasonalNaive(288) + WindowAverage(288) {sf_s:8.3f} s "
          f"(incl. the long frame; {sf_s / numpy_s:.0f}x)")
    print(f"  largest |numpy - statsforecast| over every forecast: {diff:.3g}")

    # 2. statistical baselines on a sample of the same windows
    print("\n2. statistical baselines on a sample of the windows (one core, n_jobs=1)")
    print(f"  {'model':<32} {'windows':>7} {'s/series':>9} {'all windows':>12}   MAE per target "
          f"({', '.join(evaluation.TARGETS)}) vs naive on the same sample")
    runs = [("AutoETS (288-step history)", AutoETS(season_length=1), HISTORY, args.every),
            ("MSTL(288) + AutoETS trend (3 d)", MSTL(season_length=HISTORY), 3 * HISTORY, args.mstl_every)]
    for label, model, length, every in runs:
        if every <= 0:
            continue
        sample = windows.iloc[::every]
        slab = arrays.slab(sample, length, HORIZON)
        hist, act = slab[:, :length], slab[:, length:]
        engine = StatsForecast(models=[model], freq=1, n_jobs=1)
        engine.forecast(df=_long(hist[:1]), h=HORIZON)  # warm-up (compilation) outside the timing
        started = time.perf_counter()
        res = engine.forecast(df=_long(hist), h=HORIZON)
        secs = time.perf_counter() - started
        column = [c for c in res.columns if c not in ("unique_id", "ds")][0]
        mae = np.abs(_back(res[column].to_numpy(), len(sample), k) - act).mean(axis=(0, 1))
        naive = {name: np.abs(fn(hist[:, -HISTORY:], HORIZON) - act).mean(axis=(0, 1))
                 for name, fn in baselines.BASELINES.items()}
        per_series = secs / (len(sample) * k)
        print(f"  {label:<32} {len(sample):>7} {per_series * 1000:>7.1f}ms {per_series * n * k:>10.0f} s   "
              f"{np.round(mae, 3).tolist()}")
        for name, values in naive.items():
            print(f"  {'  ' + name:<32} {'':>7} {'':>9} {'':>12}   {np.round(values, 3).tolist()}")

    # 3. for scale: the TFT's evaluation on all windows
    if args.checkpoint:
        from models import tft

        forecaster = tft.Forecaster.from_checkpoint(args.checkpoint)
        started = time.perf_counter()
        result = evaluation.evaluate(forecaster.model, exp.frame, windows)
        secs = time.perf_counter() - started
        print(f"\n3. evaluation.evaluate (TFT {forecaster.n_parameters:,} parameters + the naive baselines) on all "
              f"{n} windows: {secs:.1f} s; val_score {result.metrics['val_score']:.4f}")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}; horizon {schema.HORIZON_STEPS} steps")


if __name__ == "__main__":
    main()
