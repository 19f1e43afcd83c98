"""Benchmark the serving path: batched forecasting vs the library's predict(), GET latency, ingest rate.

Run with ``make bench-serve`` (``.venv/bin/python tests/benchmarks/bench_serve.py``). One run, on the
same windows (the last 24 h of a simulated fleet, tiled to the fleet size):

1. forecast throughput (series/s) of ``Forecaster.forecast`` and of pytorch-forecasting's
   ``model.predict(dataset, mode="quantiles")`` (its default batch size, 64) at 20, 1,000 and 10,000
   servers; both timed from the same history DataFrame (frame preparation + dataset + network). Fleets
   above ``--library-max`` (default 10,000: all measured; the library's run at 10,000 takes ~40 s and
   ~9 GB) are extrapolated linearly for the library, and the output says so; the library with the
   service's batch size is printed for reference;
   then, beside the speed-up at 1,000 servers: the model's FLOPs per series (the fused graph on a batch
   of full 24 h windows: matmuls as ``torch.utils.flop_counter`` counts them, LSTMs and attention by formula,
   ``models.fused.forward_flops``), the machine's measured fp32 matmul rate (1,024-square products, 1 and 2
   threads, ``models.fused.matmul_rate``) and the share of it the service path reaches; and int8 dynamic
   quantization of the fused graph's ``nn.Linear`` layers (measured, not served): its time at 1,000
   servers and its P50 MAE on a simulated holdout beside the float model's (``--skip-quant`` to skip;
   meaningful with a trained ``--model``);
2. ingest throughput (records/s): 1,000-record batches over loopback HTTP to a ``bentoml serve``
   subprocess, until 1,000 servers x 24 h are stored;
3. GET /predictions latency p50/p99 with 1,000 servers (same subprocess, after its batch is ready).

Model: the MLflow champion when the registry under the data dir has one, else a default-size
(hidden 32) untrained TFT built from the same dataset parameters (the output says which; speed does
not depend on the weights). Everything the run writes goes to a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # fleetcast_testkit
from fleetcast_testkit.serve import served, service_env, wire_items  # noqa: E402

from models import features, schema, simulator, tft  # noqa: E402

SIZES = (20, 1_000, 10_000)
LIBRARY_BATCH = 64  # model.predict()'s default batch size


def load_model(path: Path | None = None) -> tuple[tft.Forecaster, str]:
    if path is not None:
        forecaster = tft.Forecaster.from_checkpoint(path)
        return forecaster, f"checkpoint {path} ({forecaster.n_parameters:,} parameters)"
    try:
        from models import registry

        if registry.current_champion() is not None:
            forecaster, info = registry.load_champion()
            return forecaster, f"MLflow champion {info['name']} v{info['version']} (run {info['run_id']})"
    except Exception as exc:  # no registry or no champion: fall back, and say so
        print(f"(no champion: {type(exc).__name__}: {exc})")
    records = simulator.generate_fleet(n_servers=8, steps=3 * schema.STEPS_PER_DAY, seed=1).records
    dataset = features.build_training_dataset(features.prepare_frame(records))
    model = tft.build_model(dataset, tft.ModelSettings())
    forecaster = tft.Forecaster(model, sorted(records[schema.SERVER].unique()), {"bench": "untrained"})
    return forecaster, f"default-size untrained TFT (hidden 32, {forecaster.n_parameters:,} parameters)"


def fleet_history(n_servers: int, end: pd.Timestamp, base: pd.DataFrame) -> pd.DataFrame:
    """``n_servers`` series of 288 steps ending at ``end``: the base fleet's windows, tiled and renamed."""
    names = base[schema.SERVER].unique()
    reps = int(np.ceil(n_servers / len(names)))
    parts = []
    for r in range(reps):
        part = base.copy()
        part[schema.SERVER] = part[schema.SERVER] + f"-{r:04d}"
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    keep = sorted(out[schema.SERVER].unique())[:n_servers]
    out = out[out[schema.SERVER].isin(keep)].reset_index(drop=True)
    shift = end - out[schema.TIMESTAMP].max()
    out[schema.TIMESTAMP] = out[schema.TIMESTAMP] + shift
    return out


