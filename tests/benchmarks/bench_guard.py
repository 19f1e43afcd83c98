"""Benchmark the forecast guard on real traces: is what the service serves ever worse than naive?

Run with ``.venv/bin/python tests/benchmarks/bench_guard.py --model PATH`` (a ``Forecaster`` checkpoint,
e.g. the demo champion's ``tft.pt``; default: the MLflow champion under the data dir). Protocol of issue 9
on every ``ec2_cpu_utilization_*.csv`` in ``../shared/data/nab`` (AWS CloudWatch CPU, 5-minute):

- the trace is put on the 5-minute grid (mean per bucket, gaps interpolated) and moved forward by whole
  weeks so that it ends in the last week (the service's record window); memory, disk and load are filled
  in (memory follows CPU a little, disk creeps up, load = 4 cores x CPU), profile ``generic``;
- origins every 12 steps over its last 30 %; at each, the 288 steps up to the origin are posted to
  ``POST /feed/data`` of a ``bentoml serve`` the script starts with its own store (one server per
  trace; the store keeps what earlier origins posted, as a live feed would), and the forecast for that
  origin is read back from ``GET /predictions/{server}``;
- its cpu P50 over the next 96 steps (those inside the trace) is scored against the actuals beside last
  value, seasonal naive (24 h) and the mean of the last 24 h at the same origins; P10-P90 coverage too.

Two passes, one service each: the guard on (what is served by default) and ``FLEETCAST_GUARD=0`` (the
model alone, the same windows). Figures go to docs/performance.md ("Guard").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # fleetcast_testkit
from fleetcast_testkit.serve import served  # noqa: E402

from models import baselines, schema  # noqa: E402
from models.config import PROJECT_ROOT  # noqa: E402

NAB_DIR = Path(os.environ.get("FLEETCAST_NAB_DIR", PROJECT_ROOT.parent / "shared" / "data" / "nab"))
EVERY = 12
HIST = schema.ENCODER_STEPS
H = schema.HORIZON_STEPS


def grid_trace(csv: Path) -> pd.DataFrame:
    """The trace as contract records on the 5-minute grid, ending in the last week."""
    raw = pd.read_csv(csv, parse_dates=["timestamp"])
    cpu = raw.set_index("timestamp")["value"].astype(float)
    cpu = cpu.groupby(cpu.index.floor(schema.STEP_FREQ)).mean()
    cpu = cpu.reindex(pd.date_range(cpu.index.min(), cpu.index.max(), freq=schema.STEP_FREQ)).interpolate()
    cpu = cpu.clip(0.0, 100.0)
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor(schema.STEP_FREQ)
    weeks = (now - cpu.index.max()) // pd.Timedelta(weeks=1)
    n = len(cpu)
    rng = np.random.default_rng(0)
    values = cpu.to_numpy()
    return pd.DataFrame({
        schema.TIMESTAMP: cpu.index + pd.Timedelta(weeks=int(weeks)),
        schema.SERVER: f"aws-{csv.stem.rsplit('_', 1)[-1]}",
        "cpu_percent": values,
        "memory_percent": np.clip(40.0 + 0.2 * values + rng.normal(0.0, 1.0, n), 0.0, 100.0),
        "disk_percent": 30.0 + np.linspace(0.0, 5.0, n),
        "load_average": 4.0 * values / 100.0,
        schema.PROFILE: "generic",
    })


def items(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = frame.copy()
    out[schema.TIMESTAMP] = out[schema.TIMESTAMP].dt.strftime("%Y-%m-%dT%H:%M:%S")
    for m in schema.METRICS:
        out[m] = out[m].round(3)
    return out.to_dict(orient="records")


def origins_of(n: int, every: int = EVERY) -> list[int]:
    """Origin indices (the last posted step) every ``every`` steps over the last 30 %."""
    first = max(int(n * 0.7), HIST + schema.STEPS_PER_DAY)
    return list(range(first, n - 1, every))


def run_pass(traces: dict[str, pd.DataFrame], model: Path, guard: bool, state: Path) -> dict[str, dict[str, Any]]:
    env = {**os.environ, "FLEETCAST_DATA_DIR": str(state), "FLEETCAST_STORE_URL": f"sqlite:///{state / 'feed.db'}",
           "FLEETCAST_MODEL_PATH": str(model), "FLEETCAST_DEMO_FLEET": "0", "FLEETCAST_RATE_LIMIT_PER_SECOND": "0",
           "FLEETCAST_REFRESH_SECONDS": "0.1", "FLEETCAST_GUARD": "1" if guard else "0"}
    env.pop("FLEETCAST_API_TOKEN", None)
    out: dict[str, dict[str, Any]] = {}
    with served(state / "serve.log", env) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for name, frame in traces.items():
            server_name = frame[schema.SERVER].iloc[0]
            cpu = frame["cpu_percent"].to_numpy()
            rows: dict[str, list[Any]] = {"p10": [], "p50": [], "p90": [], "actual": [], "source": [],
                                          **{b: [] for b in baselines.BASELINES}}
            started = time.perf_counter()
            for o in origins_of(len(frame)):
                r = http.post("/feed/data", json={"records": items(frame.iloc[o + 1 - HIST:o + 1])})
                r.raise_for_status()
                stamp = frame[schema.TIMESTAMP].iloc[o].strftime("%Y-%m-%dT%H:%M:%S")
                deadline = time.monotonic() + 120
                while True:
                    got = http.get(f"/predictions/{server_name}")
                    if got.status_code == 200 and got.json()["current"]["timestamp"] == stamp:
                        entry = got.json()
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no forecast for {server_name} at {stamp}: {got.text[:300]}")
                    time.sleep(0.05)
                k = min(H, len(frame) - 1 - o)
                fc = entry["forecast"]["cpu_percent"]
                for q in ("p10", "p50", "p90"):
                    rows[q].append(np.array(fc[q][:k]))
                rows["actual"].append(cpu[o + 1:o + 1 + k])
                rows["source"].append(entry.get("forecast_source", {}).get("cpu_percent", "model"))
                hist = cpu[None, o + 1 - schema.STEPS_PER_DAY:o + 1, None]
                for b, fn in baselines.BASELINES.items():
                    rows[b].append(fn(hist, H)[0, :k, 0])
            actual = np.concatenate(rows["actual"])
            res = {"origins": len(rows["actual"]), "seconds": time.perf_counter() - started,
                   "served": float(np.mean(np.abs(np.concatenate(rows["p50"]) - actual))),
                   "coverage": float(np.mean((actual >= np.concatenate(rows["p10"]))
                                             & (actual <= np.concatenate(rows["p90"])))),
                   "naive_share": float(np.mean([s != "model" for s in rows["source"]])),
                   "sources": pd.Series(rows["source"]).value_counts().to_dict()}
            for b in baselines.BASELINES:
                res[b] = float(np.mean(np.abs(np.concatenate(rows[b]) - actual)))
            res["best"] = min(baselines.BASELINES, key=lambda b: res[b])
            res["p50"], res["actual"] = np.concatenate(rows["p50"]), actual
            out[name] = res
            print(f"  {name}: {res['origins']} origins in {res['seconds']:.0f} s, served {res['served']:.3f}, "
                  f"best naive {res[res['best']]:.3f} ({res['best']}), sources {res['sources']}", flush=True)
        health = http.get("/health").json().get("forecast_guard")
    if guard:
        print(f"  /health forecast_guard: {health}")
    return out


def default_model() -> Path:
    from models import registry

    forecaster, info = registry.load_champion()
    path = Path(tempfile.mkdtemp(prefix="fleetcast-bench-guard-")) / "tft.pt"
    forecaster.save(path)
    print(f"model: MLflow champion {info['name']} v{info['version']}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="Forecaster checkpoint (default: the champion)")
    parser.add_argument("--traces", nargs="*", default=None, help="trace ids (default: every ec2_cpu_utilization_*)")
    parser.add_argument("--no-unguarded", action="store_true", help="skip the FLEETCAST_GUARD=0 pass")
    args = parser.parse_args()
    model = args.model or default_model()
    files = sorted(NAB_DIR.glob("ec2_cpu_utilization_*.csv"))
    if args.traces:
        files = [f for f in files if any(t in f.stem for t in args.traces)]
    traces = {f.stem.removeprefix("ec2_cpu_utilization_"): grid_trace(f) for f in files}
    print(f"{len(traces)} traces from {NAB_DIR}, model {model}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="fleetcast-bench-guard-") as tmp:
        passes = [True] if args.no_unguarded else [True, False]
        for guard in passes:
            print(f"pass: guard {'on' if guard else 'off (FLEETCAST_GUARD=0)'}", flush=True)
            state = Path(tmp) / ("guard" if guard else "model")
            state.mkdir()
            results[guard] = run_pass(traces, model, guard, state)
    print("\n| trace | origins | model alone | served (guard) | last value | seasonal 24 h | mean 24 h | "
          "served / best naive | P10-P90 coverage (served) | origins served naive | 50/50 blend |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, g in results[True].items():
        alone = results.get(False, {}).get(name)
        ratio = g["served"] / g[g["best"]] if g[g["best"]] > 0 else float("nan")
        print(f"| {name} | {g['origins']} | {alone['served']:.3f} | " if alone else f"| {name} | {g['origins']} | - | ",
              end="")
        print(f"{g['served']:.3f} | {g['last_value']:.3f} | {g['seasonal_naive']:.3f} | {g['mean_24h']:.3f} | "
              f"{ratio:.2f}x | {g['coverage']:.0%} | {g['naive_share']:.0%} | {blend(g, alone)} |")


def blend(guarded: dict[str, Any], alone: dict[str, Any] | None) -> str:
    """MAE of the mean of the model's P50 (unguarded pass) and what the guard served, on the same windows:
    where the guard served a naive, a 50/50 blend of the model and that naive."""
    if alone is None:
        return "-"
    mixed = 0.5 * (guarded["p50"] + alone["p50"])
    return f"{float(np.mean(np.abs(mixed - guarded['actual']))):.3f}"


if __name__ == "__main__":
    main()
