"""Real-data retraining benchmark (issue 9, the closed loop): does the model learn from the production feed?

Run with ``make bench-real-retrain`` (``.venv/bin/python tests/benchmarks/bench_real_retrain.py [--preset demo]``).
State in a temporary directory; a real ``fleetcast serve`` (``bentoml serve`` of the checkout) on a free
loopback port, following BentoML's model store.

1. The champion to start from: ``--checkpoint PATH``, else the MLflow champion of the configured registry
   (``MLFLOW_TRACKING_URI`` / the data dir: what ``make demo`` trained), else (``--train-champion PRESET``)
   one trained here on the simulated fleet. It is registered as v1 in the temporary registry and packaged.
2. For each ``../shared/data/nab/ec2_cpu_utilization_*.csv`` (a server ``aws-<id>``, profile ``generic``,
   memory/disk/load filled in as tests/conftest.py's ``nab_to_records`` does, moved forward by whole
   weeks so it ends in the last week), the first 70 % of its records are posted through
   ``POST /feed/data``.
3. The feed retraining job's assets run (``feed_retrain``: production_dataset + check, fine-tune from the
   champion with ``--preset``, evaluation and the gate on the held-out last 20 % of feed time, bento_model).
4. On each trace's last 30 %: origins every 12 steps with 288 steps of (gap-free) history before each and
   96 after. Printed per trace: MAE of the cpu P50 over the 96 steps of the fine-tuned model alone
   (``model``), of the champion before (``zero-shot``), of what the service serves after the job
   (``served``: each origin's history posted as a server of its own, forecast read back from
   ``GET /predictions``), and of last value / seasonal naive 24 h / mean of the last 24 h on the same
   origins, the best of those, and the margin (``1 - MAE / best``: positive = better than the best naive).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))  # fleetcast_testkit
sys.path.insert(0, str(ROOT / "tests"))  # conftest's nab_to_records (the one NAB -> records mapping)

TRAIN_FRACTION = 0.7
ORIGIN_EVERY = 12
CHUNK = 5000


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="fine-tuning preset (tiny | demo | full)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--checkpoint", type=Path, default=None, help="champion checkpoint (tft.pt) to start from")
    parser.add_argument("--train-champion", default=None,
                        help="no champion in the registry: train one on the simulated fleet with this preset")
    parser.add_argument("--nab-dir", type=Path, default=ROOT.parent / "shared" / "data" / "nab")
    parser.add_argument("--keep", type=Path, default=None, help="copy the state dir here at the end")
    return parser.parse_args()


def find_champion(args: argparse.Namespace, state: Path) -> Path:
    from models import evaluation, registry, simulator, tft

    if args.checkpoint is not None:
        return args.checkpoint
    try:
        if registry.current_champion() is not None:
            path = registry.champion_checkpoint_path(dst=state / "source-champion")
            print(f"starting from the configured registry's champion ({path})")
            return path
    except Exception as exc:  # no registry at all
        print(f"(no registry champion: {type(exc).__name__}: {exc})")
    if args.train_champion is None:
        raise SystemExit("no champion: pass --checkpoint, run `make demo` first, or --train-champion demo")
    print(f"training a champion on the simulated fleet (preset {args.train_champion}) ...", flush=True)
    exp = evaluation.prepare_experiment(simulator.generate_fleet(seed=42).records)
    preset = tft.resolve_preset(args.train_champion)
    result = tft.train_tft(exp.train_frame, exp.val_dataset_builder, preset.model, preset.train)
    path = state / "trained-champion" / "tft.pt"
    tft.Forecaster(result.model, result.training_servers, {"preset": args.train_champion}).save(path)
    return path


def shifted(frame: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    last = pd.Timestamp(frame["timestamp"].max())
    out = frame.copy()
    out["timestamp"] = out["timestamp"] + pd.Timedelta(weeks=int((now - last) // pd.Timedelta(weeks=1)))
    return out


def items(frame: pd.DataFrame) -> list[dict[str, Any]]:
    from models import schema

    out = frame[list(schema.COLUMNS)].copy()
    out["timestamp"] = schema.iso_many(out["timestamp"])
    return out.to_dict(orient="records")


def post(client: httpx.Client, records: list[dict[str, Any]]) -> None:
    for start in range(0, len(records), CHUNK):
        r = client.post("/feed/data", json={"records": records[start:start + CHUNK]}, timeout=120)
        if r.status_code != 200:
            raise SystemExit(f"POST /feed/data answered {r.status_code}: {r.text[:300]}")


def windows(trace: pd.DataFrame, first_eval: pd.Timestamp) -> tuple[list[pd.DataFrame], np.ndarray, np.ndarray]:
    """(history frames, cpu histories [n, 288], cpu actuals [n, 96]) of the origins after ``first_eval``."""
    from models import grid, schema

    g = grid.align(trace, segments="keep").set_index("timestamp")
    full = g.reindex(pd.date_range(g.index[0], g.index[-1], freq=schema.STEP_FREQ))
    cpu = full["cpu_percent"].to_numpy()
    start = int(np.searchsorted(full.index.to_numpy(), first_eval.to_datetime64()))
    frames, hist, act = [], [], []
    for o in range(max(start, schema.ENCODER_STEPS), len(full) - schema.HORIZON_STEPS + 1, ORIGIN_EVERY):
        h, a = cpu[o - schema.ENCODER_STEPS:o], cpu[o:o + schema.HORIZON_STEPS]
        if np.isnan(h).any() or np.isnan(a).any():
            continue  # an outage longer than 15 min in the window
        frames.append(full.iloc[o - schema.ENCODER_STEPS:o].rename_axis("timestamp").reset_index())
        hist.append(h)
        act.append(a)
    return frames, np.array(hist), np.array(act)


def model_p50(forecaster: Any, frames: list[pd.DataFrame], prefix: str) -> np.ndarray:
    batch = pd.concat([f.assign(server_name=f"{prefix}-o{k:04d}") for k, f in enumerate(frames)], ignore_index=True)
    fc = forecaster.forecast(batch)
    return np.array([fc[f"{prefix}-o{k:04d}"].quantiles["cpu_percent"][:, 1] for k in range(len(frames))])


def served_p50(client: httpx.Client, frames: list[pd.DataFrame], prefix: str, timeout: float = 600) -> np.ndarray:
    names = [f"{prefix}-s{k:04d}" for k in range(len(frames))]
    post(client, items(pd.concat([f.assign(server_name=n) for n, f in zip(names, frames, strict=True)],
                                 ignore_index=True)))
    expected = {n: pd.Timestamp(f["timestamp"].iloc[-1]) for n, f in zip(names, frames, strict=True)}
    deadline = time.monotonic() + timeout
    while True:
        got: dict[str, list[float]] = {}
        doc = client.get("/predictions", timeout=120).json()
        for entry in doc.get("predictions", []):
            name = entry["server_name"]
            if name in expected and pd.Timestamp(entry["current"]["timestamp"]).tz_localize(None) == expected[name]:
                got[name] = entry["forecast"]["cpu_percent"]["p50"]
        if len(got) == len(names):
            return np.array([got[n] for n in names])
        if time.monotonic() > deadline:
            raise SystemExit(f"the service forecast {len(got)} of {len(names)} origins of {prefix} in {timeout} s")
        time.sleep(2)


def main() -> None:
    args = parse()
    with tempfile.TemporaryDirectory(prefix="fleetcast-real-retrain-") as tmp:
        state = Path(tmp)
        source = find_champion(args, state)  # before the environment moves to the temporary state
        env = {"FLEETCAST_DATA_DIR": str(state), "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
               "FLEETCAST_MLFLOW_ARTIFACTS": str(state / "mlartifacts"), "BENTOML_HOME": str(state / "bentoml"),
               "DAGSTER_HOME": str(state / "dagster"), "FLEETCAST_STORE_URL": f"sqlite:///{state / 'feed.db'}",
               "FLEETCAST_DEMO_FLEET": "0", "FLEETCAST_MODEL_POLL_SECONDS": "2", "FLEETCAST_REFRESH_SECONDS": "2",
               "BENTOML_DO_NOT_TRACK": "true"}
        os.environ.update(env)
        (state / "dagster").mkdir()
        run(args, state, source, env)
        if args.keep is not None:
            import shutil

            shutil.copytree(state, args.keep, dirs_exist_ok=True)


def run(args: argparse.Namespace, state: Path, source: Path, env: dict[str, str]) -> None:
    import dagster as dg
    from conftest import nab_to_records
    from fleetcast_testkit.serve import served

    from models import baselines, config, registry, schema, tft
    from orchestration import checks, jobs
    from orchestration.assets import evaluation as evaluation_assets
    from orchestration.assets import feed, packaging, promotion, training
    from orchestration.mlflow_resource import MlflowResource
    from orchestration.resources import PARQUET_IO_MANAGER, ParquetIOManager
    from serving import model_store

    run_id = registry.start_run({"preset": "source-champion"}, run_name="champion (zero-shot)")
    v1 = registry.log_and_register(run_id, source)
    registry.client().set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, v1.version)
    model_store.import_champion()
    zero_shot = tft.Forecaster.from_checkpoint(source)

    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("5min")
    traces = sorted(args.nab_dir.glob("ec2_cpu_utilization_*.csv"))
    if not traces:
        raise SystemExit(f"no ec2_cpu_utilization_*.csv in {args.nab_dir}")
    data = {p.stem.rsplit("_", 1)[-1]: shifted(nab_to_records(p, schema.DEFAULT_PROFILE), now) for p in traces}
    cut = {k: pd.Timestamp(f["timestamp"].iloc[int(len(f) * TRAIN_FRACTION)]) for k, f in data.items()}

    serve_env = dict(os.environ, **env)
    serve_env.pop("FLEETCAST_API_TOKEN", None)
    serve_env.pop("FLEETCAST_MODEL_PATH", None)
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(served(state / "serve.log", serve_env))
        client = stack.enter_context(httpx.Client(base_url=srv.url))
        for key, frame in data.items():
            post(client, items(frame[frame["timestamp"] < cut[key]]))
        posted = sum(int((f["timestamp"] < cut[k]).sum()) for k, f in data.items())
        print(f"posted the first 70 % of {len(data)} traces ({posted} records)")

        run_config = jobs.feed_run_config(args.preset)
        if args.max_epochs is not None:
            run_config["ops"]["tft_model"]["config"]["max_epochs"] = args.max_epochs
        began = time.perf_counter()
        result = dg.materialize(
            [feed.production_dataset, checks.production_dataset_valid, training.experiment_split,
             training.tft_model, evaluation_assets.model_evaluation, promotion.registered_model,
             promotion.champion_model, packaging.bento_model],
            run_config=run_config, instance=dg.DagsterInstance.get(),
            resources={PARQUET_IO_MANAGER: ParquetIOManager(), "mlflow": MlflowResource()},
            tags={"fleetcast/trigger": "bench_real_retrain", "fleetcast/reason": "benchmark"},
        )
        if not result.success:
            raise SystemExit("the feed retraining job failed")
        decision = result.output_for_node("champion_model")
        metrics = result.output_for_node("model_evaluation")["metrics"]
        print(f"feed retraining ({args.preset}, fine-tuned from v{v1.version}): {time.perf_counter() - began:.0f} s; "
              f"gate on held-out feed windows: candidate val_score {metrics['val_score']:.4f}, best baseline "
              f"{metrics['best_baseline_score']:.4f} -> {decision['decision']}: {decision['reason']}")
        candidate, _ = registry.load_version(decision["version"])
        serving_version = decision["champion_version"]
        deadline = time.monotonic() + 120
        while client.get("/health").json()["model"]["version"] != serving_version:
            if time.monotonic() > deadline:
                raise SystemExit(f"the service did not switch to v{serving_version}")
            time.sleep(1)
        print(f"service serving v{serving_version}\n")

        header = (f"{'trace':>8} {'origins':>7} {'zero-shot':>9} {'model':>8} {'served':>8} {'last':>8} "
                  f"{'seas24h':>8} {'mean24h':>8} {'best':>8} {'model margin':>12} {'served margin':>13}")
        print(header)
        wins = 0
        for key, frame in data.items():
            frames, hist, act = windows(frame, cut[key])
            if not frames:
                print(f"{key:>8} no window fits")
                continue
            base = {name: np.abs(fn(hist[:, :, None], schema.HORIZON_STEPS)[:, :, 0] - act).mean()
                    for name, fn in baselines.BASELINES.items()}
            best = min(base.values())
            zs = np.abs(model_p50(zero_shot, frames, f"zs-{key}") - act).mean()
            mod = np.abs(model_p50(candidate, frames, f"ft-{key}") - act).mean()
            srv_mae = np.abs(served_p50(client, frames, f"bench-{key}") - act).mean()
            wins += mod <= best
            print(f"{key:>8} {len(frames):>7} {zs:>9.3f} {mod:>8.3f} {srv_mae:>8.3f} {base['last_value']:>8.3f} "
                  f"{base['seasonal_naive']:>8.3f} {base['mean_24h']:>8.3f} {best:>8.3f} {1 - mod / best:>+12.1%} "
                  f"{1 - srv_mae / best:>+13.1%}", flush=True)
        print(f"\nfine-tuned model <= best naive on {wins} of {len(data)} traces (goal: >= 3)")


if __name__ == "__main__":
    main()
