"""Benchmark: the alert backtest (models/backtest.py, issue 10) — the figures of docs/performance.md,
"Alert quality".

fleetcast's alerts (the model's forecasts through the service's fast path, the rules of models/alerts.yaml
with their calibrated cuts, trend and persistence) against predict_linear(1h) and a static threshold, on
the same origins of a held-out simulated fleet (seed 2026, ``test-*`` names, 20 servers, 30 days, origins
every 30 min) and on the NAB CloudWatch CPU traces with their anomaly windows.

    make bench-alerts                                   # the demo model (trained once, cached), 20 x 30 days
    make calibrate-alerts                               # choose the cuts on the calibration fleet (seed 1701)
    .venv/bin/python tests/benchmarks/bench_alerts.py --checkpoint path/to/tft.pt --days 10

Without ``--checkpoint`` the demo preset is trained once on the default 20-server fleet (what `make demo`
trains, about 10 min on 2 cores) and cached as ``<data dir>/backtest/demo_tft.pt``. Forecasts are cached
under ``<data dir>/backtest`` by checkpoint digest and fleet, so a rerun only replays the rules.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path


def demo_checkpoint() -> Path:
    from models import config, evaluation, simulator, tft

    path = config.data_dir() / "backtest" / "demo_tft.pt"
    if path.is_file():
        return path
    print("training the demo preset once (cached at", path, ")", flush=True)
    fleet = simulator.generate_fleet()
    exp = evaluation.prepare_experiment(fleet.records)
    preset = tft.PRESETS["demo"]
    result = tft.train_tft(exp.train_frame, None, preset.model, preset.train)
    tft.Forecaster(result.model, result.training_servers, {"preset": "demo", **exp.split.as_params()}).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--calibrate", action="store_true",
                        help="choose the cuts on the calibration fleet and write models/alert_calibration.yaml")
    parser.add_argument("--no-real", action="store_true", help="skip the NAB traces")
    parser.add_argument("--curve", action="store_true", help="also print precision/recall against one common cut")
    parser.add_argument("--shape-rate", type=float, default=1.0,
                        help="the simulator's real-shape episodes on the test fleet (0: the simulator before them)")
    parser.add_argument("--target-precision", type=float, default=0.8,
                        help="calibration: the most recall among cuts reaching this precision (else best F1)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from models import alerts, backtest

    checkpoint = args.checkpoint or demo_checkpoint()
    print(f"fleetcast bench-alerts: checkpoint {checkpoint}, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    forecaster = backtest.load_forecaster(checkpoint)
    started = time.perf_counter()
    if args.calibrate:
        spec = backtest.FleetSpec(seed=backtest.CALIBRATION_SEED, prefix="cal", n_servers=args.servers,
                                  days=args.days)
        cuts, sweep = backtest.calibrate(checkpoint, spec, forecaster=forecaster, progress=print,
                                         target_precision=args.target_precision)
        digest = backtest.checkpoint_digest(checkpoint)
        path = backtest.write_calibration(cuts, note=(
            f"Fleet: seed {spec.seed}, {spec.n_servers} servers, {spec.days} days; checkpoint {checkpoint.name} "
            f"(sha256 {digest}): tied to that model, re-run `make calibrate-alerts CHECKPOINT=...` for another.\n"
            f"# Per metric: the most recall at >= 1 h among cuts with precision of onsets >= "
            f"{args.target_precision:g} on that fleet, else the best F1."))
        print(sweep.to_markdown(index=False, floatfmt=".2f"))
        print(f"wrote {path}: {cuts} ({time.perf_counter() - started:.0f} s)")
        return
    spec = backtest.FleetSpec(n_servers=args.servers, days=args.days, shape_rate=args.shape_rate)
    result = backtest.run_backtest(checkpoint, spec, alerts.load_config(), curve=args.curve,
                                   real=not args.no_real, forecaster=forecaster, progress=print)
    print(f"\nheld-out simulated fleet: seed {spec.seed}, {spec.n_servers} servers, {spec.days} days, shape rate "
          f"{spec.shape_rate:g}, origins every 30 min; cuts {result.cuts}")
    print(backtest.markdown_table(result))
    if not result.curve.empty:
        print("\nprecision / recall against one common cut:")
        print(result.curve.to_markdown(index=False, floatfmt=".2f"))
    if not result.real.empty:
        print("\nNAB CloudWatch CPU traces (anomaly windows):")
        print(result.real.to_markdown(index=False, floatfmt=".2f"))
    print("\nseconds:", {k: round(v, 1) for k, v in result.seconds.items()},
          f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
