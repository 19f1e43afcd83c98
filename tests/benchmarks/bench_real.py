"""Benchmark: real CloudWatch CPU traces forecast through the real HTTP path, against naive baselines.

Run with ``make bench-real`` (``.venv/bin/python tests/benchmarks/bench_real.py``). The protocol (issue 9):

- every ``ec2_cpu_utilization_*.csv`` in ../shared/data/nab (the test set: never tune on it; ``--dev``
  runs the same protocol on ../shared/data/nab/other/, rescaled to percent, for any tuning), put on the
  5-minute grid (gaps of 10-20 minutes interpolated);
- one forecast origin every 12 steps over the trace's last 30 %; the 288 steps before an origin are
  posted to ``POST /feed/data`` as one server (profile ``generic``; memory, disk and load filled in:
  constant by default, realistic varying series with ``--varying``);
- the forecast is read back from ``GET /predictions``; its cpu P50 over the next 96 steps is scored
  against last value, seasonal naive (24 h) and the mean of the last 24 h on the same origins;
- per trace: served MAE, model-only MAE (the same windows through ``Forecaster.forecast`` in-process:
  the network unguarded), the three baselines, the ratio to the best baseline and the served P10-P90
  coverage, printed as a markdown table;
- the same table on the simulated holdout: the evaluation split of the contract dataset
  (``models.evaluation``: seen servers' last 20 %, one origin every 2 h; ``--sim-every`` thins it),
  with the model-only MAE of all four metrics against the baselines as well.

The service is a real ``bentoml serve`` this script starts with its own data dir, BentoML home and feed
store in a temporary directory, on a free loopback port, serving the model given by ``--checkpoint``
(a ``tft.pt``; default: the MLflow champion of the data dir). Every window is its own server, so all
origins of all traces go in one ingest and come back in one forecast batch. Timestamps are shifted by
whole weeks to end before now (the feed refuses records older than 400 days; hour of day and day of week
are unchanged).

The building blocks (:func:`load_trace`, :func:`trace_windows`, :func:`baseline_forecasts`,
:func:`score`, :func:`served_forecasts`, :func:`model_forecasts`, :func:`markdown_table`) are importable,
so a later phase (after feed retraining) can reuse them.

    make bench-real
    .venv/bin/python tests/benchmarks/bench_real.py --checkpoint path/to/tft.pt --varying
    .venv/bin/python tests/benchmarks/bench_real.py --dev --skip-sim
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # fleetcast_testkit
from fleetcast_testkit.serve import served, service_env, wire_items  # noqa: E402

from models import baselines, config, features, schema, tft  # noqa: E402

NAB_DIR = config.PROJECT_ROOT.parent / "shared" / "data" / "nab"
ENCODER = schema.ENCODER_STEPS  # 288
HORIZON = schema.HORIZON_STEPS  # 96
EVERY = 12  # one origin per hour
TEST_FRACTION = 0.3
CPU = "cpu_percent"
BASELINE_NAMES = tuple(baselines.BASELINES)  # last_value, seasonal_naive, mean_24h
POST_BATCH = 20_000


# --- traces and windows ------------------------------------------------------------------------------
def load_trace(path: Path, rescale: bool = False) -> pd.Series:
    """A NAB csv as a series on the 5-minute grid (gaps interpolated in time).

    ``rescale`` (dev traces in their own units): map min..P99 to 0..60 and clip to 0..100, so a
    byte count or a temperature has percent-like values with its own shape.
    """
    raw = pd.read_csv(path, parse_dates=["timestamp"])
    s = raw.groupby(raw["timestamp"].dt.floor(schema.STEP_FREQ))["value"].mean().astype(float)
    grid = pd.date_range(s.index[0], s.index[-1], freq=schema.STEP_FREQ)
    s = s.reindex(grid).interpolate(method="time").ffill().bfill()
    if rescale and "cpu" not in path.name and "asg" not in path.name:
        lo, hi = float(s.min()), float(s.quantile(0.99))
        s = (60.0 * (s - lo) / max(hi - lo, 1e-9)).clip(0.0, 100.0)
    s.name = path.stem
    return s.clip(0.0, 100.0)


def origins(n: int, every: int = EVERY, test_fraction: float = TEST_FRACTION, encoder: int = ENCODER,
            horizon: int = HORIZON) -> np.ndarray:
    """Positions of the first forecast step: every ``every`` steps over the last ``test_fraction``."""
    start = max(encoder, int(np.ceil(n * (1.0 - test_fraction))))
    return np.arange(start, n - horizon + 1, every, dtype=np.int64)


@dataclass
class Windows:
    """The forecast windows of one trace (or one simulated server): histories and actuals, per metric."""

    name: str
    profile: str
    servers: list[str]  # one server name per window
    ends: pd.DatetimeIndex  # timestamp of each window's last history step
    history: dict[str, np.ndarray]  # metric -> (windows, 288)
    actual: dict[str, np.ndarray]  # metric -> (windows, 96)
    extra: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.servers)


def companions(cpu: np.ndarray, index: pd.DatetimeIndex, varying: bool, seed: int) -> dict[str, np.ndarray]:
    """Memory, disk and load beside a cpu series: constants, or realistic varying series (``varying``)."""
    n = len(cpu)
    if not varying:
        return {"memory_percent": np.full(n, 40.0), "disk_percent": np.full(n, 50.0),
                "load_average": np.full(n, 1.0)}
    rng = np.random.default_rng(seed)
    hours = (index.hour + index.minute / 60.0).to_numpy()
    walk = np.cumsum(rng.normal(0.0, 0.05, n))
    memory = 45.0 + 4.0 * np.sin(2 * np.pi * (hours - 8.0) / 24.0) + walk - walk.mean() + rng.normal(0, 0.2, n)
    disk = 50.0 + np.arange(n) * (0.5 / schema.STEPS_PER_DAY) + rng.normal(0.0, 0.02, n)
    load = 4.0 * cpu / 100.0 * rng.uniform(0.9, 1.1, n) + np.abs(rng.normal(0.05, 0.02, n))
    return {"memory_percent": np.clip(memory, 0, 100), "disk_percent": np.clip(disk, 0, 100),
            "load_average": np.clip(load, 0, schema.MAX_LOAD_AVERAGE)}


def trace_windows(series: pd.Series, varying: bool = False, every: int = EVERY, seed: int = 0,
                  profile: str = schema.DEFAULT_PROFILE) -> Windows:
    """Windows of a cpu trace: 288 steps of history (cpu + companions) and the next 96 cpu actuals."""
    index = pd.DatetimeIndex(series.index)
    values = {CPU: series.to_numpy(dtype=float), **companions(series.to_numpy(dtype=float), index, varying, seed)}
    at = origins(len(series), every)
    take = at[:, None] + np.arange(-ENCODER, 0)[None, :]
    ahead = at[:, None] + np.arange(HORIZON)[None, :]
    short = str(series.name).replace("ec2_cpu_utilization_", "")
    return Windows(
        name=str(series.name), profile=profile,
        servers=[f"real-{short}.o{int(o):05d}" for o in at],
        ends=index[at - 1],
        history={m: v[take] for m, v in values.items()},
        actual={m: v[ahead] for m, v in values.items()},
    )


def window_records(windows: Sequence[Windows], shift: pd.Timedelta = pd.Timedelta(0)) -> pd.DataFrame:
    """Long-format records (schema.COLUMNS) of every window, one server per window, timestamps + ``shift``."""
    parts = []
    steps = pd.to_timedelta(np.arange(-ENCODER + 1, 1) * schema.STEP_MINUTES, unit="min")
    for w in windows:
        k = len(w)
        ts = (w.ends.values[:, None] + steps.values[None, :]).reshape(-1)
        part = pd.DataFrame({
            schema.TIMESTAMP: pd.DatetimeIndex(ts) + shift,
            schema.SERVER: np.repeat(np.array(w.servers, dtype=object), ENCODER),
            **{m: w.history[m].reshape(-1).astype(np.float64) for m in schema.METRICS},
            schema.STATUS: schema.STATUSES[0],
            schema.PROFILE: w.profile,
        })
        parts.append(part[list(schema.COLUMNS)])
        _ = k
    return pd.concat(parts, ignore_index=True)


def week_shift(latest: pd.Timestamp, now: pd.Timestamp | None = None) -> pd.Timedelta:
    """Whole weeks that bring ``latest`` to at most a week before ``now`` (calendar features unchanged)."""
    now = now if now is not None else pd.Timestamp.now(tz="UTC").tz_localize(None)
    weeks = int((now - latest) / pd.Timedelta(days=7))
    return pd.Timedelta(days=7 * max(weeks, 0))


# --- forecasts ----------------------------------------------------------------------------------------
Quantiles = dict[str, dict[str, np.ndarray]]  # server -> metric -> (96, 3) P10/P50/P90


def baseline_forecasts(w: Windows, metric: str = CPU) -> dict[str, np.ndarray]:
    """The three baselines of ``models.baselines`` on the windows' histories: name -> (windows, 96)."""
    history = w.history[metric][:, :, None]
    return {name: fn(history, HORIZON)[:, :, 0] for name, fn in baselines.BASELINES.items()}


