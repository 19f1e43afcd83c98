"""Issue 12 against a real `bentoml serve` on a loopback port (uvicorn as BentoML runs it, real sockets):
slow uploads cannot starve reads, a spoofed X-Forwarded-For does not lift the rate limit, and the
service's OpenAPI document holds (schemathesis: no server error, every answer as documented).

One server for the module. Each test speaks from loopback addresses of its own (the whole of
127.0.0.0/8 is this host), so the per-client rate limit and write slots of one test never meet another's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import requests
import schemathesis
from fleetcast_testkit.serve import Served, served, wait_until
from hypothesis import HealthCheck, given, settings
from requests.adapters import HTTPAdapter
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow

BURST = 40  # the live server's rate limit: 40 POSTs per 4,000 s per client address
BODY_TIMEOUT = 8.0
IN_FLIGHT = 64  # FLEETCAST_MAX_WRITES_IN_FLIGHT (default)
PER_CLIENT = 4  # FLEETCAST_MAX_WRITES_IN_FLIGHT_PER_CLIENT (default)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Served]:
    state = tmp_path_factory.mktemp("live")
    env = {**os.environ, "FLEETCAST_DATA_DIR": str(state), "FLEETCAST_STORE_URL": f"sqlite:///{state / 'feed.db'}",
           "FLEETCAST_MODEL_PATH": str(tiny_checkpoint), "FLEETCAST_DEMO_FLEET": "0",
           "FLEETCAST_RATE_LIMIT_PER_SECOND": "0.01", "FLEETCAST_RATE_LIMIT_BURST": str(BURST),
           "FLEETCAST_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT), "FLEETCAST_REFRESH_SECONDS": "1"}
    env.pop("FLEETCAST_API_TOKEN", None)
    env.pop("FORWARDED_ALLOW_IPS", None)
    with served(state / "serve.log", env) as server:
        yield server


def client_from(address: str, **kwargs: Any) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (a loopback address of its own)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10, **kwargs)


# --- finding 4: the rate limit is keyed on the real peer ---------------------------------------------------
def test_spoofed_x_forwarded_for_does_not_lift_the_rate_limit(live: Served) -> None:
    with client_from("127.0.0.3") as client:
        codes = [client.post(f"{live.url}/feed/data", json={"records": []},
                             headers={"X-Forwarded-For": f"203.0.113.{i % 250}, 10.0.0.{i % 250}"}).status_code
                 for i in range(BURST + 5)]
        assert codes[:BURST] == [400] * BURST and codes[BURST:] == [429] * 5  # 400: "records is empty"
        r = client.post(f"{live.url}/feed/data", json={"records": []},
                        headers={"X-Forwarded-For": "<script>x</script>", "X-Real-IP": "198.51.100.1",
                                 "Forwarded": "for=198.51.100.2"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "rate limit exceeded for this client" in r.text
        assert "<script>" not in r.text and "203.0.113" not in r.text and "127.0.0.3" not in r.text
    with client_from("127.0.0.4") as other:  # another peer has its own budget
        assert other.post(f"{live.url}/feed/data", json={"records": []}).status_code == 400
    refused = httpx.get(f"{live.url}/health", timeout=10).json()["writes"]["refused"]
    assert refused["rate_limit"] >= 6


# --- finding 2: slow uploads cannot starve reads -----------------------------------------------------------
HEAD = (b"POST /feed/data HTTP/1.1\r\nHost: fleetcast\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n")


def slow_upload(port: int, address: str) -> socket.socket:
    """A connection from ``address`` that sends a POST's headers and then no body yet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(HEAD)
    return sock


def drip(socks: list[socket.socket], stop: threading.Event, every: float = 2.0) -> None:
    """One byte of body on every connection every ``every`` seconds (closed ones are skipped)."""
    while not stop.wait(every):
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b" ")


def status_of(sock: socket.socket, timeout: float) -> int | None:
    """The status code the server answered on ``sock`` (None: nothing within ``timeout``)."""
    sock.settimeout(timeout)
    try:
        head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and head.startswith(b"HTTP/1.1") else None


