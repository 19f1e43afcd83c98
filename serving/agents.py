"""The agents' own formats turned into fleet records: Prometheus remote write, OTLP/HTTP metrics and
collectd's ``write_http`` JSON.

Each decoder turns a request body into partial records (``schema.PartialRecord``: any subset of the four
metrics), which then take the one ingest path of ``POST /feed/data`` (``serving/ingest.py``: validation,
profile resolution, the store's merge per (server, 5-minute bucket)). Series fleetcast does not use are
ignored and counted (``/health``, ``agents``).

Metrics are combined per (server, sample time) in a :class:`Combiner`, kept in memory for the last
samples, because an agent splits one scrape over several series and sometimes several requests
(Prometheus' shards, collectd's buffer): each time a sample time gains a part, its record is written
again with what is known so far, and the store keeps the newest value per metric (so the last, complete
one wins). Counters (``node_cpu_seconds_total``, ``system.cpu.time``) are turned into rates per series
between consecutive samples; a value below the previous one is a counter reset (the new value is the
increase since the reset), as Prometheus' ``rate()`` does.

Mappings (docs/api.md lists them):

- remote write: ``node_cpu_seconds_total`` -> ``cpu_percent`` (non-idle share of the increase over all
  modes and CPUs; ``idle`` and ``iowait`` count as idle), ``node_memory_MemAvailable_bytes`` /
  ``node_memory_MemTotal_bytes`` -> ``memory_percent`` (100 * (1 - available / total)),
  ``node_filesystem_avail_bytes`` / ``node_filesystem_size_bytes`` of the root mount -> ``disk_percent``,
  ``node_load1`` -> ``load_average``; server from ``FLEETCAST_REMOTE_WRITE_SERVER_LABEL`` (``instance``,
  a ``:port`` suffix dropped), profile from ``FLEETCAST_REMOTE_WRITE_PROFILE_LABEL``;
- OTLP: ``system.cpu.utilization`` (or ``system.cpu.time``) -> cpu, ``system.memory.utilization``
  (state ``used``) -> memory, ``system.filesystem.utilization`` of the root mount -> disk,
  ``system.cpu.load_average.1m`` -> load; server from the resource's ``host.name``, profile from its
  ``fleetcast.profile``;
- collectd: ``cpu`` (``ValuesPercentage true``: type ``percent`` per state, counted once a CPU's states
  add up to 100 %, or ``active``), ``memory``
  (``percent``: ``used`` + ``slab_unrecl``), ``df`` of the root instance (``percent_bytes``: 100 - ``free``),
  ``load`` (``shortterm``); server from ``host``.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from models import schema
from serving.ingest import PROFILE_SOURCE_KEY, IngestError

CPU, MEM, DISK, LOAD = schema.METRICS
IDLE_STATES = frozenset({"idle", "iowait", "wait"})
_INFINITE = (math.inf, -math.inf)
_PORT = re.compile(r"^(?P<host>\[[^\]]+\]|[^:]+):\d+$")


def server_from_instance(value: str) -> str:
    """``host:port`` -> ``host`` (``[::1]:9100`` -> ``::1``); anything else as it is."""
    match = _PORT.match(value)
    if not match:
        return value
    return match["host"].strip("[]")


@dataclass
class Decoded:
    """Records built from one request, and what was left out."""

    items: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0  # samples / data points / values read
    ignored: Counter[str] = field(default_factory=Counter)  # metric name -> samples not used
    errors: list[str] = field(default_factory=list)  # parts of the body that could not be read

    @property
    def ignored_samples(self) -> int:
        return sum(self.ignored.values())


class Combiner:
    """Parts of each (server, time) sample and each counter's last value, bounded in memory (the oldest
    go first); thread-safe."""

    def __init__(self, max_slots: int = 200_000, max_counters: int = 1_000_000) -> None:
        self._slots: OrderedDict[tuple[str, float], dict[str, Any]] = OrderedDict()
        self._counters: dict[tuple[Any, ...], tuple[float, float]] = {}
        self.max_slots, self.max_counters = max_slots, max_counters
        self.lock = threading.Lock()

    def slot(self, server: str, t: float) -> dict[str, Any]:
        key = (server, t)
        found = self._slots.get(key)
        if found is None:
            found = self._slots[key] = {}
            if len(self._slots) > self.max_slots:
                self._slots.popitem(last=False)
        return found

    def increase(self, key: tuple[Any, ...], t: float, value: float) -> float | None:
        """The counter's increase since its previous sample (None for the first one, or a sample not newer
        than the last seen: a resend); after a reset (a lower value) the new value itself."""
        previous = self._counters.get(key)
        if previous is not None and t <= previous[0]:
            return None
        if len(self._counters) >= self.max_counters:
            for old in list(self._counters)[: self.max_counters // 2]:
                del self._counters[old]
        self._counters[key] = (t, value)
        if previous is None:
            return None
        return value - previous[1] if value >= previous[1] else value


def _finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


def _record(server: str, t: float, part: dict[str, Any]) -> dict[str, Any] | None:
    """The record a sample time's parts give now (None: no metric computable yet)."""
    values: dict[str, float] = {}
    if part.get("cpu_total", 0.0) > 0 and part.get("cpu_idle_seen"):  # without idle, a part reads as 100 % busy
        values[CPU] = 100.0 * part["cpu_busy"] / part["cpu_total"]
    elif "cpu" in part:
        values[CPU] = part["cpu"]
    if part.get("mem_total"):
        if "mem_avail" in part:
            values[MEM] = 100.0 * (1.0 - part["mem_avail"] / part["mem_total"])
    elif "mem" in part:
        values[MEM] = part["mem"]
    if part.get("fs_size"):
        if "fs_avail" in part:
            values[DISK] = 100.0 * (1.0 - part["fs_avail"] / part["fs_size"])
    elif "disk" in part:
        values[DISK] = part["disk"]
    if "load" in part:
        values[LOAD] = part["load"]
    if not values:
        return None
    record: dict[str, Any] = {schema.TIMESTAMP: t, schema.SERVER: server,
                              **{k: round(v, 4) for k, v in values.items()}}
    if part.get("profile") is not None:
        record[schema.PROFILE] = part["profile"]
        record[PROFILE_SOURCE_KEY] = part["profile_source"]
    return record


