"""Benchmark: the Dagster training path with a preset (default ``demo``) on the full contract dataset.

Runs fleet_dataset -> experiment_split -> tft_model -> model_evaluation -> registered_model -> champion_model with
``dg.materialize`` in a throw-away data dir (MLflow sqlite included), then prints wall times and
the validation table: MAE per target and horizon bucket for the TFT and the three baselines,
P10-P90 coverage, unseen vs seen servers, and whether the TFT beats the best baseline.

    make bench-train                       # demo preset, 20 servers x 17,280 steps
    .venv/bin/python tests/benchmarks/bench_train.py --preset demo --max-epochs 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--limit-train-batches", type=float)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--steps", type=int, default=17_280)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fleetcast-bench-train-"))
    os.environ["FLEETCAST_DATA_DIR"] = str(tmp)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["FLEETCAST_MLFLOW_ARTIFACTS"] = str(tmp / "artifacts")
    warnings.filterwarnings("ignore")

    import dagster as dg
    import torch

    from models import baselines, evaluation
    from orchestration.assets import data, promotion, training
    from orchestration.assets import evaluation as evaluation_assets
    from orchestration.mlflow_resource import MlflowResource
    from orchestration.resources import PARQUET_IO_MANAGER, ParquetIOManager

    train_cfg: dict[str, object] = {"preset": args.preset}
    for key in ("max_epochs", "limit_train_batches", "learning_rate", "batch_size"):
        if getattr(args, key) is not None:
            train_cfg[key] = getattr(args, key)
    print(f"fleetcast bench-train: preset {args.preset} {train_cfg}, {args.servers} servers x {args.steps} steps "
          f"({args.servers * args.steps:,} rows), {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"data dir (MLflow sqlite + artifacts, the checkpoint included; kept after the run): {tmp}")
    started = time.perf_counter()
    result = dg.materialize(
        [data.fleet_dataset, training.experiment_split, training.tft_model, evaluation_assets.model_evaluation,
         promotion.registered_model, promotion.champion_model],
        run_config={"ops": {"fleet_dataset": {"config": {"n_servers": args.servers, "steps": args.steps}},
                            "tft_model": {"config": train_cfg}}},
        resources={PARQUET_IO_MANAGER: ParquetIOManager(), "mlflow": MlflowResource()},
    )
    wall = time.perf_counter() - started
    if not result.success:
        raise SystemExit("training path failed")

    trained = result.output_for_node("tft_model")
    metrics = result.output_for_node("model_evaluation")["metrics"]
    decision = result.output_for_node("champion_model")
    step_seconds = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            step_seconds[event.step_key] = event.event_specific_data.duration_ms / 1000

    print(f"\nend-to-end wall time: {wall:.0f} s (load average at end {os.getloadavg()[0]:.2f})")
    for step, secs in step_seconds.items():
        print(f"  {step:<18} {secs:7.1f} s")
    print(f"parameters: {trained['n_parameters']:,}; train_tft {trained['train_seconds']:.0f} s on "
          f"{trained['train_threads']} torch thread(s) (chosen at start: FLEETCAST_TRAIN_THREADS or the idle cores)")
    names = ["tft", *baselines.BASELINES]
    print(f"\nvalidation MAE (P50), seen servers, {int(metrics['n_windows'])} windows (origin every 2 h, last 20 %)")
    header = f"| {'target':<15} | {'horizon':<7} | " + " | ".join(f"{n:>14}" for n in names) + " |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for m in evaluation.TARGETS:
        for bucket in ("1h", "4h", "8h", "all"):
            suffix = "" if bucket == "all" else f"_{bucket}"
            values = [metrics[f"val_mae_{m}{suffix}"]] + [metrics[f"baseline_{b}_mae_{m}{suffix}"]
                                                         for b in baselines.BASELINES]
            label = "1-96" if bucket == "all" else {"1h": "1-12", "4h": "13-48", "8h": "49-96"}[bucket]
            print(f"| {m:<15} | {label:<7} | " + " | ".join(f"{v:>14.3f}" for v in values) + " |")
    print("\nP10-P90 coverage (ideal 0.80), seen / unseen servers")
    for m in evaluation.TARGETS:
        unseen_cov = metrics.get(f"unseen_coverage_p10_p90_{m}", float("nan"))
        print(f"  {m:<15} {metrics[f'coverage_p10_p90_{m}']:.3f} / {unseen_cov:.3f}")
    print(f"\nunseen vs seen servers, MAE over 1-96 ({int(metrics['n_unseen_windows'])} unseen windows)")
    for m in evaluation.TARGETS:
        best_unseen = min(metrics[f"unseen_baseline_{b}_mae_{m}"] for b in baselines.BASELINES)
        print(f"  {m:<15} seen {metrics[f'seen_mae_{m}']:.3f}  unseen {metrics[f'unseen_mae_{m}']:.3f}  "
              f"(best baseline on unseen {best_unseen:.3f})")
    beats = evaluation.beats_baselines(metrics, tuple(evaluation.TARGETS))
    print(f"\nval_score {metrics['val_score']:.4f} vs best baseline score {metrics['best_baseline_score']:.4f} "
          f"(lower is better)")
    print("TFT beats the best baseline on P50 MAE: " + ", ".join(f"{k}={v}" for k, v in beats.items()))
    print(f"promotion: {decision['decision']} - {decision['reason']}")


if __name__ == "__main__":
    main()
