"""Benchmark ingest throughput per format over loopback HTTP: samples/s and records/s.

Run with ``make bench-ingest`` (``.venv/bin/python tests/benchmarks/bench_ingest.py``). A real
``bentoml serve`` subprocess of the checkout on a loopback port (no model loaded: ingest only; rate limit
off, the other write caps at their defaults; the feed store on SQLite with ``synchronous=FULL``, as
shipped) receives, from ``--clients`` concurrent clients (default 4, the per-client write slots), one
format at a time:

- ``remote_write``: snappy-compressed ``WriteRequest`` bodies shaped like node_exporter's (per server: 4
  CPUs x 8 modes of ``node_cpu_seconds_total``, memory, root filesystem, ``node_load1`` and 10 series
  fleetcast ignores), ``--samples`` samples per request (Prometheus' default ``max_samples_per_send`` is
  2,000); ``remote_write_10k``: the same with 10,000 samples per request (20 servers), as the
  ready-to-paste ``remote_write`` of docs/operations.md sets it;
- ``otlp_protobuf`` / ``otlp_json``: ``ExportMetricsServiceRequest`` bodies shaped like the hostmetrics
  receiver's (per-CPU, per-state utilization, memory states, root filesystem, load);
- ``collectd``: ``write_http`` JSON value lists (cpu states, memory states, df, load);
- ``fleetcast_json``: the contract's records (four metrics each; a sample is one metric value).

Every request must be answered 2xx; a sample is one value read from the body (ignored series included:
the service reads them). The issue's goal: remote write at least 50,000 samples/s on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cramjam
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # fleetcast_testkit
from fleetcast_testkit.serve import served, service_env  # noqa: E402

CPUS, MODES = 4, ("user", "system", "idle", "iowait", "nice", "irq", "softirq", "steal")
START = time.time() - 2 * 86400  # two days ago, one sample time per second from there


@contextlib.contextmanager
def serving() -> Iterator[str]:
    """The checkout's ``bentoml serve`` (ingest only: no model) on a free loopback port; its URL."""
    with tempfile.TemporaryDirectory(prefix="fleetcast-bench-ingest-") as tmp:
        tmp_path = Path(tmp)
        env = service_env(tmp_path, FLEETCAST_MODEL_PATH="", FLEETCAST_MODEL_POLL_SECONDS="0",
                          FLEETCAST_RATE_LIMIT_PER_SECOND="0", FLEETCAST_REFRESH_SECONDS="3600")
        with served(tmp_path / "serve.log", env) as server:
            yield server.url


Body = tuple[bytes, dict[str, str], int]  # body, headers, samples in it


def _series(request: object, labels: dict[str, str], steps: range, value: Callable[[int], float]) -> int:
    ts = request.timeseries.add()  # type: ignore[attr-defined]
    for key, val in sorted(labels.items()):
        label = ts.labels.add()
        label.name, label.value = key, val
    for step in steps:
        sample = ts.samples.add()
        sample.timestamp, sample.value = int((START + step) * 1000), value(step)
    return len(steps)