def _emit(combiner: Combiner, touched: dict[tuple[str, float], None], out: Decoded) -> None:
    for server, t in touched:
        record = _record(server, t, combiner.slot(server, t))
        if record is not None:
            out.items.append(record)


def _add_cpu_counter(combiner: Combiner, slot: dict[str, Any], key: tuple[Any, ...], t: float,
                     value: float, state: str) -> bool:
    delta = combiner.increase(key, t, value)
    if delta is None:
        return False
    slot["cpu_total"] = slot.get("cpu_total", 0.0) + delta
    slot["cpu_busy"] = slot.get("cpu_busy", 0.0) + (0.0 if state in IDLE_STATES else delta)
    slot["cpu_idle_seen"] = slot.get("cpu_idle_seen", False) or state in IDLE_STATES
    return True


# --- Prometheus remote write ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteWriteConfig:
    server_label: str = "instance"
    profile_label: str = "fleetcast_profile"
    root_mount: str = "/"


_RW_USED = frozenset({"node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes",
                      "node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_load1"})
_RW_GAUGES = {"node_memory_MemAvailable_bytes": "mem_avail", "node_memory_MemTotal_bytes": "mem_total",
              "node_filesystem_avail_bytes": "fs_avail", "node_filesystem_size_bytes": "fs_size",
              "node_load1": "load"}


def decode_snappy(body: bytes, limit: int) -> bytes:
    """Snappy block format (what remote write sends); 400 when it is not, 413 when it expands past ``limit``."""
    import cramjam

    try:
        size = cramjam.snappy.decompress_raw_len(body)
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise IngestError(400, f"body is not snappy-compressed (block format): {exc}") from None
    if size > limit:
        raise IngestError(413, f"body expands to {size} bytes, more than {limit} (FLEETCAST_MAX_BODY_BYTES)")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as exc:
        raise IngestError(400, f"body is not snappy-compressed (block format): {exc}") from None


def parse_write_request(data: bytes) -> Any:
    """Bytes -> ``prometheus.WriteRequest`` (protocol 1.0); 400 naming the problem."""
    from google.protobuf.message import DecodeError
    from opentelemetry.exporter.prometheus_remote_write.gen.remote_pb2 import WriteRequest

    request = WriteRequest()
    try:
        request.ParseFromString(data)
    except DecodeError as exc:
        raise IngestError(400, f"body is not a protobuf prometheus.WriteRequest: {exc}") from None
    return request