def model_forecasts(forecaster: tft.Forecaster, records: pd.DataFrame) -> Quantiles:
    """The network alone, in-process, on the same records the service gets (no guard, no service)."""
    out = forecaster.forecast(records)
    return {server: fc.quantiles for server, fc in out.items()}


@contextlib.contextmanager
def service(checkpoint: Path, workdir: Path) -> Iterator[httpx.Client]:
    """A real ``bentoml serve`` of the checkout with its own data dir, BentoML home and feed store."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = service_env(workdir, FLEETCAST_MODEL_PATH=str(checkpoint), FLEETCAST_RATE_LIMIT_PER_SECOND="0",
                      FLEETCAST_REFRESH_SECONDS="5", PYTHONPATH=str(config.PROJECT_ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    with served(workdir / "serve.log", env, timeout=300) as server, \
            httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


def served_forecasts(client: httpx.Client, records: pd.DataFrame, timeout: float = 900.0) -> Quantiles:
    """POST ``records`` to /feed/data, wait until /predictions has a forecast from each server's last step."""
    # server by server (each window's 288 steps together, as the protocol posts "one server"): posted in
    # time order, a refresh between two requests would see most windows half-posted and the guard would
    # judge them on a backtest of a partial history (docs/performance.md "Guard")
    items = wire_items(records.sort_values([schema.SERVER, schema.TIMESTAMP], kind="stable"), 4)
    for i in range(0, len(items), POST_BATCH):
        r = client.post("/feed/data", json={"records": items[i:i + POST_BATCH]})
        r.raise_for_status()
        body = r.json()
        if body.get("records_rejected"):
            raise SystemExit(f"the feed rejected records: {body['errors'][:3]}")
    expected = records.groupby(schema.SERVER)[schema.TIMESTAMP].max().dt.strftime("%Y-%m-%dT%H:%M:%S").to_dict()
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/predictions").json()
        got: Quantiles = {}
        for entry in body["predictions"]:
            name = entry[schema.SERVER]
            if name in expected and entry["current"]["timestamp"] == expected[name]:
                fc = entry["forecast"]
                got[name] = {m: np.stack([np.asarray(fc[m][q], dtype=float) for q in ("p10", "p50", "p90")], axis=1)
                             for m in schema.METRICS}
        if len(got) == len(expected):
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(got)} of {len(expected)} servers forecast after {timeout:.0f} s")
        time.sleep(2.0)


