"""Benchmark one service with a large fleet: 100,000 servers x 24 h by default.

Run with ``make bench-fleet`` (``.venv/bin/python tests/benchmarks/bench_fleet.py``; ``--servers 10000`` while
developing). A real ``bentoml serve`` subprocess of the checkout on loopback (feed store on SQLite, as shipped;
rate limit off; the forecast guard on, as shipped; background refresh every ``--refresh-seconds``) and:

1. **history**: each server's first ``--steps`` - ``--http-steps`` steps are written straight into the
   store's SQLite file before the service starts (not over HTTP: at the measured ingest rate 100,000 x 288
   records would take about 20 minutes), so the service starts with a fleet that already has its history;
2. **ingest**: the last ``--http-steps`` steps of every server are POSTed to ``/feed/data`` as a live fleet
   sends them (time-major: every server's step t, then t+1), ``--batch`` records a request from
   ``--clients`` concurrent writers; printed: records/s;
3. **reads during ingest**: a reader asks ``GET /predictions?limit=100`` every ``--read-interval`` seconds
   for the whole ingest; printed: p50/p99 over the answers that held a batch (and how many were empty);
4. **refresh**: after the last POST, the time until a batch covering every server was published, and the
   service's own figure for that refresh (``last_refresh_seconds`` of ``/health``);
5. **memory**: the resident memory of the service's processes (the API worker holds the store, model and
   answers), after the refresh.

Model: a checkpoint (``--model``), else a default-size (hidden 32) untrained TFT from the simulator's dataset
parameters (speed does not depend on the weights). Servers are the simulator's 100-server live fleet tiled
and renamed. Everything the run writes goes to a temporary directory (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # fleetcast_testkit
from bench_serve import load_model  # noqa: E402
from fleetcast_testkit.serve import served  # noqa: E402

from models import schema, simulator  # noqa: E402
from serving.store import FeedStore  # noqa: E402

BASE_SERVERS = 100


class Fleet:
    """``servers`` servers x ``steps`` steps ending at ``end``: the live fleet's 100 series, tiled and renamed."""

    def __init__(self, servers: int, steps: int, end: pd.Timestamp) -> None:
        base = simulator.LiveFleet(servers=simulator.default_servers(BASE_SERVERS), seed=11, start=end,
                                   history_steps=steps).history()
        base = base.sort_values([schema.SERVER, schema.TIMESTAMP], ignore_index=True)
        self.base_names = base[schema.SERVER].unique()
        self.steps = steps
        self.n = servers
        shape = (len(self.base_names), steps)
        self.profiles = base[schema.PROFILE].to_numpy().reshape(shape)[:, 0]
        self.values = {m: base[m].to_numpy(dtype=float).reshape(shape) for m in schema.METRICS}
        self.timestamps = base[schema.TIMESTAMP].to_numpy().reshape(shape)[0]
        self.names = [f"{self.base_names[i % len(self.base_names)]}-{i // len(self.base_names):05d}"
                      for i in range(servers)]

    def base_of(self, i: int) -> int:
        return i % len(self.base_names)

    def rows(self, step: int) -> list[tuple]:
        """Every server's record at ``step`` as store rows (server, timestamp, metrics..., status, profile)."""
        ts = pd.Timestamp(self.timestamps[step]).to_pydatetime().strftime("%Y-%m-%d %H:%M:%S.%f")
        vals = np.stack([np.round(self.values[m][:, step], 2) for m in schema.METRICS], axis=1).tolist()
        return [(name, ts, *vals[self.base_of(i)], "healthy", self.profiles[self.base_of(i)])
                for i, name in enumerate(self.names)]

    def bodies(self, step: int, batch: int) -> list[bytes]:
        """Every server's record at ``step`` as ``/feed/data`` bodies of ``batch`` records."""
        ts = pd.Timestamp(self.timestamps[step]).strftime("%Y-%m-%dT%H:%M:%S")
        tails = []
        for b in range(len(self.base_names)):
            metrics = ",".join(f'"{m}":{self.values[m][b, step]:.2f}' for m in schema.METRICS)
            tails.append(f'","profile":"{self.profiles[b]}","status":"healthy",{metrics}}}')
        records = [f'{{"timestamp":"{ts}","server_name":"{name}{tails[self.base_of(i)]}'
                   for i, name in enumerate(self.names)]
        return [('{"records":[' + ",".join(records[k:k + batch]) + "]}").encode()
                for k in range(0, len(records), batch)]


def preseed(db: Path, fleet: Fleet, steps: int) -> float:
    """The first ``steps`` steps of every server written straight into the feed store's table."""
    FeedStore(f"sqlite:///{db}").dispose()  # the service's own schema
    t0 = time.perf_counter()
    received = pd.Timestamp.now(tz="UTC").tz_localize(None) - pd.Timedelta(days=1)
    stamp = received.strftime("%Y-%m-%d %H:%M:%S.%f")
    columns = [schema.SERVER, schema.TIMESTAMP, *schema.METRICS, schema.STATUS, schema.PROFILE, "received_at"]
    sql = f"INSERT INTO records ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        for step in range(steps):
            conn.executemany(sql, [(*row, stamp) for row in fleet.rows(step)])
    return time.perf_counter() - t0


