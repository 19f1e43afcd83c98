"""The real agents feed the real service (issue 11), on free loopback ports, each until this machine appears
in ``GET /predictions`` with all four metrics, read from its own /proc, within a tolerance of what /proc
says when the test checks:

- Debian's ``prometheus`` scraping Debian's ``prometheus-node-exporter`` every second and remote-writing to
  ``POST /api/v1/write``;
- Debian's ``collectd`` (cpu, memory, df, load) with ``write_http`` JSON to ``POST /feed/data``;
- the OpenTelemetry Python SDK's OTLP/HTTP metric exporters, protobuf and JSON, to ``POST /v1/metrics``,
  with observable gauges named as the Collector's hostmetrics receiver names them, read with psutil.

The service runs with the stand-in forecaster (``fleetcast_testkit.standin``: everything is the product's
but the model), and needs one 5-minute bucket of history instead of 12 here, so that a machine that began
reporting seconds ago gets a forecast (the model's own minimum is tested in tests/model).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import psutil
import pytest
from fleetcast_testkit import free_port
from fleetcast_testkit.promstack import Command, Prometheus, require
from fleetcast_testkit.standin import StandinService

from models import schema

HOST = socket.gethostname()
NODE_EXPORTER_BIN = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
COLLECTD_BIN = shutil.which("collectd") or ("/usr/sbin/collectd" if Path("/usr/sbin/collectd").exists() else None)
# how far a reported value may be from /proc at check time: the service reports a 5-minute bucket's mean
# (cpu moves a lot on a shared machine within it), memory and load move less, disk hardly
TOLERANCE = {"cpu_percent": 35.0, "memory_percent": 8.0, "disk_percent": 2.0, "load_average": 2.5}

pytestmark = pytest.mark.skipif(not schema.is_valid_server_name(HOST), reason=f"host name {HOST!r} is not a "
                                "server name fleetcast accepts")


class ProcReadings:
    """This machine as /proc says: cpu busy share since the last call, memory, root disk, load."""

    def __init__(self) -> None:
        self._last = self._cpu_times()

    @staticmethod
    def _cpu_times() -> tuple[float, float]:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    def now(self, since_start: bool = True) -> dict[str, float]:
        total, idle = self._cpu_times()
        d_total, d_idle = total - self._last[0], idle - self._last[1]
        if not since_start:
            self._last = (total, idle)
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available, mem_total = (float(meminfo[k].split()[0]) for k in ("MemAvailable", "MemTotal"))
        fs = os.statvfs("/")
        return {"cpu_percent": 100.0 * (d_total - d_idle) / d_total if d_total else 0.0,
                "memory_percent": 100.0 * (1 - available / mem_total),
                "disk_percent": 100.0 * (1 - fs.f_bavail / fs.f_blocks),
                "load_average": float(Path("/proc/loadavg").read_text().split()[0])}


@pytest.fixture
def service(asgi_app: Any, tmp_path: Path) -> Iterator[StandinService]:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(f'"{HOST}": ml_compute\n')
    with mock.patch.object(schema, "MIN_ENCODER_STEPS", 1), \
            StandinService(asgi_app, n_servers=0, demo_fleet=False,
                           env={"FLEETCAST_REFRESH_SECONDS": "1", "FLEETCAST_PROFILES_FILE": str(profiles)}) as svc:
        yield svc


def wait_for_this_machine(service: StandinService, readings: ProcReadings, peer: Callable[[], str],
                          timeout: float = 240.0) -> dict[str, Any]:
    """Poll ``GET /predictions`` until this machine is there with all four metrics; then compare them with
    /proc. ``peer()``: the agent's log tail, for the failure message."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in httpx.get(service.url + "/predictions", timeout=30).json()["predictions"]
                 if p["server_name"] == HOST]
        if found and all(found[0]["current"].get(m) is not None for m in schema.METRICS):
            entry = found[0]
            break
        if time.monotonic() > deadline:
            health = httpx.get(service.url + "/health", timeout=30).json()
            raise AssertionError(f"{HOST} not in /predictions with four metrics within {timeout} s: "
                                 f"{found}; agents {health['agents']}; peer log: {peer()}")
        time.sleep(1)
    proc = readings.now()
    for metric in schema.METRICS:
        assert abs(entry["current"][metric] - proc[metric]) <= TOLERANCE[metric], (metric, entry["current"], proc)
        assert metric in entry["forecast"]
    assert entry["missing_metrics"] == {}
    assert (entry["profile"], entry["profile_source"]) == ("ml_compute", f"mapping:{HOST}")
    return entry