def time_service(forecaster: tft.Forecaster, history: pd.DataFrame) -> float:
    t0 = time.perf_counter()
    out = forecaster.forecast(history)
    seconds = time.perf_counter() - t0
    assert len(out) == history[schema.SERVER].nunique()
    return seconds


def time_library(forecaster: tft.Forecaster, history: pd.DataFrame, batch_size: int = LIBRARY_BATCH) -> float:
    """pytorch-forecasting's own path: same frame preparation, then ``model.predict`` (Trainer per call)."""
    t0 = time.perf_counter()
    frame, _ = features.inference_frame(history, forecaster.max_encoder_length, forecaster.min_encoder_length,
                                        forecaster.horizon)
    dataset = features.dataset_from_parameters(forecaster.inference_parameters, frame, predict=True)
    out = forecaster.model.predict(dataset, mode="quantiles", batch_size=batch_size,
                                   trainer_kwargs={"accelerator": "cpu", "logger": False,
                                                   "enable_progress_bar": False, "enable_model_summary": False})
    seconds = time.perf_counter() - t0
    n = out[0].shape[0] if isinstance(out, list | tuple) else out.shape[0]
    assert n == history[schema.SERVER].nunique()
    return seconds


def compute_limit(forecaster: tft.Forecaster, history: pd.DataFrame, series_per_s: float) -> None:
    """FLOPs per series of the fused graph, the measured fp32 matmul rate, and the share of it reached."""
    from models import fused, inference

    network = forecaster._network
    if network is None:
        print("compute limit: the model runs on the library's forward (no fused graph to count)")
        return
    aligned = inference.align_history(history, forecaster.max_encoder_length, forecaster.min_encoder_length)
    fleet = forecaster._tensor_builder.encode(aligned)
    flops = fused.forward_flops(network, fleet.batch(np.arange(min(len(fleet), tft.INFERENCE_CHUNK))))
    rates = {t: fused.matmul_rate(t) for t in (1, 2)}
    limit = max(rates[2], 2 * rates[1]) if (os.cpu_count() or 1) >= 2 else rates[1]
    reached = series_per_s * flops["total"]
    print(f"model cost: {flops['total'] / 1e6:.1f} MFLOP per series (fused graph, {history[schema.SERVER].nunique():,} "
          f"servers x 288 steps: matmuls {flops['matmul'] / 1e6:.1f}, LSTMs {flops['lstm'] / 1e6:.1f}, "
          f"attention {flops['attention'] / 1e6:.1f})")
    print(f"machine: fp32 matmul (1024^2, torch) {rates[1] / 1e9:.1f} GFLOP/s on 1 thread, {rates[2] / 1e9:.1f} on 2 "
          f"(load average now {os.getloadavg()[0]:.2f})")
    print(f"service path at 1,000 servers: {series_per_s:,.0f} series/s = {reached / 1e9:.1f} GFLOP/s = "
          f"{100 * reached / limit:.0f} % of the machine's matmul limit ({limit / 1e9:.1f} GFLOP/s, "
          f"{limit / flops['total']:,.0f} series/s)")


def quantization(forecaster: tft.Forecaster, history: pd.DataFrame, seconds_float: float, holdout: int) -> None:
    """int8 dynamic quantization of the fused graph's linear layers: speed at 1,000 servers and the P50
    MAE on a simulated holdout (fresh seed, ``holdout`` servers, 96 steps after each 24 h window)."""
    import copy

    import torch

    network = forecaster._network
    if network is None:
        return
    quant = torch.ao.quantization.quantize_dynamic(copy.deepcopy(network), {torch.nn.Linear}, dtype=torch.qint8)
    variant = tft.Forecaster(quant.model, forecaster.training_servers, forecaster.metadata)
    variant.__dict__["_network"] = quant  # Forecaster._network is a cached property: serve the quantized graph
    seconds = min(time_service(variant, history) for _ in range(2))
    print(f"int8 dynamic quantization (nn.Linear of the fused graph): {seconds:.2f} s at 1,000 servers "
          f"({seconds_float / seconds:.2f}x the float path)")
    fleet = simulator.generate_fleet(n_servers=holdout, steps=schema.STEPS_PER_DAY * 3, seed=2718)
    records = fleet.records.sort_values([schema.SERVER, schema.TIMESTAMP])
    windows, actual = [], []
    for k, origin in enumerate(range(schema.ENCODER_STEPS, schema.STEPS_PER_DAY * 3 - 96 + 1, 72)):
        for name, group in records.groupby(schema.SERVER, sort=True):
            part = group.iloc[origin - schema.ENCODER_STEPS:origin].copy()
            part[schema.SERVER] = f"{name}@{k}"
            windows.append(part)
            actual.append((f"{name}@{k}", group.iloc[origin:origin + 96]))
    frame = pd.concat(windows, ignore_index=True)
    ours, theirs = forecaster.forecast(frame), variant.forecast(frame)
    print(f"  P50 MAE, steps 1-96, simulated holdout ({holdout} servers, {len(actual):,} windows, seed 2718):")
    for metric in schema.METRICS:
        truth = np.stack([a[metric].to_numpy() for _, a in actual])
        f32 = np.mean(np.abs(np.stack([ours[n].quantiles[metric][:, 1] for n, _ in actual]) - truth))
        i8 = np.mean(np.abs(np.stack([theirs[n].quantiles[metric][:, 1] for n, _ in actual]) - truth))
        print(f"    {metric:<16} float {f32:6.3f}  int8 {i8:6.3f}  ({100 * (i8 - f32) / f32:+.1f} %)")