def family_rss(root_pid: int) -> dict[int, int]:
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            out[p.pid] = p.memory_info().rss
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=schema.ENCODER_STEPS, help="history steps per server (24 h)")
    parser.add_argument("--http-steps", type=int, default=3, help="of those, the last ones fed over HTTP")
    parser.add_argument("--batch", type=int, default=5_000, help="records per POST")
    parser.add_argument("--clients", type=int, default=4, help="concurrent writers")
    parser.add_argument("--read-interval", type=float, default=0.05, help="seconds between paged GETs")
    parser.add_argument("--refresh-seconds", type=float, default=5.0)
    parser.add_argument("--model", type=Path, default=None, help="a fleetcast TFT checkpoint")
    parser.add_argument("--wait", type=float, default=1800.0, help="longest wait for the full batch (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if not 1 <= args.http_steps <= args.steps:
        parser.error("--http-steps must be between 1 and --steps")

    forecaster, which = load_model(args.model)
    end = pd.Timestamp.now(tz="UTC").tz_localize(None).floor(schema.STEP_FREQ)
    fleet = Fleet(args.servers, args.steps, end)
    print(f"model: {which}")
    print(f"fleet: {args.servers:,} servers x {args.steps} steps; {args.steps - args.http_steps} written into the "
          f"store before the start, the last {args.http_steps} over HTTP ({args.servers * args.http_steps:,} records)")
    print(f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="fleetcast-bench-fleet-"))
    db = tmp / "feed.db"
    seeded = preseed(db, fleet, args.steps - args.http_steps)
    print(f"store pre-filled in {seeded:.0f} s ({db.stat().st_size / 1e9:.2f} GB)", flush=True)
    checkpoint = tmp / "model.pt"
    forecaster.save(checkpoint)
    env = dict(os.environ, FLEETCAST_DATA_DIR=str(tmp), BENTOML_HOME=str(tmp / "bentoml"),
               FLEETCAST_STORE_URL=f"sqlite:///{db}", FLEETCAST_MODEL_PATH=str(checkpoint),
               FLEETCAST_MODEL_POLL_SECONDS="0", FLEETCAST_RATE_LIMIT_PER_SECOND="0", FLEETCAST_DEMO_FLEET="0",
               FLEETCAST_REFRESH_SECONDS=str(args.refresh_seconds), FLEETCAST_MAX_RECORDS=str(max(50_000, args.batch)))
    log = tmp / "serve.log"
    with served(log, env, timeout=600) as server, httpx.Client(base_url=server.url, timeout=600) as client:
        started = time.perf_counter()
        # the first batch (the pre-filled history, by the background refresh) before the live feed starts
        while client.get("/health").json()["servers_tracked"] < args.servers:
            if time.perf_counter() - started > args.wait:
                raise SystemExit(f"no first batch in {args.wait:.0f} s:\n{server.log_tail()}")
            time.sleep(2.0)
        first = time.perf_counter() - started
        first_refresh = client.get("/health").json()["last_refresh_seconds"]
        print(f"first batch (the pre-filled history): published {first:.1f} s after the service was ready, "
              f"computed in {first_refresh} s", flush=True)
        latencies: list[float] = []
        empty, failed = [0], [0]
        stop = threading.Event()

        def reader() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as rc:
                while not stop.is_set():
                    t = time.perf_counter()
                    r = rc.get("/predictions", params={"limit": 100})
                    elapsed = time.perf_counter() - t
                    if r.status_code != 200:
                        failed[0] += 1
                    elif r.json()["predictions"]:
                        latencies.append(elapsed)
                    else:
                        empty[0] += 1
                    stop.wait(args.read_interval)

        def post(body: bytes) -> None:
            r = client.post("/feed/data", content=body, headers={"Content-Type": "application/json"})
            if r.status_code >= 300:
                raise SystemExit(f"POST /feed/data answered {r.status_code}: {r.text[:300]}")

        read_thread = threading.Thread(target=reader, daemon=True)
        read_thread.start()
        records = 0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            for step in range(args.steps - args.http_steps, args.steps):
                bodies = fleet.bodies(step, args.batch)
                list(pool.map(post, bodies))
                records += args.servers
        ingest_s = time.perf_counter() - t0
        last_post = pd.Timestamp.now(tz="UTC").tz_localize(None).strftime("%Y-%m-%dT%H:%M:%S")
        stop.set()
        read_thread.join()
        print(f"ingest: {records:,} records in {ingest_s:.1f} s = {records / ingest_s:,.0f} records/s "
              f"({args.batch:,} a request, {args.clients} writers)")
        lat = np.array(latencies) * 1000
        if len(lat):
            print(f"GET /predictions?limit=100 during ingest: p50 {np.percentile(lat, 50):.1f} ms, "
                  f"p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.0f} ms over {len(lat)} answers "
                  f"({empty[0]} empty, {failed[0]} not 200)")
        t0 = time.perf_counter()
        while True:  # a batch published after the last POST covering every server
            body = client.get("/health").json()
            if body["servers_tracked"] >= args.servers and (body["last_prediction"] or "") > last_post:
                break
            if time.perf_counter() - t0 > args.wait:
                raise SystemExit(f"no full batch {args.wait:.0f} s after the last POST: {body}")
            time.sleep(2.0)  # /health counts the stored records: not too often
        waited = time.perf_counter() - t0
        print(f"refresh: a batch with all {args.servers:,} servers was published {waited:.1f} s after the last POST "
              f"(refresh every {args.refresh_seconds:g} s); that refresh took {body['last_refresh_seconds']} s "
              f"(/health), the first one (history + the guard's backtests) {first_refresh} s")
        rss = family_rss(server.proc.pid)
        print(f"resident memory: {max(rss.values()) / 1e9:.2f} GB in the largest process, "
              f"{sum(rss.values()) / 1e9:.2f} GB over the service's {len(rss)} processes")
        page = client.get("/predictions", params={"limit": 100})
        print(f"a page of 100: {len(page.content) / 1e3:.0f} kB, total {page.json()['total']:,}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.keep:
        print(f"kept: {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