def test_prometheus_remote_write_from_node_exporter(service: StandinService, tmp_path: Path) -> None:
    readings = ProcReadings()
    port = free_port()
    exporter = Command("node-exporter", [require(NODE_EXPORTER_BIN, "prometheus-node-exporter"),
                                         f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                                         "--collector.cpu", "--collector.meminfo", "--collector.filesystem",
                                         "--collector.loadavg"], tmp_path, port=port, ready_path="/metrics")
    config = f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["127.0.0.1:{port}"]
        labels: {{instance: "{HOST}"}}
remote_write:
  - url: {service.url}/api/v1/write
    queue_config: {{batch_send_deadline: 1s, min_backoff: 100ms}}
"""
    with exporter:
        with Prometheus(tmp_path / "prometheus", config) as prometheus:
            wait_for_this_machine(service, readings, lambda: prometheus.tail() + exporter.tail())
        counts = httpx.get(service.url + "/health", timeout=30).json()["agents"]["remote_write"]
        assert counts["records_stored"] > 0 and counts["records_rejected"] == 0, counts
        assert counts["samples_ignored"] > 0  # node_exporter's other series (scrape_duration_seconds, ...)


def test_collectd_write_http(service: StandinService, tmp_path: Path) -> None:
    readings = ProcReadings()
    config = tmp_path / "collectd.conf"
    config.write_text(f"""
Hostname "{HOST}"
FQDNLookup false
Interval 1
BaseDir "{tmp_path}"
PIDFile "{tmp_path / 'collectd.pid'}"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin logfile
<Plugin logfile>
  LogLevel info
  File STDOUT
</Plugin>
LoadPlugin cpu
<Plugin cpu>
  ReportByCpu false
  ReportByState true
  ValuesPercentage true
</Plugin>
LoadPlugin memory
<Plugin memory>
  ValuesAbsolute false
  ValuesPercentage true
</Plugin>
LoadPlugin df
<Plugin df>
  MountPoint "/"
  ValuesAbsolute false
  ValuesPercentage true
</Plugin>
LoadPlugin load
LoadPlugin write_http
<Plugin write_http>
  <Node "fleetcast">
    URL "{service.url}/feed/data"
    Format "JSON"
    StoreRates true
    BufferSize 8192
  </Node>
</Plugin>
""")
    with Command("collectd", [require(COLLECTD_BIN, "collectd-core"), "-f", "-C", str(config)], tmp_path) as collectd:
        wait_for_this_machine(service, readings, collectd.tail)
        counts = httpx.get(service.url + "/health", timeout=30).json()["agents"]["collectd"]
        assert counts["records_stored"] > 0 and counts["records_rejected"] == 0, counts


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_opentelemetry_sdk_otlp_http_exporter(service: StandinService, encoding: str) -> None:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    if encoding == "json":
        from opentelemetry.exporter.otlp.json.http.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    readings = ProcReadings()
    psutil.cpu_times_percent(percpu=True)  # the first call only sets psutil's reference

    def cpu(_: CallbackOptions) -> list[Observation]:
        out = []
        for i, times in enumerate(psutil.cpu_times_percent(percpu=True)):
            for state in ("user", "system", "idle", "iowait", "nice", "irq", "softirq", "steal"):
                out.append(Observation(getattr(times, state, 0.0) / 100.0, {"cpu": f"cpu{i}", "state": state}))
        return out

    def memory(_: CallbackOptions) -> list[Observation]:
        vm = psutil.virtual_memory()
        return [Observation(1 - vm.available / vm.total, {"state": "used"})]

    def filesystem(_: CallbackOptions) -> list[Observation]:
        fs = os.statvfs("/")
        return [Observation(1 - fs.f_bavail / fs.f_blocks, {"mountpoint": "/", "device": "root", "mode": "rw"})]

    def load(_: CallbackOptions) -> list[Observation]:
        return [Observation(os.getloadavg()[0])]

    exporter = OTLPMetricExporter(endpoint=service.url + "/v1/metrics")
    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=1000)],
                             resource=Resource.create({"host.name": HOST}))
    meter = provider.get_meter("fleetcast-test")
    meter.create_observable_gauge("system.cpu.utilization", [cpu], unit="1")
    meter.create_observable_gauge("system.memory.utilization", [memory], unit="1")
    meter.create_observable_gauge("system.filesystem.utilization", [filesystem], unit="1")
    meter.create_observable_gauge("system.cpu.load_average.1m", [load], unit="{thread}")
    try:
        wait_for_this_machine(service, readings, lambda: "")
        counts = httpx.get(service.url + "/health", timeout=30).json()["agents"]["otlp"]
        assert counts["records_stored"] > 0 and counts["records_rejected"] == 0, counts
    finally:
        provider.shutdown()