@contextlib.contextmanager
def serving(forecaster: tft.Forecaster) -> Iterator[httpx.Client]:
    """A real ``bentoml serve`` subprocess on loopback running ``forecaster``, with state in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="fleetcast-bench-") as tmp:
        tmp_path = Path(tmp)
        checkpoint = tmp_path / "model.pt"
        forecaster.save(checkpoint)
        env = service_env(tmp_path, FLEETCAST_MODEL_PATH=str(checkpoint), FLEETCAST_RATE_LIMIT_PER_SECOND="0",
                          FLEETCAST_REFRESH_SECONDS="5")
        with served(tmp_path / "serve.log", env) as server, httpx.Client(base_url=server.url, timeout=120) as client:
            yield client


def feed_and_wait(client: httpx.Client, history: pd.DataFrame) -> tuple[int, int, float, float]:
    """POST ``history`` in 1,000-record batches, then wait for a batch of forecasts covering every server.

    Returns (records, batches, ingest seconds, seconds from the last POST to that forecast batch).
    """
    records = wire_items(history.sort_values([schema.TIMESTAMP, schema.SERVER]), 2)
    batches = [records[i:i + 1000] for i in range(0, len(records), 1000)]
    t0 = time.perf_counter()
    for batch in batches:
        r = client.post("/feed/data", json={"records": batch})
        r.raise_for_status()
    ingest_s = time.perf_counter() - t0
    posted = pd.Timestamp.now(tz="UTC").tz_localize(None).strftime("%Y-%m-%dT%H:%M:%S")
    n_servers = history[schema.SERVER].nunique()
    t0 = time.perf_counter()
    while True:  # a batch computed after the last POST, covering every server
        body = client.get("/health").json()
        if body["servers_tracked"] >= n_servers and (body["last_prediction"] or "") > posted:
            break
        time.sleep(0.2)
    return len(records), len(batches), ingest_s, time.perf_counter() - t0


def bench_http(forecaster: tft.Forecaster, history: pd.DataFrame, requests: int) -> dict[str, float]:
    with serving(forecaster) as client:
        n_records, n_batches, ingest_s, batch_s = feed_and_wait(client, history)
        n_servers = history[schema.SERVER].nunique()
        latencies = []
        size = 0
        for _ in range(requests):
            t = time.perf_counter()
            r = client.get("/predictions")
            latencies.append(time.perf_counter() - t)
            size = len(r.content)
        assert len(r.json()["predictions"]) == n_servers
        t = time.perf_counter()
        full = client.get("/predictions", params={"include_history": "true"})
        full_s = time.perf_counter() - t
    lat = np.array(latencies) * 1000
    return {"records": n_records, "batches": n_batches, "ingest_s": ingest_s,
            "ingest_rate": n_records / ingest_s, "first_batch_wait_s": batch_s,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": statistics.fmean(lat), "bytes": size, "full_bytes": len(full.content),
            "full_first_s": full_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library-max", type=int, default=10_000,
                        help="largest fleet the library's predict() runs in full; larger ones are extrapolated")
    parser.add_argument("--requests", type=int, default=200, help="GET /predictions requests for the latency")
    parser.add_argument("--repeat", type=int, default=2, help="best of N for fleets up to 1,000 servers")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for this run and the served worker (0: torch's default); on shared "
                             "cores 1 avoids OpenMP spin-wait stalls")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-quant", action="store_true", help="no int8 quantization measurement")
    parser.add_argument("--holdout", type=int, default=50, help="servers of the quantization's simulated holdout")
    parser.add_argument("--sizes", default=",".join(str(n) for n in SIZES),
                        help="fleet sizes to time (1000 is always among them)")
    parser.add_argument("--model", type=Path, default=None,
                        help="a fleetcast TFT checkpoint (default: the MLflow champion, else an untrained TFT)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # this benchmark process only
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the `bentoml serve` subprocess

    forecaster, which = load_model(args.model)
    sizes = sorted({int(n) for n in args.sizes.split(',')} | {1_000})
    end = pd.Timestamp.now(tz="UTC").tz_localize(None).floor(schema.STEP_FREQ)
    base = simulator.LiveFleet(servers=simulator.default_servers(100), seed=11, start=end).history()
    print(f"model: {which}")
    print(f"torch threads: {__import__('torch').get_num_threads()}, cpus: {os.cpu_count()}")
    print()
    print(f"{'servers':>8} | {'Forecaster.forecast':>22} | {'library predict()':>28} | speed-up")
    rows = []
    time_service(forecaster, fleet_history(20, end, base))  # warm-up (imports, first allocation)
    time_library(forecaster, fleet_history(20, end, base))
    for n in sizes:
        history = fleet_history(n, end, base)
        repeat = args.repeat if n <= 1_000 else 1
        ours = min(time_service(forecaster, history) for _ in range(repeat))
        if n <= args.library_max:
            lib = min(time_library(forecaster, history) for _ in range(repeat))
            note = "measured" if repeat == 1 else f"measured, best of {repeat}"
        else:
            known = [r for r in rows if r[0] == args.library_max and r[3].startswith("measured")]
            sub_s = known[0][2] if known else time_library(forecaster, fleet_history(args.library_max, end, base))
            lib = sub_s * n / args.library_max
            note = f"estimated from {args.library_max:,}"
        rows.append((n, ours, lib, note))
        print(f"{n:>8,} | {ours:7.2f} s {n / ours:8,.0f} ser/s | {lib:7.2f} s {n / lib:8,.0f} ser/s "
              f"({note}) | {lib / ours:5.1f}x", flush=True)
    at_1000 = next(r for r in rows if r[0] == 1_000)
    print(f"\nservice path vs library at 1,000 servers: {at_1000[2] / at_1000[1]:.1f}x (goal >= 8x)")
    compute_limit(forecaster, fleet_history(1_000, end, base), 1_000 / at_1000[1])
    if not args.skip_quant:
        quantization(forecaster, fleet_history(1_000, end, base), at_1000[1], args.holdout)
    tuned = time_library(forecaster, fleet_history(1_000, end, base), batch_size=tft.INFERENCE_CHUNK)
    print(f"for reference, library predict() at 1,000 servers with batch_size={tft.INFERENCE_CHUNK} (the service's "
          f"chunk): {tuned:.2f} s = {1_000 / tuned:,.0f} series/s ({tuned / at_1000[1]:.1f}x slower than the service)")

    if not args.skip_http:
        print("\nHTTP against `bentoml serve` (1,000 servers x 288 steps, 1,000-record batches, loopback):")
        res = bench_http(forecaster, fleet_history(1_000, end, base), args.requests)
        print(f"  ingest: {res['records']:,} records in {res['batches']} requests, {res['ingest_s']:.1f} s "
              f"= {res['ingest_rate']:,.0f} records/s")
        print(f"  a batch with all 1,000 servers, computed after the last POST, was ready "
              f"{res['first_batch_wait_s']:.1f} s after it (background refresh every 5 s)")
        print(f"  GET /predictions ({res['bytes'] / 1e6:.1f} MB): p50 {res['p50_ms']:.1f} ms, "
              f"p99 {res['p99_ms']:.1f} ms over {args.requests} requests")
        print(f"  GET /predictions?include_history=true ({res['full_bytes'] / 1e6:.1f} MB), first call: "
              f"{res['full_first_s'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