def wait_for_in_flight(client: httpx.Client, live: Served, expected: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(f"{live.url}/health", timeout=5.0).json()["writes"]["in_flight"] == expected:
            return True
        time.sleep(0.1)
    return False


def test_300_slow_clients_do_not_stop_reads(live: Served) -> None:
    """300 uploads that send a byte every 2 s, from 300 addresses (and 6 more from one address): each
    POST takes a write slot before its body is read, so at most 64 are held (the rest are answered 429
    at once), BentoML's 256 request slots stay free for reads, GET /predictions answers 200 within 1 s
    throughout, /health shows the saturation, and the held uploads are cut off (408) after the body
    timeout."""
    port = live.port
    stop = threading.Event()
    opened = time.monotonic()
    same_client = [slow_upload(port, "127.0.0.9") for _ in range(PER_CLIENT + 2)]
    crowd = [slow_upload(port, f"127.0.{1 + i // 250}.{2 + i % 250}") for i in range(300)]
    socks = same_client + crowd
    dripper = threading.Thread(target=drip, args=(socks, stop), daemon=True)
    dripper.start()
    try:
        latencies = []
        with client_from("127.0.0.5") as reader:
            assert wait_for_in_flight(reader, live, IN_FLIGHT)  # every write slot held by a slow upload
            writes = reader.get(f"{live.url}/health", timeout=5.0).json()["writes"]
            metrics = reader.get(f"{live.url}/metrics", timeout=5.0).text  # BentoML's Prometheus endpoint
            with client_from("127.0.0.6") as writer:  # a fresh client finds every slot taken: 429 at once
                r = writer.post(f"{live.url}/feed/data", json={"records": []}, timeout=5.0)
                assert r.status_code == 429 and "FLEETCAST_MAX_WRITES_IN_FLIGHT" in r.json()["detail"]
            while time.monotonic() < opened + BODY_TIMEOUT - 1.0:  # reads while the slots are held
                started = time.perf_counter()
                r = reader.get(f"{live.url}/predictions", timeout=1.0)  # a starved service would time out
                latencies.append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
                time.sleep(0.2)
            still = reader.get(f"{live.url}/health", timeout=5.0).json()["writes"]
        assert len(latencies) >= 5, f"opening 306 connections took {time.monotonic() - opened:.1f} s"
        assert still["in_flight"] == IN_FLIGHT  # the reads above all ran under full saturation
        assert writes["in_flight"] == IN_FLIGHT and writes["in_flight_limit"] == IN_FLIGHT
        assert writes["refused"]["in_flight_per_client"] == 2
        assert writes["refused"]["in_flight_total"] == len(socks) - IN_FLIGHT - 2
        assert f"fleetcast_writes_in_flight {IN_FLIGHT}.0" in metrics, metrics[-3000:]
        assert f'fleetcast_write_refusals_total{{reason="in_flight_total"}} {len(socks) - IN_FLIGHT - 2}.0' in metrics

        statuses = Counter(status_of(sock, timeout=BODY_TIMEOUT + 5) for sock in socks)
        assert statuses == Counter({429: len(socks) - IN_FLIGHT, 408: IN_FLIGHT}), statuses
        after = httpx.get(f"{live.url}/health", timeout=5).json()["writes"]
        assert after["in_flight"] == 0 and after["refused"]["body_timeout"] == IN_FLIGHT
        print(f"GET /predictions under 306 slow uploads: max {max(latencies) * 1000:.0f} ms "
              f"over {len(latencies)} reads")
    finally:
        stop.set()
        for sock in socks:
            sock.close()


# --- the OpenAPI document: schemathesis against the live server --------------------------------------------
class SourceAddress(HTTPAdapter):
    """requests' adapter with connections from one loopback address."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


@schemathesis.serializer("application/x-protobuf")
def _protobuf_body(_ctx: Any, value: Any) -> bytes:
    """Remote write and OTLP take protobuf bytes: generated bytes as they are, anything else (negative cases)
    as its text, which is no protobuf message the service can read."""
    return value if isinstance(value, bytes) else str(value).encode()


@schemathesis.deserializer("application/x-protobuf")
def _protobuf_answer(_ctx: Any, response: Any) -> str:
    """An OTLP answer in protobuf, as the ``string`` its schema describes."""
    return response.content.hex()


EXAMPLES = 25  # per operation and generation mode (invalid cases where there is input): at most 250 requests
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def test_openapi_document_holds(live: Served) -> None:
    """schemathesis generates requests for every operation of the service's OpenAPI document (``/openapi.json``,
    request bodies included), valid ones and invalid ones, 25 of each per operation: no answer is a server
    error, and every status, content type, header and body is what the document says.

    (schemathesis' own pytest loader does not run under pytest 9 yet, so its strategies run under
    Hypothesis' ``@given`` here.) Each case comes from a loopback address of its own, so the live server's
    per-client rate limit does not turn the run into 429s."""
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "GET /predictions", "GET /predictions/{server_name}", "GET /alerts", "GET /health", "GET /scenario",
        "GET /metrics/forecasts", "POST /feed/data", "POST /scenario/set", "POST /api/v1/write", "POST /v1/metrics"}
    body = schema.raw_schema["paths"]["/feed/data"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson"} <= set(body)  # the request bodies are described
    sources = iter(f"127.{10 + n // 62500}.{n // 250 % 250}.{2 + n % 250}" for n in range(10**6))
    calls: Counter[str] = Counter()
    for op in operations:
        raw = op.definition.raw
        # invalid cases where something can be invalid: a body, a query parameter (a path segment is any string)
        negatable = bool(raw.get("requestBody") or any(p.get("in") == "query" for p in raw.get("parameters", [])))
        # a protobuf body is any bytes: nothing to make invalid (the agent routes' malformed bodies are
        # tests/serving/test_agents.py's)
        negatable &= "application/x-protobuf" not in (raw.get("requestBody") or {}).get("content", {})
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if negatable else (GenerationMode.POSITIVE,)
        for mode in modes:
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case: Any) -> None:
                with requests.Session() as session:
                    session.mount("http://", SourceAddress(next(sources)))
                    response = case.call_and_validate(session=session, checks=CHECKS, timeout=30)
                calls[f"{case.method.upper()} {case.operation.path} {response.status_code}"] += 1

            try:
                check()
            except Exception as exc:
                raise AssertionError(f"{op.method.upper()} {op.path} ({mode.value} cases)") from exc
    assert {key.rsplit(" ", 1)[0] for key in calls} == {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"400", "422"} <= {key.rsplit(" ", 1)[1] for key in calls if key.startswith("POST /feed/data")}, calls

    # generated records carry timestamps from any century (outside the accepted window): the answers with
    # data are checked against the document with requests made here
    by_path = {f"{op.method.upper()} {op.path}": op for op in operations}
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("5min")
    records = [{"timestamp": (now - pd.Timedelta(minutes=5 * i)).isoformat(), "server_name": f"st-{k}",
                "cpu_percent": 20 + i % 7, "memory_percent": 50.0, "disk_percent": 40.0, "load_average": 1.0,
                "profile": "web_api" if k else "unknown_kind"} for k in range(2) for i in range(24)]
    feed = by_path["POST /feed/data"]
    answers = [feed.Case(body={"records": records}, media_type="application/json"),
               feed.Case(body=[*records[:3], {"server_name": "x"}, records[0]], media_type="application/json")]
    statuses = []
    for case in answers:
        with requests.Session() as session:
            session.mount("http://", SourceAddress(next(sources)))
            statuses.append(case.call_and_validate(session=session, checks=CHECKS, timeout=30).status_code)
    assert statuses == [200, 200]

    def forecasts() -> bool:
        names = {p["server_name"] for p in httpx.get(f"{live.url}/predictions", timeout=10).json()["predictions"]}
        return {"st-0", "st-1"} <= names

    assert wait_until(forecasts, timeout=60)
    for case in (by_path["GET /predictions"].Case(query={"include_history": True}),
                 by_path["GET /predictions/{server_name}"].Case(path_parameters={"server_name": "st-1"}),
                 by_path["GET /alerts"].Case(), by_path["GET /health"].Case()):
        assert case.call_and_validate(checks=CHECKS, timeout=30).status_code == 200