# --- scores and tables --------------------------------------------------------------------------------
def stack(w: Windows, forecasts: Quantiles, metric: str = CPU) -> np.ndarray:
    """(windows, 96, 3) of one metric, in the windows' order."""
    return np.stack([forecasts[s][metric] for s in w.servers])


def mae(forecast: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean(np.abs(forecast - actual)))


def score(w: Windows, served: Quantiles | None, model: Quantiles | None, metric: str = CPU) -> dict[str, object]:
    """One table row: served / model MAE, baselines, best baseline, ratios and served P10-P90 coverage."""
    actual = w.actual[metric]
    row: dict[str, object] = {"trace": w.name, "windows": len(w)}
    for name, fc in baseline_forecasts(w, metric).items():
        row[name] = mae(fc, actual)
    best = min(BASELINE_NAMES, key=lambda b: float(row[b]))  # type: ignore[arg-type]
    row["best"], row["best_mae"] = best, row[best]
    for label, source in (("served", served), ("model", model)):
        if source is None:
            continue
        q = stack(w, source, metric)
        row[f"{label}_mae"] = mae(q[:, :, 1], actual)
        row[f"{label}_ratio"] = float(row[f"{label}_mae"]) / max(float(row["best_mae"]), 1e-9)  # type: ignore[arg-type]
        row[f"{label}_coverage"] = float(np.mean((actual >= q[:, :, 0]) & (actual <= q[:, :, 2])))
    return row


