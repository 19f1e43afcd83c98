"""Soak the service: mixed writes and reads for a bounded time, one ``kill -9`` of the server's process group
and a restart on the same port in the middle; then count the acknowledged records that were lost.

Run with ``make bench-soak`` (``.venv/bin/python tests/benchmarks/bench_soak.py [--minutes 2]``; issue 12
asks for up to 10). Against a real ``fleetcast serve`` (``bentoml serve`` of the checkout) on a free
loopback port, state in a temporary directory, default settings (rate limit, write slots, body timeout)
except the model file:

- ``--writers`` threads (default 4), each from a loopback address of its own, post one 5-minute step of
  its share of ``--servers`` servers per request, ``--rate`` requests per second each; a request that
  fails (connection refused while the server is down, 5xx, 429) is retried as is until it is answered
  200 (upserts make retries safe): every record answered 200 is *acknowledged*;
- ``--readers`` threads (default 2) loop over ``GET /predictions``, ``/alerts`` and ``/health``;
- at half time the server's process group gets SIGKILL; the run waits until nothing listens on the
  port (the worker must end with its parent) and starts the server again on the same port.

Printed: records acknowledged and lost (read back from the store file after the run: must be 0), read
latency p50/p99 (all reads, and reads outside the restart), errors, time from the kill to a free port
and to a ready server, and the service's memory (RSS of its processes) after warm-up, before the kill,
after the restart and at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # fleetcast_testkit
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_serve's model loader
from bench_serve import load_model  # noqa: E402
from fleetcast_testkit import free_port  # noqa: E402
from fleetcast_testkit.serve import fleetcast_serve_command, kill_group, listening, served, service_env  # noqa: E402

from models import schema, simulator  # noqa: E402
from serving.store import FeedStore  # noqa: E402


def utcnow() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


class Writer(threading.Thread):
    """Posts one step of its servers per request from its own loopback address; retries until 200."""

    def __init__(self, index: int, url: str, servers: list[tuple[str, str]], start: pd.Timestamp, rate: float,
                 stop: threading.Event) -> None:
        super().__init__(name=f"writer-{index}", daemon=True)
        self.url, self.servers, self.rate, self.stop_event = url, servers, rate, stop
        self.address = f"127.0.0.{10 + index}"
        self.fleet = simulator.LiveFleet(servers=servers, seed=index, start=start, history_steps=1)
        self.acknowledged: dict[tuple[str, str], float] = {}  # (server, timestamp) -> cpu_percent
        self.requests = 0
        self.failures: Counter[str] = Counter()

    def run(self) -> None:
        transport = httpx.HTTPTransport(local_address=self.address)
        with httpx.Client(transport=transport, timeout=30) as client:
            while not self.stop_event.is_set():
                frame = self.fleet.next_step()
                if frame[schema.TIMESTAMP].max() > utcnow() + pd.Timedelta(minutes=5):
                    break  # the simulated clock reached now: the run is longer than planned
                records = [{**r, schema.TIMESTAMP: pd.Timestamp(r[schema.TIMESTAMP]).strftime("%Y-%m-%dT%H:%M:%S")}
                           for r in frame.to_dict(orient="records")]
                while not self._post(client, records):
                    if self.stop_event.wait(0.2):
                        return
                self.stop_event.wait(1.0 / self.rate)

    def _post(self, client: httpx.Client, records: list[dict[str, Any]]) -> bool:
        self.requests += 1
        try:
            r = client.post(f"{self.url}/feed/data", json={"records": records})
        except httpx.HTTPError as exc:
            self.failures[type(exc).__name__] += 1
            return False
        if r.status_code != 200:
            self.failures[str(r.status_code)] += 1
            return False
        body = r.json()
        assert body["records_processed"] == len(records), body
        for rec in records:
            self.acknowledged[(rec[schema.SERVER], rec[schema.TIMESTAMP])] = rec["cpu_percent"]
        return True


class Reader(threading.Thread):
    PATHS = ("/predictions", "/alerts", "/health")

    def __init__(self, index: int, url: str, stop: threading.Event) -> None:
        super().__init__(name=f"reader-{index}", daemon=True)
        self.url, self.stop_event = url, stop
        self.samples: list[tuple[float, float]] = []  # (monotonic time, seconds)
        self.failures: Counter[str] = Counter()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self.stop_event.is_set():
                path = self.PATHS[i % len(self.PATHS)]
                i += 1
                started = time.perf_counter()
                try:
                    r = client.get(f"{self.url}{path}")
                except httpx.HTTPError as exc:
                    self.failures[type(exc).__name__] += 1
                    self.stop_event.wait(0.2)
                    continue
                if r.status_code == 200:
                    self.samples.append((time.monotonic(), time.perf_counter() - started))
                else:
                    self.failures[str(r.status_code)] += 1
                self.stop_event.wait(0.05)


class MemoryProbe(threading.Thread):
    """The service's RSS every ``every`` seconds (its processes as the current server's tree says)."""

    def __init__(self, every: float, stop: threading.Event) -> None:
        super().__init__(name="memory", daemon=True)
        self.every, self.stop_event = every, stop
        self.pids: list[int] = []
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.began = time.monotonic()

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            if self.pids:
                self.samples.append((time.monotonic() - self.began, service_rss_mb(self.pids)))


def service_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the run (issue 12: up to 10)")
    parser.add_argument("--servers", type=int, default=40)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second per writer")
    args = parser.parse_args()
    if not 0 < args.minutes <= 30:
        parser.error("--minutes must be in (0, 30]")

    forecaster, model_name = load_model()
    duration = args.minutes * 60
    steps = int(duration * args.rate) + 50
    start = (utcnow() - pd.Timedelta(minutes=5 * steps)).floor("5min")  # the writers' clocks end before now
    servers = simulator.default_servers(args.servers)
    with tempfile.TemporaryDirectory(prefix="fleetcast-soak-") as tmp:
        state = Path(tmp)
        checkpoint = state / "model.pt"
        forecaster.save(checkpoint)
        env = service_env(state, FLEETCAST_MODEL_PATH=str(checkpoint), BENTOML_DO_NOT_TRACK="true")
        env.pop("FLEETCAST_API_TOKEN", None)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = state / "serve.log"
        stop = threading.Event()
        shares = [servers[i::args.writers] for i in range(args.writers)]
        writers = [Writer(i, url, share, start, args.rate, stop) for i, share in enumerate(shares)]
        readers = [Reader(i, url, stop) for i in range(args.readers)]
        memory: dict[str, float] = {}
        probe = MemoryProbe(30.0, stop)
        command = fleetcast_serve_command("127.0.0.1", port)
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(served(log, env, port=port, command=command))
            probe.pids = [p.pid for p in first.family]
            for t in (*writers, *readers, probe):
                t.start()
            began = time.monotonic()
            time.sleep(min(20.0, duration / 6))
            memory["after warm-up"] = service_rss_mb([p.pid for p in first.family])
            time.sleep(max(0.0, began + duration / 2 - time.monotonic()))
            memory["before the kill"] = service_rss_mb([p.pid for p in first.family])
            workers = first.worker_pids()
            probe.pids = []
            killed = time.monotonic()
            kill_group(first.proc)
            while listening(port) and time.monotonic() - killed < 60:
                time.sleep(0.05)
            port_free_s = time.monotonic() - killed

            def orphans() -> list[int]:
                return [p for p in workers if psutil.pid_exists(p)
                        and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

            while orphans() and time.monotonic() - killed < 30:
                time.sleep(0.05)
            worker_gone_s, left = time.monotonic() - killed, orphans()
            second = stack.enter_context(served(log, env, port=port, command=command))
            ready_s = time.monotonic() - killed
            probe.pids = [p.pid for p in second.family]
            memory["after the restart"] = service_rss_mb(probe.pids)
            time.sleep(max(0.0, began + duration - time.monotonic()))
            memory["at the end"] = service_rss_mb([p.pid for p in second.family])
            health = httpx.get(f"{url}/health", timeout=30).json()
            stop.set()
            for t in (*writers, *readers):
                t.join(timeout=60)
        elapsed = time.monotonic() - began

        acknowledged: dict[tuple[str, str], float] = {}
        for w in writers:
            acknowledged.update(w.acknowledged)
        store = FeedStore(env["FLEETCAST_STORE_URL"])
        stored = store.export_frame()
        store.dispose()
        stored_keys = dict(zip(zip(stored[schema.SERVER], stored[schema.TIMESTAMP].dt.strftime("%Y-%m-%dT%H:%M:%S"),
                                   strict=True), stored["cpu_percent"], strict=True))
        lost = [k for k in acknowledged if k not in stored_keys]
        changed = [k for k, v in acknowledged.items() if k in stored_keys and abs(stored_keys[k] - v) > 1e-9]

    samples = [s for r in readers for s in r.samples]
    lat = np.array([s for _, s in samples]) * 1000
    calm = np.array([s for t, s in samples if not killed - 1 <= t <= killed + ready_s + 5]) * 1000
    failures = Counter()
    for t in (*writers, *readers):
        failures.update({f"{t.name.split('-')[0]} {k}": v for k, v in t.failures.items()})
    requests = sum(w.requests for w in writers)
    load = os.getloadavg()
    print(f"model: {model_name}")
    print(f"run: {elapsed / 60:.1f} min, {args.servers} servers, {args.writers} writers x {args.rate:g} req/s, "
          f"{args.readers} readers; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")
    print(f"writes: {requests} requests, {len(acknowledged):,} records acknowledged "
          f"({len(acknowledged) / elapsed:,.0f}/s)")
    print(f"acknowledged records lost: {len(lost)}; stored with other values: {len(changed)}")
    print(f"reads: {len(lat):,} answered 200; p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms "
          f"(outside the restart: p50 {np.percentile(calm, 50):.1f} ms, p99 {np.percentile(calm, 99):.1f} ms, "
          f"max {calm.max():.0f} ms)")
    print(f"errors (retried by the writers): {dict(sorted(failures.items()))}")
    print(f"kill -9 of the group: port free after {port_free_s:.1f} s, worker gone after {worker_gone_s:.1f} s "
          f"(left running after 30 s: {len(left)}), ready again after {ready_s:.1f} s")
    print("service memory (RSS of its processes): " + ", ".join(f"{k} {v:.0f} MB" for k, v in memory.items()))
    print("  every 30 s (minute: MB): " + ", ".join(f"{t / 60:.1f}: {mb:.0f}" for t, mb in probe.samples))
    print(f"health at the end: records_stored {health['records_stored']:,}, writes {health['writes']}")
    if lost or changed or left:
        raise SystemExit("FAILED: acknowledged records lost or changed, or a worker outlived the kill")


if __name__ == "__main__":
    main()
