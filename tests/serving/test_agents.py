"""Partial records and the agents' formats (issue 11), at unit level and through the real service in-process:
order-independent merge, a cpu-only server, remote write's counter reset and ignored series, each
format's malformed bodies, valid data stored next to rejected data, the profiles mapping file."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import cramjam
import pandas as pd
import pytest
import sqlalchemy as sa
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.prometheus_remote_write.gen.remote_pb2 import WriteRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from starlette.testclient import TestClient

from models import schema
from serving import agents, profiles
from serving.ingest import ingest_items
from serving.store import FeedStore, records_table

NOW = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("5min") - pd.Timedelta(minutes=30)
RW_HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
              "X-Prometheus-Remote-Write-Version": "0.1.0"}


def stored(store: FeedStore, server: str) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(records_table).where(records_table.c[schema.SERVER] == server)
                            .order_by(records_table.c[schema.TIMESTAMP])).mappings()
        return [dict(r) for r in rows]


def write_request(series: list[tuple[dict[str, str], list[tuple[float, float]]]]) -> bytes:
    """``[(labels, [(epoch seconds, value), ...]), ...]`` -> a snappy-compressed WriteRequest."""
    request = WriteRequest()
    for labels, samples in series:
        ts = request.timeseries.add()
        for name, value in sorted(labels.items()):
            label = ts.labels.add()
            label.name, label.value = name, value
        for t, v in samples:
            sample = ts.samples.add()
            sample.timestamp, sample.value = int(t * 1000), v
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


# --- merge: order does not matter -------------------------------------------------------------------------
def test_partial_records_of_one_bucket_give_the_same_row_in_any_order(tmp_path: Path) -> None:
    t0 = NOW
    parts = [
        {"timestamp": schema.iso(t0), "server_name": "m1", "cpu_percent": 10.0},
        {"timestamp": schema.iso(t0), "server_name": "m1", "memory_percent": 40.0},
        {"timestamp": schema.iso(t0 + pd.Timedelta(seconds=60)), "server_name": "m1", "cpu_percent": 30.0},
        {"timestamp": schema.iso(t0 + pd.Timedelta(seconds=120)), "server_name": "m1", "disk_percent": 55.0},
        {"timestamp": schema.iso(t0 + pd.Timedelta(seconds=200)), "server_name": "m1", "load_average": 1.5},
    ]
    results = set()
    for n, order in enumerate(itertools.permutations(parts)):
        store = FeedStore(f"sqlite:///{tmp_path / f'feed-{n}.db'}")
        try:
            for part in order:  # one request each, as separate agents would send them
                ingest_items(store, [part])
            rows = tuple((r[schema.TIMESTAMP], *(r[m] for m in schema.METRICS)) for r in stored(store, "m1"))
            bucket = store.history(["m1"]).iloc[-1]
            results.add((rows, tuple(float(bucket[m]) for m in schema.METRICS)))
        finally:
            store.dispose()
    assert len(results) == 1, results
    rows, bucket = results.pop()
    assert rows[0][1:] == (10.0, 40.0, None, None)  # cpu and memory of the same time merged into one row
    assert bucket == (20.0, 40.0, 55.0, 1.5)  # the bucket averages cpu over its two times


def test_a_bad_value_costs_only_itself(tmp_path: Path) -> None:
    store = FeedStore(f"sqlite:///{tmp_path / 'feed.db'}")
    try:
        result = ingest_items(store, [{"timestamp": schema.iso(NOW), "server_name": "v1", "cpu_percent": 150,
                                       "memory_percent": 20, "load_average": 0.5}])
        body = result.body()
        assert body["status"] == "partial" and body["records_rejected"] == 0, body
        assert "cpu_percent" in body["errors"][0]["error"]
        assert body["errors"][0]["kept"] == ["memory_percent", "load_average"]
        row = stored(store, "v1")[0]
        assert (row["cpu_percent"], row["memory_percent"], row["load_average"]) == (None, 20.0, 0.5)
    finally:
        store.dispose()


# --- profiles --------------------------------------------------------------------------------------------
def test_the_mapping_file_resolves_profiles_in_order(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text('db-*: database\n"web-*": web_api\n"*": ml_compute\n')
    mapping = profiles.ProfileMap(path)
    assert mapping.resolve("DB-7", None) == ("database", "mapping:db-*", False)
    assert mapping.resolve("web-1", "risk_analytics") == ("risk_analytics", "record", False)  # sent wins
    assert mapping.resolve("web-1", "nonsense") == ("web_api", "mapping:web-*", False)
    assert mapping.resolve("x", None) == ("ml_compute", "mapping:*", False)
    assert profiles.ProfileMap().resolve("x", "nonsense") == ("generic", "default", True)
    path.write_text("db-*: databse\n")
    with pytest.raises(profiles.ProfilesFileError, match="unknown profile 'databse'"):
        profiles.ProfileMap(path)


# --- remote write ----------------------------------------------------------------------------------------
def test_remote_write_counter_reset_and_gauges() -> None:
    combiner = agents.Combiner()
    base = NOW.timestamp()
    host = {"instance": "h1:9100", "job": "node"}

    def cpu(cpu_id: str, mode: str, values: list[float]) -> tuple[dict[str, str], list[tuple[float, float]]]:
        return ({"__name__": "node_cpu_seconds_total", "cpu": cpu_id, "mode": mode, **host},
                [(base + 15 * i, v) for i, v in enumerate(values)])

    body = write_request([
        cpu("0", "idle", [1000, 1010, 5]),  # the third sample: the counter restarted (reboot)
        cpu("0", "user", [500, 505, 3]),
        cpu("1", "idle", [2000, 2012, 2024]),
        cpu("1", "user", [100, 103, 106]),
        ({"__name__": "node_memory_MemAvailable_bytes", **host}, [(base, 25.0)]),
        ({"__name__": "node_memory_MemTotal_bytes", **host}, [(base, 100.0)]),
        ({"__name__": "node_filesystem_avail_bytes", "mountpoint": "/", **host}, [(base, 30.0)]),
        ({"__name__": "node_filesystem_size_bytes", "mountpoint": "/", **host}, [(base, 120.0)]),
        ({"__name__": "node_filesystem_avail_bytes", "mountpoint": "/boot", **host}, [(base, 1.0)]),
        ({"__name__": "node_load1", **host}, [(base, 0.75)]),
        ({"__name__": "node_network_receive_bytes_total", "device": "lo", **host}, [(base, 1.0), (base + 15, 2.0)]),
    ])
    request = agents.parse_write_request(agents.decode_snappy(body, 10_000_000))
    out = agents.decode_remote_write(request, combiner, agents.RemoteWriteConfig())
    by_time = {item[schema.TIMESTAMP]: item for item in out.items}
    assert set(by_time) == {base, base + 15, base + 30}
    first = by_time[base]
    assert first[schema.SERVER] == "h1" and "cpu_percent" not in first  # no rate from one sample
    assert (first["memory_percent"], first["disk_percent"], first["load_average"]) == (75.0, 75.0, 0.75)
    assert by_time[base + 15]["cpu_percent"] == pytest.approx(100 * (5 + 3) / (10 + 5 + 12 + 3), abs=1e-3)
    # after the reset cpu 0 counts from zero: its increase is the new value (idle 5, user 3)
    assert by_time[base + 30]["cpu_percent"] == pytest.approx(100 * (3 + 3) / (5 + 3 + 12 + 3), abs=1e-3)
    assert out.ignored == {"node_network_receive_bytes_total": 2, "node_filesystem_avail_bytes of other mounts": 1}
    # a resend of the same batch (Prometheus retries) adds nothing to the counters' increases
    again = agents.decode_remote_write(request, combiner, agents.RemoteWriteConfig())
    assert again.items and all(i.get("cpu_percent") is None for i in again.items)
    assert combiner.slot("h1", base + 15)["cpu_total"] == 10 + 5 + 12 + 3


@pytest.fixture
def mapped_client(make_client: Any, service_env: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    mapping = service_env / "profiles.yaml"
    mapping.write_text("db-*: database\n")
    monkeypatch.setenv("FLEETCAST_PROFILES_FILE", str(mapping))
    return make_client()


def _store(service_env: Path) -> FeedStore:
    import os

    return FeedStore(os.environ["FLEETCAST_STORE_URL"]) if "FLEETCAST_STORE_URL" in os.environ else FeedStore()


def test_remote_write_endpoint_answers_as_prometheus_expects(mapped_client: TestClient, service_env: Path) -> None:
    client = mapped_client
    t = NOW.timestamp()
    good = ({"__name__": "node_load1", "instance": "db-7:9100"}, [(t, 1.25)])
    labelled = ({"__name__": "node_load1", "instance": "web-2", "fleetcast_profile": "web_api"}, [(t, 0.5)])
    unknown = ({"__name__": "go_goroutines", "instance": "db-7:9100"}, [(t, 7.0), (t + 15, 8.0)])
    r = client.post("/api/v1/write", content=write_request([good, labelled, unknown]), headers=RW_HEADERS)
    assert r.status_code == 204, r.text
    store = _store(service_env)
    try:
        assert stored(store, "db-7")[0]["load_average"] == 1.25
        assert stored(store, "db-7")[0]["profile"] == "database"
        assert store.profile_sources(["db-7", "web-2"]) == {"db-7": "mapping:db-*",
                                                             "web-2": "label:fleetcast_profile"}
        health = client.get("/health").json()["agents"]["remote_write"]
        assert health["ignored:go_goroutines"] == 2 and health["samples_ignored"] == 2, health

        # malformed bodies: 400 (Prometheus does not retry a 4xx) with the reason; other encodings 415
        for body, fragment in ((b"plain bytes", "not snappy"),
                               (bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff")), "not a protobuf")):
            r = client.post("/api/v1/write", content=body, headers=RW_HEADERS)
            assert r.status_code == 400 and fragment in r.json()["detail"], r.text
        r = client.post("/api/v1/write", content=b"x", headers={**RW_HEADERS, "Content-Encoding": "gzip"})
        assert r.status_code == 415 and "snappy" in r.json()["detail"]

        # a record rejected (a server name out of contract) is named; the valid one of the request is stored
        bad = ({"__name__": "node_load1", "instance": "bad name!"}, [(t, 2.0)])
        fine = ({"__name__": "node_load1", "instance": "db-8"}, [(t, 3.0)])
        r = client.post("/api/v1/write", content=write_request([bad, fine]), headers=RW_HEADERS)
        assert r.status_code == 400 and "'bad name!'" in r.json()["detail"] and "server_name" in r.json()["detail"]
        assert stored(store, "db-8")[0]["load_average"] == 3.0
    finally:
        store.dispose()


# --- OTLP ------------------------------------------------------------------------------------------------
def otlp_request(host: str, points: dict[str, list[tuple[dict[str, str], float]]], t: float,
                 profile: str | None = None) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    attr = rm.resource.attributes.add()
    attr.key, attr.value.string_value = "host.name", host
    if profile:
        attr = rm.resource.attributes.add()
        attr.key, attr.value.string_value = "fleetcast.profile", profile
    sm = rm.scope_metrics.add()
    for name, values in points.items():
        metric = sm.metrics.add()
        metric.name = name
        for attrs, value in values:
            point = metric.gauge.data_points.add()
            point.time_unix_nano, point.as_double = int(t * 1e9), value
            for k, v in attrs.items():
                a = point.attributes.add()
                a.key, a.value.string_value = k, v
    return request


def test_otlp_endpoint_protobuf_and_json(client: TestClient, service_env: Path) -> None:
    from google.protobuf import json_format

    t = NOW.timestamp()
    points = {"system.cpu.utilization": [({"cpu": "cpu0", "state": "idle"}, 0.75),
                                         ({"cpu": "cpu0", "state": "user"}, 0.25)],
              "system.memory.utilization": [({"state": "used"}, 0.5), ({"state": "free"}, 0.5)],
              "system.cpu.load_average.1m": [({}, 2.0)],
              "process.count": [({}, 300.0)]}
    r = client.post("/v1/metrics", content=otlp_request("otel-1", points, t, "database").SerializeToString(),
                    headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    answer = ExportMetricsServiceResponse.FromString(r.content)
    assert answer.partial_success.rejected_data_points == 0
    assert "process.count (1)" in answer.partial_success.error_message  # ignored, and said so
    # the same as OTLP/JSON, for another host, next to a host whose name is out of contract
    request = otlp_request("otel-2", {"system.cpu.load_average.1m": [({}, 3.0)]}, t)
    request.resource_metrics.extend(otlp_request("bad name!", {"system.cpu.load_average.1m": [({}, 1.0)]},
                                                 t).resource_metrics)
    r = client.post("/v1/metrics", content=json_format.MessageToJson(request),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["partialSuccess"]["rejectedDataPoints"] == "1"
    assert "'bad name!'" in r.json()["partialSuccess"]["errorMessage"]
    store = _store(service_env)
    try:
        row = stored(store, "otel-1")[0]
        assert (row["cpu_percent"], row["memory_percent"], row["disk_percent"], row["load_average"]) == (
            25.0, 50.0, None, 2.0)
        assert row["profile"] == "database" and store.profile_sources(["otel-1"]) == {
            "otel-1": "attribute:fleetcast.profile"}
        assert stored(store, "otel-2")[0]["load_average"] == 3.0
    finally:
        store.dispose()
    # malformed bodies: 400 with a google.rpc.Status naming the problem, in the request's encoding
    r = client.post("/v1/metrics", content=b"\xff\xff\xff", headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 400 and "ExportMetricsServiceRequest" in Status.FromString(r.content).message
    r = client.post("/v1/metrics", content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["message"]
    r = client.post("/v1/metrics", content=b'{"resourceMetrics": 3}', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "resourceMetrics" in r.json()["message"]
    r = client.post("/v1/metrics", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/x-protobuf" in r.json()["message"]


# --- collectd --------------------------------------------------------------------------------------------
def collectd(host: str, t: float, plugin: str, kind: str, values: list[Any], instance: str = "",
             type_instance: str = "", dsnames: list[str] | None = None) -> dict[str, Any]:
    return {"values": values, "dstypes": ["gauge"] * len(values), "dsnames": dsnames or ["value"] * len(values),
            "time": t, "interval": 10.0, "host": host, "plugin": plugin, "plugin_instance": instance,
            "type": kind, "type_instance": type_instance}


def test_collectd_json_is_recognised_at_feed_data(client: TestClient, service_env: Path) -> None:
    t = NOW.timestamp()
    body = [
        collectd("cd-1", t, "cpu", "percent", [80.0], type_instance="idle"),
        collectd("cd-1", t, "cpu", "percent", [5.0], type_instance="wait"),
        collectd("cd-1", t, "cpu", "percent", [15.0], type_instance="user"),
        collectd("cd-1", t, "memory", "percent", [42.0], type_instance="used"),
        collectd("cd-1", t, "memory", "percent", [3.0], type_instance="slab_unrecl"),
        collectd("cd-1", t, "memory", "percent", [40.0], type_instance="free"),
        collectd("cd-1", t, "df", "percent_bytes", [35.0], instance="root", type_instance="free"),
        collectd("cd-1", t, "df", "percent_bytes", [90.0], instance="boot", type_instance="free"),
        collectd("cd-1", t, "load", "load", [1.5, 1.0, 0.5], dsnames=["shortterm", "midterm", "longterm"]),
        collectd("cd-1", t, "interface", "if_octets", [1.0, 2.0], instance="lo", dsnames=["rx", "tx"]),
        {**collectd("cd-1", t, "load", "load", [1.0]), "values": "lots"},  # malformed: named, the rest stored
    ]
    r = client.post("/feed/data", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["status"] == "partial" and data["errors"] == [
        {"index": 10, "error": "values: must be a non-empty array of numbers (collectd write_http JSON)"}], data
    assert "interface/if_octets (2)" in data["warnings"][0]["warning"]
    store = _store(service_env)
    try:
        row = stored(store, "cd-1")[0]
        assert (row["cpu_percent"], row["memory_percent"], row["disk_percent"], row["load_average"]) == (
            15.0, 45.0, 65.0, 1.5)
    finally:
        store.dispose()


def test_collectd_cpu_states_split_over_two_requests_never_read_as_busy() -> None:
    # write_http's buffer filled after user and system: idle (and the second CPU) come in the next request
    combiner, t = agents.Combiner(), NOW.timestamp()
    first = [collectd("cd-2", t, "cpu", "percent", [6.0], instance="0", type_instance="user"),
             collectd("cd-2", t, "cpu", "percent", [2.0], instance="0", type_instance="system")]
    decoded, errors = agents.decode_collectd(first, combiner)
    assert errors == [] and decoded.items == []  # half a CPU's states: no cpu value yet, not 100 % busy
    second = [collectd("cd-2", t, "cpu", "percent", [92.0], instance="0", type_instance="idle"),
              collectd("cd-2", t, "cpu", "percent", [30.0], instance="1", type_instance="user")]
    decoded, _ = agents.decode_collectd(second, combiner)
    assert [item["cpu_percent"] for item in decoded.items] == [8.0]  # CPU 0 only: CPU 1 is not complete
    decoded, _ = agents.decode_collectd([collectd("cd-2", t, "cpu", "percent", [70.0], instance="1",
                                                  type_instance="idle")], combiner)
    assert [item["cpu_percent"] for item in decoded.items] == [19.0]  # (8 + 30) / 200


def test_remote_write_cpu_modes_split_over_shards_wait_for_idle() -> None:
    combiner = agents.Combiner()

    def write(samples: dict[str, list[tuple[float, float]]]) -> list[dict[str, Any]]:
        request = WriteRequest()
        for mode, points in samples.items():
            series = request.timeseries.add()
            for name, value in (("__name__", "node_cpu_seconds_total"), ("instance", "rw-9:9100"),
                                ("cpu", "0"), ("mode", mode)):
                series.labels.add(name=name, value=value)
            for ts, value in points:
                series.samples.add(timestamp=int(ts * 1000), value=value)
        return agents.decode_remote_write(request, combiner, agents.RemoteWriteConfig()).items

    t0 = NOW.timestamp()
    write({"user": [(t0, 100.0)], "idle": [(t0, 1000.0)]})  # the counters' first values: no rate yet
    assert write({"user": [(t0 + 15, 103.0)]}) == []  # the shard with user only: not 100 % busy
    assert [i["cpu_percent"] for i in write({"idle": [(t0 + 15, 1012.0)]})] == [20.0]


# --- a server that never reports a metric ----------------------------------------------------------------
def test_a_cpu_only_server_gets_a_cpu_forecast_and_nothing_for_the_rest(client: TestClient, h: Any) -> None:
    # the other server's memory is at 99 %: a filled-in value for the cpu-only server would raise an alert
    full = h.series_items("full-1", "database", {"cpu_percent": 20, "memory_percent": 99, "disk_percent": 40,
                                                 "load_average": 1.0}, steps=48)
    cpu_only = [{k: v for k, v in item.items() if k in (schema.TIMESTAMP, schema.SERVER, "cpu_percent")}
                for item in h.series_items("cpu-only", "generic", {"cpu_percent": lambda i: 30 + i % 5}, steps=48)]
    r = client.post("/feed/data", json={"records": full + cpu_only})
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    entry = h.wait_for(lambda: h.prediction_of(client, "cpu-only"))
    assert set(entry["forecast"]) == {"timestamps", "cpu_percent"}
    assert entry["current"]["memory_percent"] is None and entry["predicted"]["disk_percent"] is None
    assert set(entry["missing_metrics"]) == {"memory_percent", "disk_percent", "load_average"}
    assert "no forecast" in entry["missing_metrics"]["memory_percent"]
    assert entry["history"]["memory_percent"] is None and len(entry["history"]["cpu_percent"]) == 48
    assert entry["profile_source"] == "default"
    other = h.prediction_of(client, "full-1")
    assert other["missing_metrics"] == {} and other["profile_source"] == "record"
    alerts = client.get("/alerts").json()["alerts"]
    assert any(a["server_name"] == "full-1" and a["metric"] == "memory_percent" for a in alerts), alerts
    assert not [a for a in alerts if a["server_name"] == "cpu-only" and a["metric"] != "cpu_percent"], alerts
    assert b"cpu-only" in client.get("/metrics/forecasts").content


def test_a_store_made_before_partial_records_is_migrated_with_its_rows(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the table as earlier versions made it: metrics NOT NULL
        conn.execute("CREATE TABLE records (server_name VARCHAR(128) NOT NULL, timestamp DATETIME NOT NULL, "
                     "cpu_percent FLOAT NOT NULL, memory_percent FLOAT NOT NULL, disk_percent FLOAT NOT NULL, "
                     "load_average FLOAT NOT NULL, status VARCHAR(16) NOT NULL, profile VARCHAR(32) NOT NULL, "
                     "received_at DATETIME NOT NULL, PRIMARY KEY (server_name, timestamp))")
        conn.execute("CREATE INDEX ix_records_received_at ON records (received_at)")
        conn.execute("INSERT INTO records VALUES ('old-1', ?, 1, 2, 3, 0.5, 'healthy', 'generic', ?)",
                     (NOW.to_pydatetime().isoformat(sep=" ", timespec="microseconds"),) * 2)  # as SQLAlchemy writes it
    store = FeedStore(f"sqlite:///{path}")
    try:
        ingest_items(store, [{"timestamp": schema.iso(NOW), "server_name": "old-1", "cpu_percent": 9.0},
                             {"timestamp": schema.iso(NOW), "server_name": "new-1", "load_average": 1.0}])
        (old,), (new,) = stored(store, "old-1"), stored(store, "new-1")
        assert [old[m] for m in schema.METRICS] == [9.0, 2.0, 3.0, 0.5]
        assert [new[m] for m in schema.METRICS] == [None, None, None, 1.0]
    finally:
        store.dispose()