def decode_remote_write(request: Any, combiner: Combiner, config: RemoteWriteConfig) -> Decoded:
    """The request's series -> records (a tight loop: remote write is the high-volume path)."""
    out = Decoded()
    parts: dict[tuple[str, float], dict[str, Any]] = {}  # this request's parts per (server, time)
    counters = combiner._counters
    root, server_label, profile_label = config.root_mount, config.server_label, config.profile_label
    profile_source = f"label:{profile_label}"
    with combiner.lock:
        for series in request.timeseries:
            labels = {label.name: label.value for label in series.labels}
            name = labels.get("__name__", "")
            samples = series.samples
            n = len(samples)
            out.samples += n
            if name not in _RW_USED:
                out.ignored[name or "(no __name__)"] += n
                continue
            instance = labels.get(server_label)
            if not instance:
                out.ignored[f"{name} without the {server_label} label"] += n
                continue
            if name.startswith("node_filesystem") and labels.get("mountpoint") != root:
                out.ignored[f"{name} of other mounts"] += n
                continue
            server = server_from_instance(instance)
            profile = labels.get(profile_label) or None
            gauge = _RW_GAUGES.get(name)
            if gauge is not None:
                for sample in samples:
                    value = sample.value
                    if value != value or value in _INFINITE:  # staleness markers are NaN
                        continue
                    key = (server, sample.timestamp / 1000.0)
                    part = parts.get(key)
                    if part is None:
                        part = parts[key] = {}
                    part[gauge] = value
                    if profile is not None:
                        part["profile"] = profile
                continue
            key_c = (server, labels.get("cpu", ""), labels.get("mode", ""))
            idle = labels.get("mode", "") in IDLE_STATES
            previous = counters.get(key_c)
            last_t, last_v = previous if previous is not None else (None, 0.0)
            for sample in samples:
                value = sample.value
                if value != value or value in _INFINITE:
                    continue
                t = sample.timestamp / 1000.0
                if last_t is not None and t <= last_t:  # a resend: counted already
                    continue
                if last_t is not None:
                    delta = value - last_v if value >= last_v else value  # lower: the counter was reset
                    key = (server, t)
                    part = parts.get(key)
                    if part is None:
                        part = parts[key] = {}
                    part["cpu_total"] = part.get("cpu_total", 0.0) + delta
                    if not idle:
                        part["cpu_busy"] = part.get("cpu_busy", 0.0) + delta
                    else:
                        part["cpu_idle_seen"] = True
                    if profile is not None:
                        part["profile"] = profile
                last_t, last_v = t, value
            if last_t is not None:
                if previous is None and len(counters) >= combiner.max_counters:
                    for old in list(counters)[: combiner.max_counters // 2]:
                        del counters[old]
                counters[key_c] = (last_t, last_v)
        for (server, t), part in parts.items():
            slot = combiner.slot(server, t)
            for k, v in part.items():
                if k in ("cpu_total", "cpu_busy"):
                    slot[k] = slot.get(k, 0.0) + v
                elif k == "cpu_idle_seen":
                    slot[k] = True
                else:
                    slot[k] = v
            if "cpu_total" in slot:
                slot.setdefault("cpu_busy", 0.0)
            if "profile" in part:
                slot["profile_source"] = profile_source
            record = _record(server, t, slot)
            if record is not None:
                out.items.append(record)
    return out


# --- OTLP/HTTP metrics ---------------------------------------------------------------------------------
OTLP_PROTOBUF = "application/x-protobuf"
OTLP_JSON = "application/json"
_OTLP_USED = frozenset({"system.cpu.utilization", "system.cpu.time", "system.memory.utilization",
                        "system.filesystem.utilization", "system.cpu.load_average.1m"})
PROFILE_ATTRIBUTE = "fleetcast.profile"


def parse_otlp(data: bytes, media: str) -> Any:
    """Bytes -> ``ExportMetricsServiceRequest`` from protobuf or OTLP/JSON; 400 naming the problem."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    request = ExportMetricsServiceRequest()
    if media == OTLP_JSON:
        try:
            payload = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise IngestError(400, f"body is not OTLP/JSON: malformed JSON ({type(exc).__name__})") from None
        if not isinstance(payload, dict):
            raise IngestError(400, "body is not OTLP/JSON: an ExportMetricsServiceRequest is a JSON object")
        try:
            json_format.ParseDict(payload, request, ignore_unknown_fields=True)
        except Exception as exc:  # ParseError, and what odd values raise inside protobuf (never a 500)
            raise IngestError(400, "body is not an OTLP/JSON ExportMetricsServiceRequest: "
                                   f"{str(exc)[:300] or type(exc).__name__}") from None
        return request
    try:
        request.ParseFromString(data)
    except DecodeError as exc:
        raise IngestError(400, f"body is not a protobuf ExportMetricsServiceRequest: {exc}") from None
    return request


def _attribute(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _point_value(point: Any) -> float | None:
    kind = point.WhichOneof("value")
    if kind == "as_double":
        return float(point.as_double)
    if kind == "as_int":
        return float(point.as_int)
    return None


def decode_otlp(request: Any, combiner: Combiner, root_mount: str = "/") -> Decoded:
    out = Decoded()
    touched: dict[tuple[str, float], None] = {}
    with combiner.lock:
        for rm in request.resource_metrics:
            resource = {a.key: _attribute(a.value) for a in rm.resource.attributes}
            server = resource.get("host.name")
            profile = resource.get(PROFILE_ATTRIBUTE)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    points = getattr(metric, kind).data_points if kind in ("gauge", "sum") else []
                    n = len(points) if kind in ("gauge", "sum") else 1
                    out.samples += n
                    if metric.name not in _OTLP_USED or kind not in ("gauge", "sum"):
                        out.ignored[metric.name or "(no name)"] += n
                        continue
                    if not isinstance(server, str) or not server:
                        out.ignored[f"{metric.name} without host.name"] += n
                        continue
                    for point in points:
                        value = _point_value(point)
                        if value is None or not _finite(value):
                            continue
                        attrs = {a.key: _attribute(a.value) for a in point.attributes}
                        t = point.time_unix_nano / 1e9
                        if _otlp_point(combiner, server, metric.name, attrs, t, value, root_mount):
                            slot = combiner.slot(server, t)
                            if isinstance(profile, str) and profile:
                                slot["profile"] = profile
                                slot["profile_source"] = f"attribute:{PROFILE_ATTRIBUTE}"
                            touched[(server, t)] = None
                        else:
                            out.ignored[f"{metric.name} (other states or mounts)"] += 1
        _emit(combiner, touched, out)
    return out


def _otlp_point(combiner: Combiner, server: str, name: str, attrs: dict[str, Any], t: float, value: float,
                root_mount: str) -> bool:
    slot = combiner.slot(server, t)
    state = str(attrs.get("state", ""))
    if name == "system.cpu.utilization":
        slot["cpu_total"] = slot.get("cpu_total", 0.0) + value
        slot["cpu_busy"] = slot.get("cpu_busy", 0.0) + (0.0 if state in IDLE_STATES else value)
        slot["cpu_idle_seen"] = slot.get("cpu_idle_seen", False) or state in IDLE_STATES
        return True
    if name == "system.cpu.time":
        return _add_cpu_counter(combiner, slot, ("otlp", server, attrs.get("cpu", ""), state), t, value, state)
    if name == "system.memory.utilization":
        if state != "used":
            return False
        slot["mem"] = 100.0 * value
        return True
    if name == "system.filesystem.utilization":
        if attrs.get("mountpoint") != root_mount:
            return False
        slot["disk"] = 100.0 * value
        return True
    slot["load"] = value  # system.cpu.load_average.1m
    return True


def otlp_response(media: str, rejected: int = 0, message: str = "") -> tuple[bytes, str]:
    """An ``ExportMetricsServiceResponse`` (with ``partial_success`` when something was left out), in the
    request's encoding."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

    response = ExportMetricsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_data_points = rejected
        response.partial_success.error_message = message
    if media == OTLP_JSON:
        return json_format.MessageToJson(response, indent=None).encode(), OTLP_JSON
    return response.SerializeToString(), OTLP_PROTOBUF


def otlp_status(media: str, code: int, message: str) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` (the OTLP/HTTP error body), in the request's encoding."""
    from google.protobuf import json_format
    from google.rpc.status_pb2 import Status

    # gRPC codes: INVALID_ARGUMENT for a bad request, UNAVAILABLE / RESOURCE_EXHAUSTED for retryable ones
    rpc = {400: 3, 413: 3, 415: 3, 401: 16, 403: 7, 429: 8, 503: 14}.get(code, 2)
    status = Status(code=rpc, message=message)
    if media == OTLP_JSON:
        return json_format.MessageToJson(status, indent=None).encode(), OTLP_JSON
    return status.SerializeToString(), OTLP_PROTOBUF


# --- collectd write_http JSON --------------------------------------------------------------------------
COLLECTD_KEYS = ("values", "dstypes", "dsnames", "plugin")
_COLLECTD_USED = frozenset({"cpu", "memory", "df", "load"})
# collectd's percentages of one CPU's states add up to 100; write_http's buffer may split them over two
# requests, and a share computed from the first part alone (user and system, idle still to come) reads as
# 100 % busy. A CPU counts once its states reach this sum.
COLLECTD_CPU_COMPLETE = 99.0


def is_collectd(items: list[Any]) -> bool:
    """collectd's ``write_http`` JSON: objects with ``values``, ``dstypes``, ``dsnames`` and ``plugin``."""
    return bool(items) and isinstance(items[0], dict) and all(k in items[0] for k in COLLECTD_KEYS)


def collectd_df_instance(mount: str) -> str:
    """collectd's df plugin instance of a mount point: ``/`` -> ``root``, ``/var/log`` -> ``var-log``."""
    return "root" if mount == "/" else mount.strip("/").replace("/", "-")


def decode_collectd(items: list[Any], combiner: Combiner,
                    root_mount: str = "/") -> tuple[Decoded, list[dict[str, Any]]]:
    """collectd value lists -> records; ``errors`` entries (index in the request) for objects that are not
    value lists collectd writes."""
    out = Decoded()
    errors: list[dict[str, Any]] = []
    touched: dict[tuple[str, float], None] = {}
    df_instance = collectd_df_instance(root_mount)
    with combiner.lock:
        for index, item in enumerate(items):
            problem = _collectd_problem(item)
            if problem:
                errors.append({"index": index, "error": problem})
                continue
            values = item["values"]
            out.samples += len(values)
            plugin, kind = item["plugin"], item.get("type", "")
            instance, state = str(item.get("plugin_instance") or ""), str(item.get("type_instance") or "")
            name = f"{plugin}/{kind}"
            if plugin not in _COLLECTD_USED:
                out.ignored[name] += len(values)
                continue
            value = values[0]
            if value is None or not _finite(float(value)):
                continue
            server, t = item["host"], float(item["time"])
            slot = combiner.slot(server, t)
            used = True
            if plugin == "cpu" and kind == "percent":
                if state == "active":
                    slot["cpu"] = float(value)
                else:  # per state, per CPU (plugin_instance): counted once the CPU's states add up to 100 %
                    total, busy = slot.setdefault("cpu_states", {}).get(instance, (0.0, 0.0))
                    slot["cpu_states"][instance] = (total + value, busy + (0.0 if state in IDLE_STATES else value))
                    complete = [tb for tb in slot["cpu_states"].values() if tb[0] >= COLLECTD_CPU_COMPLETE]
                    if complete:
                        slot["cpu"] = 100.0 * sum(b for _, b in complete) / sum(t for t, _ in complete)
            elif plugin == "memory" and kind == "percent" and state in ("used", "slab_unrecl"):
                slot[f"mem_{state}"] = float(value)
                slot["mem"] = slot.get("mem_used", 0.0) + slot.get("mem_slab_unrecl", 0.0)
            elif plugin == "df" and kind == "percent_bytes" and instance == df_instance and state == "free":
                slot["disk"] = 100.0 - float(value)
            elif plugin == "load" and kind == "load":
                slot["load"] = float(value)
            else:
                used = False
            if used:
                touched[(server, t)] = None
            else:
                out.ignored[f"{name}/{state}" if state else name] += len(values)
        _emit(combiner, touched, out)
    return out, errors


def _collectd_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "collectd value list must be a JSON object"
    values = item.get("values")
    if not isinstance(values, list) or not values:
        return "values: must be a non-empty array of numbers (collectd write_http JSON)"
    if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values):
        return "values: must be numbers"
    if not isinstance(item.get("plugin"), str):
        return "plugin: must be a string"
    if not isinstance(item.get("host"), str) or not item["host"]:
        return "host: missing (the server name)"
    time_value = item.get("time")
    if not isinstance(time_value, int | float) or isinstance(time_value, bool) or not _finite(float(time_value)):
        return "time: must be epoch seconds"
    return None
