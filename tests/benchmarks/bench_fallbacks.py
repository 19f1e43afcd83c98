"""Benchmark: the guard's fallbacks alone (no model) on real traces, against the best naive baseline.

The design evidence behind ``models/guard.py``'s naive ensemble. For every trace, the windows of
issue 9's protocol (``bench_real.trace_windows``: 288 steps of history, an origin every hour over the
last 30 %), the cpu P50 MAE over steps 1-96 of each candidate fallback divided by the MAE of the best of
the three baselines on the same windows (chosen in hindsight per trace, so 1.00 is hard to beat):

- the three baselines themselves, the median of the last hour, and the naive ensemble with and
  without its cycle member (:func:`models.guard.ensemble_points`);
- ``guard pick``: the fallback the guard itself would serve a new 288-step server when the model loses
  (ensemble, or a baseline whose backtest error on the server's own history is 25 % lower), and the
  P10-P90 coverage of its band.

``--dev`` (the default) runs the dev traces of ../shared/data/nab/other/ (rescaled; what the design was
chosen on); ``--test`` the five ec2 traces (reported, never tuned on).

    .venv/bin/python tests/benchmarks/bench_fallbacks.py            # dev traces
    .venv/bin/python tests/benchmarks/bench_fallbacks.py --test     # the ec2 test traces
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_real as br  # noqa: E402

from models import guard, schema  # noqa: E402
from serving.forecast_guard import BACKTEST_LEADS  # noqa: E402


def guard_pick(values: np.ndarray) -> str:
    """The fallback the guard serves a new server with ``values`` ([steps, 1]) when the model loses."""
    preds, actuals = [], []
    for lead in BACKTEST_LEADS:
        cut = len(values) - lead
        points = guard.naive_points(values[:cut])
        preds.append(np.concatenate([np.full((1, *points.shape[1:]), 1e9), points]))  # a model that loses
        a = np.full((schema.HORIZON_STEPS, 1), np.nan)
        a[:lead] = values[cut:]
        actuals.append(a)
    return guard.score(np.stack(preds), np.stack(actuals))[0].source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", action="store_true", help="the ec2 test traces instead of the dev traces")
    args = parser.parse_args()
    dev = not args.test
    folder, pattern = (br.NAB_DIR / "other", "*.csv") if dev else (br.NAB_DIR, "ec2_cpu_utilization_*.csv")
    paths = sorted(folder.glob(pattern))
    print(f"fleetcast bench-fallbacks: {'dev' if dev else 'ec2 test'} traces, cpu P50 MAE 1-96 / best baseline\n")
    names = ["last_value", "seasonal_naive", "mean_24h", "median_1h", "ensemble (no cycle)", "ensemble",
             "guard pick", "pick P10-P90 cov."]
    print("| trace | windows | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    ratios: dict[str, list[float]] = {n: [] for n in names[:-1]}
    for path in paths:
        w = br.trace_windows(br.load_trace(path, rescale=dev))
        hist, act = w.history[br.CPU], w.actual[br.CPU]
        base = br.baseline_forecasts(w)
        best = min(br.mae(f, act) for f in base.values())
        cand = dict(base)
        cand["median_1h"] = np.repeat(np.median(hist[:, -guard.RECENT_STEPS:], axis=1, keepdims=True),
                                      schema.HORIZON_STEPS, axis=1)
        with mock.patch.object(guard, "cycle_lag", lambda _series: None):
            cand["ensemble (no cycle)"] = np.stack([guard.ensemble_points(h[:, None])[:, 0] for h in hist])
        cand["ensemble"] = np.stack([guard.ensemble_points(h[:, None])[:, 0] for h in hist])
        picked, inside = [], []
        for h, a in zip(hist, act, strict=True):
            source = guard_pick(h[:, None])
            q = guard.naive_quantiles(h[:, None], source)[:, 0, :]
            picked.append(q[:, 1])
            inside.append(np.mean((a >= q[:, 0]) & (a <= q[:, 2])))
        cand["guard pick"] = np.stack(picked)
        row = {n: br.mae(f, act) / best for n, f in cand.items()}
        for n, r in row.items():
            ratios[n].append(r)
        print(f"| {path.stem} | {len(w)} | " + " | ".join(f"{row[n]:.2f}" for n in names[:-1])
              + f" | {np.mean(inside):.2f} |")
    print("| **worst** | | " + " | ".join(f"{max(ratios[n]):.2f}" for n in names[:-1]) + " | |")
    print("| **geometric mean** | | " + " | ".join(f"{np.exp(np.mean(np.log(ratios[n]))):.2f}"
                                                  for n in names[:-1]) + " | |")


if __name__ == "__main__":
    main()