def markdown_table(rows: Sequence[dict[str, object]]) -> str:
    """Rows of :func:`score` as a markdown table (columns present in the rows only)."""
    has = {k for r in rows for k in r}
    cols: list[tuple[str, str, str]] = [("trace", "trace", "s"), ("windows", "windows", "d")]
    for label in ("served", "model"):
        if f"{label}_mae" in has:
            cols.append((f"{label}_mae", f"{label} MAE", ".3f"))
    cols += [(b, b, ".3f") for b in BASELINE_NAMES]
    for label in ("served", "model"):
        if f"{label}_mae" in has:
            cols.append((f"{label}_ratio", f"{label} / best", ".2f"))
    for label in ("served", "model"):
        if f"{label}_coverage" in has:
            cols.append((f"{label}_coverage", f"{label} P10-P90 cov.", ".2f"))
    lines = ["| " + " | ".join(title for _, title, _ in cols) + " |",
             "|" + "|".join("---" if fmt == "s" else "---:" for _, _, fmt in cols) + "|"]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            value = r.get(key, "")
            text = "" if value == "" else format(value, fmt)
            if key == r.get("best"):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the simulated holdout ----------------------------------------------------------------------------
def simulated_windows(every: int, shape_rate: float | None = None) -> list[Windows]:
    """Per server of the contract dataset, the evaluation split's windows (seen servers first).

    The same data and split as ``models.evaluation.prepare_experiment`` on ``simulator.generate_fleet()``
    (``shape_rate``: the simulator's default when None; 0 for the profiles alone, as before real shapes).
    """
    from models import evaluation, simulator

    kwargs = {} if shape_rate is None else {"shape_rate": shape_rate}
    records = simulator.generate_fleet(**kwargs).records
    split = evaluation.make_split(records)
    frame = features.prepare_frame(records)
    windows = evaluation.validation_windows(frame, split.cutoff, every=every, unseen=split.unseen)
    arrays = evaluation.SeriesArrays.from_frame(frame)
    ts = {str(s): pd.DatetimeIndex(g[schema.TIMESTAMP]) for s, g in frame.groupby(schema.SERVER, sort=True)}
    out = []
    for server, group in windows.groupby(schema.SERVER, sort=True):
        slab = arrays.slab(group, ENCODER, HORIZON)
        pos = group["origin_idx"].to_numpy() - arrays.start[str(server)]
        out.append(Windows(
            name=str(server), profile=str(group[schema.PROFILE].iloc[0]),
            servers=[f"{server}.o{int(o):05d}" for o in pos],
            ends=ts[str(server)][pos - 1],
            history={m: slab[:, :ENCODER, i] for i, m in enumerate(features.TARGETS)},
            actual={m: slab[:, ENCODER:, i] for i, m in enumerate(features.TARGETS)},
            extra={"unseen": bool(group["unseen"].iloc[0])},
        ))
    return sorted(out, key=lambda w: (bool(w.extra["unseen"]), w.name))


def pooled(name: str, ws: Sequence[Windows]) -> Windows:
    """Windows of several traces/servers as one (for a pooled row)."""
    return Windows(name=name, profile=ws[0].profile, servers=[s for w in ws for s in w.servers],
                   ends=pd.DatetimeIndex(np.concatenate([w.ends.values for w in ws])),
                   history={m: np.concatenate([w.history[m] for w in ws]) for m in ws[0].history},
                   actual={m: np.concatenate([w.actual[m] for w in ws]) for m in ws[0].actual})


def all_metrics_table(ws: Windows, model: Quantiles) -> str:
    lines = ["| metric | model MAE 1-96 | " + " | ".join(BASELINE_NAMES) + " | model P10-P90 cov. |",
             "|---|---:|" + "---:|" * len(BASELINE_NAMES) + "---:|"]
    for m in schema.METRICS:
        r = score(ws, None, model, m)
        lines.append(f"| {m} | {r['model_mae']:.3f} | " + " | ".join(f"{r[b]:.3f}" for b in BASELINE_NAMES)
                     + f" | {r['model_coverage']:.2f} |")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------------
def load_forecaster(checkpoint: Path | None) -> tuple[tft.Forecaster, Path, str]:
    if checkpoint is not None:
        return tft.Forecaster.from_checkpoint(checkpoint), checkpoint, f"checkpoint {checkpoint}"
    from models import registry

    path = registry.champion_checkpoint_path(dst=tempfile.mkdtemp(prefix="fleetcast-bench-real-model-"))
    forecaster, info = registry.load_champion()
    return forecaster, Path(path), f"MLflow champion {info['name']} v{info['version']} (run {info['run_id']})"