def remote_write_bodies(n: int, samples: int, servers: int) -> list[Body]:
    from opentelemetry.exporter.prometheus_remote_write.gen.remote_pb2 import WriteRequest

    per_time = CPUS * len(MODES) + 5 + 10  # series per server and sample time
    times = max(1, samples // (servers * per_time))
    out = []
    for k in range(n):
        request = WriteRequest()
        count = 0
        for s in range(servers):
            labels = {"instance": f"node-{s:03d}:9100", "job": "node"}

            def series(name: str, extra: dict[str, str], value: Callable[[int], float]) -> None:
                nonlocal count
                count += _series(request, {"__name__": name, **labels, **extra},  # noqa: B023 (called at once)
                                 range(k * times, (k + 1) * times), value)  # noqa: B023

            for c in range(CPUS):
                for m, mode in enumerate(MODES):
                    series("node_cpu_seconds_total", {"cpu": str(c), "mode": mode},
                           lambda step, m=m: step * (0.7 if m == 2 else 0.05) + 1000)
            series("node_memory_MemAvailable_bytes", {}, lambda step: 4e9 + step)
            series("node_memory_MemTotal_bytes", {}, lambda step: 16e9)
            series("node_filesystem_avail_bytes", {"mountpoint": "/", "device": "/dev/sda1"}, lambda step: 5e10)
            series("node_filesystem_size_bytes", {"mountpoint": "/", "device": "/dev/sda1"}, lambda step: 1e11)
            series("node_load1", {}, lambda step: 0.5 + (step % 10) / 10)
            for j in range(10):
                series(f"node_network_receive_bytes_total_{j}", {"device": "eth0"}, lambda step: float(step))
        body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
        out.append((body, {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
                           "X-Prometheus-Remote-Write-Version": "0.1.0"}, count))
    return out


def otlp_bodies(n: int, samples: int, servers: int, as_json: bool) -> list[Body]:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    per_time = CPUS * len(MODES) + 6 + 1 + 1
    times = max(1, samples // (servers * per_time))
    out = []
    for k in range(n):
        request = ExportMetricsServiceRequest()
        count = 0
        for s in range(servers):
            rm = request.resource_metrics.add()
            attr = rm.resource.attributes.add()
            attr.key, attr.value.string_value = "host.name", f"otel-{s:03d}"
            sm = rm.scope_metrics.add()
            metrics = {name: sm.metrics.add() for name in ("system.cpu.utilization", "system.memory.utilization",
                                                           "system.filesystem.utilization",
                                                           "system.cpu.load_average.1m")}
            for name, metric in metrics.items():
                metric.name = name
            for i in range(times):
                t_ns = int((START + k * times + i) * 1e9)

                def point(name: str, value: float, **attrs: str) -> None:
                    nonlocal count
                    p = metrics[name].gauge.data_points.add()  # noqa: B023 (called at once)
                    p.time_unix_nano, p.as_double = t_ns, value  # noqa: B023
                    for key, val in attrs.items():
                        a = p.attributes.add()
                        a.key, a.value.string_value = key, val
                    count += 1

                for c in range(CPUS):
                    for mode in MODES:
                        point("system.cpu.utilization", 0.72 if mode == "idle" else 0.04, cpu=f"cpu{c}", state=mode)
                for state in ("used", "free", "buffered", "cached", "slab_reclaimable", "slab_unreclaimable"):
                    point("system.memory.utilization", 0.4 if state == "used" else 0.12, state=state)
                point("system.filesystem.utilization", 0.5, mountpoint="/", device="/dev/sda1")
                point("system.cpu.load_average.1m", 0.8)
        if as_json:
            body, kind = json_format.MessageToJson(request, indent=None).encode(), "application/json"
        else:
            body, kind = request.SerializeToString(), "application/x-protobuf"
        out.append((body, {"Content-Type": kind}, count))
    return out


def collectd_bodies(n: int, samples: int, servers: int) -> list[Body]:
    per_time = len(MODES) + 6 + 1 + 3
    times = max(1, samples // (servers * per_time))
    out = []
    for k in range(n):
        values = []
        for s in range(servers):
            for i in range(times):
                t = START + k * times + i

                def vl(plugin: str, kind: str, vals: list[float], instance: str = "", state: str = "",
                       t: float = t, s: int = s, sink: list[dict] = values) -> None:
                    sink.append({"values": vals, "dstypes": ["gauge"] * len(vals), "dsnames": ["value"] * len(vals),
                                   "time": t, "interval": 10.0, "host": f"cd-{s:03d}", "plugin": plugin,
                                   "plugin_instance": instance, "type": kind, "type_instance": state})

                for mode in ("user", "system", "idle", "wait", "nice", "interrupt", "softirq", "steal"):
                    vl("cpu", "percent", [72.0 if mode == "idle" else 4.0], state=mode)
                for state in ("used", "free", "buffered", "cached", "slab_recl", "slab_unrecl"):
                    vl("memory", "percent", [40.0 if state == "used" else 12.0], state=state)
                vl("df", "percent_bytes", [50.0], instance="root", state="free")
                vl("load", "load", [0.8, 0.7, 0.6])
        count = sum(len(v["values"]) for v in values)
        out.append((json.dumps(values).encode(), {"Content-Type": "application/json"}, count))
    return out


def fleetcast_bodies(n: int, samples: int, servers: int) -> list[Body]:
    times = max(1, samples // (servers * 4))
    out = []
    for k in range(n):
        records = [{"timestamp": START + k * times + i, "server_name": f"json-{s:03d}", "cpu_percent": 25.0,
                    "memory_percent": 40.0, "disk_percent": 50.0, "load_average": 0.8, "profile": "web_api"}
                   for s in range(servers) for i in range(times)]
        out.append((json.dumps({"records": records}).encode(), {"Content-Type": "application/json"},
                    4 * len(records)))
    return out


def run(url: str, path: str, bodies: list[Body], clients: int) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=120) as warm:
        warm.post(path, content=bodies[0][0], headers=bodies[0][1]).raise_for_status()  # the first is not timed
    work = bodies[1:]

    def send(chunk: list[Body]) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for body, headers, _ in chunk:
                r = client.post(path, content=body, headers=headers)
                if r.status_code >= 300:
                    raise SystemExit(f"{path}: {r.status_code} {r.text[:300]}")

    chunks = [work[i::clients] for i in range(clients)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, chunks))
    seconds = time.perf_counter() - t0
    samples = sum(s for _, _, s in work)
    return {"requests": len(work), "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "bytes_per_request": sum(len(b) for b, _, _ in work) / len(work)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60, help="requests per format")
    parser.add_argument("--samples", type=int, default=2000, help="samples per request (about)")
    parser.add_argument("--servers", type=int, default=4, help="servers per request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--formats",
                        default="remote_write,remote_write_10k,otlp_protobuf,otlp_json,collectd,fleetcast_json",
                        help="comma-separated formats to run")
    args = parser.parse_args()
    n = args.requests + 1
    formats = {
        "remote_write": ("/api/v1/write", lambda: remote_write_bodies(n, args.samples, args.servers)),
        # docs/operations.md's ready-to-paste remote_write sets max_samples_per_send: 10000
        "remote_write_10k": ("/api/v1/write", lambda: remote_write_bodies(n, 10_000, args.servers * 5)),
        "otlp_protobuf": ("/v1/metrics", lambda: otlp_bodies(n, args.samples, args.servers, as_json=False)),
        "otlp_json": ("/v1/metrics", lambda: otlp_bodies(n, args.samples, args.servers, as_json=True)),
        "collectd": ("/feed/data", lambda: collectd_bodies(n, args.samples, args.servers)),
        "fleetcast_json": ("/feed/data", lambda: fleetcast_bodies(n, args.samples, args.servers)),
    }
    print(f"ingest over loopback: {args.requests} requests per format, ~{args.samples} samples each, "
          f"{args.servers} servers per request, {args.clients} concurrent clients, {os.cpu_count()} CPUs")
    with serving() as url:
        print(f"{'format':<16}{'samples/s':>12}{'requests':>10}{'samples':>10}{'seconds':>9}{'bytes/req':>11}")
        results = {}
        for name, (path, build) in formats.items():
            if name not in args.formats.split(","):
                continue
            r = run(url, path, build(), args.clients)
            results[name] = r
            print(f"{name:<16}{r['samples_per_s']:>12,.0f}{r['requests']:>10}{r['samples']:>10,}"
                  f"{r['seconds']:>9.2f}{r['bytes_per_request']:>11,.0f}")
    for name, label in (("remote_write", f"{args.samples:,} samples a request"),
                        ("remote_write_10k", "10,000 samples a request, the documented queue_config")):
        if name in results:
            rate = results[name]["samples_per_s"]
            print(f"remote write, {label}: {rate:,.0f} samples/s "
                  f"({'meets' if rate >= 50_000 else 'MISSES'} the 50,000 goal)")


if __name__ == "__main__":
    main()