def run(forecaster: tft.Forecaster, checkpoint: Path, windows: list[Windows], http: bool,
        workdir: Path) -> tuple[Quantiles | None, Quantiles]:
    latest = max(w.ends.max() for w in windows)
    records = window_records(windows, week_shift(latest))
    t0 = time.perf_counter()
    model = model_forecasts(forecaster, records)
    print(f"  model-only: {len(model):,} windows forecast in-process in {time.perf_counter() - t0:.1f} s", flush=True)
    served_q = None
    if http:
        t0 = time.perf_counter()
        with service(checkpoint, workdir) as client:
            served_q = served_forecasts(client, records)
        print(f"  served: {len(records):,} records posted, {len(served_q):,} forecasts read back in "
              f"{time.perf_counter() - t0:.1f} s (service start included)", flush=True)
    return served_q, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a tft.pt (default: the MLflow champion)")
    parser.add_argument("--varying", action="store_true", help="varying memory/disk/load instead of constants")
    parser.add_argument("--dev", action="store_true", help="the dev traces of nab/other/ instead of the ec2 test set")
    parser.add_argument("--skip-http", action="store_true", help="model-only (no service)")
    parser.add_argument("--skip-sim", action="store_true", help="no simulated holdout")
    parser.add_argument("--sim-every", type=int, default=24, help="steps between simulated origins (24 = 2 h)")
    parser.add_argument("--sim-shape-rate", type=float, default=None,
                        help="simulator shape_rate of the holdout data (default: the simulator's; 0: profiles only)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    forecaster, checkpoint, which = load_forecaster(args.checkpoint)
    print(f"fleetcast bench-real: model {which}; companions {'varying' if args.varying else 'constant'}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    paths = sorted((NAB_DIR / "other").glob("*.csv")) if args.dev else sorted(NAB_DIR.glob("ec2_cpu_utilization_*.csv"))
    traces = [trace_windows(load_trace(p, rescale=args.dev), args.varying, seed=i) for i, p in enumerate(paths)]
    with tempfile.TemporaryDirectory(prefix="fleetcast-bench-real-") as tmp:
        print(f"\n{'dev' if args.dev else 'real'} traces: {len(traces)}, {sum(len(w) for w in traces):,} windows "
              f"(origin every {EVERY} steps over the last {TEST_FRACTION:.0%}, 288 steps posted per window)")
        served_q, model_q = run(forecaster, checkpoint, traces, not args.skip_http, Path(tmp) / "real")
        rows = [score(w, served_q, model_q) for w in traces]
        print("\ncpu_percent P50 MAE over steps 1-96 (bold: best baseline)\n")
        print(markdown_table(rows))
        if served_q is not None:
            losing = [str(r["trace"]) for r in rows if float(r["served_ratio"]) > 1.0]  # type: ignore[arg-type]
            print(f"\nserved worse than the best baseline on {len(losing)} of {len(rows)}: {', '.join(losing) or '-'}")
        losing = [str(r["trace"]) for r in rows if float(r["model_ratio"]) > 1.0]  # type: ignore[arg-type]
        print(f"model-only worse than the best baseline on {len(losing)} of {len(rows)}: {', '.join(losing) or '-'}")

        if not args.skip_sim:
            sim = simulated_windows(args.sim_every, args.sim_shape_rate)
            print(f"\nsimulated holdout: {len(sim)} servers, {sum(len(w) for w in sim):,} windows "
                  f"(evaluation split, origin every {args.sim_every} steps; shape_rate "
                  f"{'default' if args.sim_shape_rate is None else args.sim_shape_rate})")
            served_s, model_s = run(forecaster, checkpoint, sim, not args.skip_http, Path(tmp) / "sim")
            rows = [score(w, served_s, model_s) for w in sim]
            for r, w in zip(rows, sim, strict=True):
                r["trace"] = f"{r['trace']}{' (unseen)' if w.extra['unseen'] else ''}"
            seen = [w for w in sim if not w.extra["unseen"]]
            unseen = [w for w in sim if w.extra["unseen"]]
            rows.append(score(pooled("**all seen servers**", seen), served_s, model_s))
            if unseen:
                rows.append(score(pooled("**all unseen servers**", unseen), served_s, model_s))
            print("\ncpu_percent P50 MAE over steps 1-96, simulated holdout\n")
            print(markdown_table(rows))
            print("\nall metrics, seen servers, model-only (P50 MAE over steps 1-96)\n")
            print(all_metrics_table(pooled("seen", seen), model_s))


if __name__ == "__main__":
    main()
