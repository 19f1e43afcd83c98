"""The feed's bad-input table: each row one request to POST /feed/data, its expected status and a fragment of
its message, always sent with one valid record whose storage is then checked in the store.

- ``record`` rows: the body is ``{"records": [valid, bad]}``; one bad value costs only itself: 200
  ``partial``, the error names index 1 and the field, the valid record is stored; where the bad record's
  other metrics are fine they are stored too (the error lists them as ``kept``).
- ``accepted`` rows: the body is ``{"records": [valid, other]}`` and both are fine (perhaps with a
  warning): the expected fragment is in ``warnings`` (or nothing is expected), the valid record is stored.
- ``body`` rows: the whole request is refused (the body cannot be read, or its shape or size is wrong):
  4xx with the fragment in ``detail``, and the valid record inside it is not stored.

No row may answer 5xx, and no answer repeats a header's value. The real service runs in-process once
for the module (``Fleetcast.to_asgi()``), seen from a loopback peer, without token or rate limit; the caps
a row changes (``FLEETCAST_MAX_BODY_BYTES``...) are read per request.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from models import schema
from serving.store import FeedStore, records_table

NOW = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("5min")
DEEP = 1000  # levels of nesting: past the JSON parser's recursion limit (a 2 KB body)
SCRIPT = "<script>x</script>"


MISSING = object()  # an override that removes the field


@dataclass(frozen=True)
class Item:
    """A whole item in place of the second record (not overrides of the valid one)."""

    value: Any


@dataclass(frozen=True)
class Row:
    id: str
    kind: str  # record | accepted | body
    status: int
    fragment: str
    bad: Any = None  # record/accepted: overrides of the valid record (MISSING removes a field), or an Item
    body: Callable[[dict[str, Any]], bytes] | None = None  # body rows: the request body around the valid record
    content_type: str = "application/json"
    encoding: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    processed: int | None = None  # accepted rows: records_processed when not 2


def ts(delta: pd.Timedelta) -> str:
    return (NOW + delta).strftime("%Y-%m-%dT%H:%M:%S")


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def token(field_name: str, raw: str) -> Callable[[dict[str, Any]], bytes]:
    """``{"records": [valid, other]}`` where ``other``'s ``field_name`` is the raw JSON token ``raw`` (``NaN``,
    ``Infinity``, ``1e400``: what Python's parser reads and json.dumps cannot write)."""
    def build(good: dict[str, Any]) -> bytes:
        other = {**good, "server_name": "b", field_name: "@TOKEN@"}
        return dumps({"records": [good, other]}).replace(b'"@TOKEN@"', raw.encode())
    return build


def wrapped(good: dict[str, Any], tail: str) -> bytes:
    """``{"records": [good, <tail>`` as raw text (what json.dumps cannot write: NaN tokens, deep nesting)."""
    return b'{"records": [' + dumps(good) + b", " + tail.encode()


R = Row
ROWS: list[Row] = [
    # --- the whole request refused (the 12 body-level rows of the first table, with a valid record inside)
    R("malformed-json", "body", 400, "malformed JSON", body=lambda g: b'{"records": [' + dumps(g) + b","),
    R("empty-body", "body", 400, "empty body", body=lambda g: b""),
    R("blank-body", "body", 400, "empty body", body=lambda g: b"   \n "),
    R("xml", "body", 415, "unsupported Content-Type", body=lambda g: b"<records/>", content_type="application/xml"),
    R("form", "body", 415, "unsupported Content-Type", body=lambda g: b"a=1",
      content_type="application/x-www-form-urlencoded"),
    R("too-large", "body", 413, "FLEETCAST_MAX_BODY_BYTES", body=lambda g: dumps({"records": [g]}) + b" " * 2000,
      env={"FLEETCAST_MAX_BODY_BYTES": "1000"}),
    R("too-many", "body", 413, "FLEETCAST_MAX_RECORDS", body=lambda g: dumps([g] * 6),
      env={"FLEETCAST_MAX_RECORDS": "5"}),
    R("records-not-array", "body", 400, "'records' must be an array of records, got string",
      body=lambda g: dumps({"records": "x", "record": g})),
    R("scalar", "body", 400, "must be a JSON object or array, got number", body=lambda g: b"42"),
    R("ndjson-garbage", "body", 400, "malformed NDJSON", body=lambda g: b"not json\nalso not",
      content_type="application/x-ndjson"),
    R("bad-gzip", "body", 400, "not valid gzip", body=lambda g: dumps([g]), encoding="gzip"),
    R("brotli", "body", 415, "unsupported Content-Encoding", body=lambda g: dumps([g]), encoding="br"),
    # --- one bad value (the 12 record-level rows of the first table): only that record is lost
    R("cpu-over-100", "record", 200, "cpu_percent: Input should be less than or equal to 100", {"cpu_percent": 100.5}),
    R("memory-negative", "record", 200, "memory_percent: Input should be greater than or equal to 0",
      {"memory_percent": -1}),
    R("load-absurd", "record", 200, "load_average: Input should be less", {"load_average": 5000}),
    R("metric-as-bool", "record", 200, "must be a number, not a boolean", {"disk_percent": True}),
    R("metric-as-text", "record", 200, "disk_percent: Input should be a valid number", {"disk_percent": "lots"}),
    R("nan", "body-record", 200, "cpu_percent: Input should be a finite number",
      body=token("cpu_percent", "NaN")),
    R("no-server-name", "record", 200, "server_name: Field required", {"server_name": MISSING}),
    R("bad-server-name", "record", 200, "server_name: String should match pattern", {"server_name": "no spaces"}),
    R("bad-timestamp", "record", 200, "timestamp: 'yesterday-ish' is not an ISO 8601 time",
      {"timestamp": "yesterday-ish"}),
    R("future", "record", 200, "more than 10 minutes in the future", {"timestamp": ts(pd.Timedelta(hours=2))}),
    R("bad-status", "record", 200, "status: status must be one of", {"status": "on fire"}),
    R("not-an-object", "record", 200, "record must be a JSON object, got number", Item(42)),
    # --- issue 12, finding 1: timestamps that overflowed (500, whole batch lost)
    R("epoch-1e20", "record", 200, "timestamp: epoch seconds 1e+20 are outside 1678..2262", {"timestamp": 1e20}),
    R("epoch-infinity", "body-record", 200, "timestamp: epoch seconds must be a finite number",
      body=token("timestamp", "Infinity")),
    R("epoch-minus-infinity", "body-record", 200, "epoch seconds must be a finite number",
      body=token("timestamp", "-Infinity")),
    R("epoch-nan", "body-record", 200, "epoch seconds must be a finite number",
      body=token("timestamp", "NaN")),
    R("year-1-with-offset", "record", 200, "is outside the calendar once converted to UTC",
      {"timestamp": "0001-01-01T00:00:00+01:00"}),
    R("year-9999-with-offset", "record", 200, "is outside the calendar once converted to UTC",
      {"timestamp": "9999-12-31T23:59:59-05:00"}),
    R("year-9999", "record", 200, "is outside 1678..2262", {"timestamp": "9999-12-31T23:59:59"}),
    R("epoch-negative-huge", "record", 200, "epoch seconds -1e+12 are outside", {"timestamp": -1e12}),
    R("epoch-milliseconds", "record", 200, "(milliseconds? send seconds)", {"timestamp": NOW.timestamp() * 1000}),
    R("timestamp-bool", "record", 200, "timestamp must be an ISO 8601 string or epoch seconds", {"timestamp": True}),
    R("timestamp-array", "record", 200, "timestamp must be an ISO 8601 string or epoch seconds", {"timestamp": [1]}),
    R("timestamp-object", "record", 200, "timestamp must be an ISO 8601 string", {"timestamp": {"$date": 1}}),
    R("timestamp-empty", "record", 200, "timestamp: '' is not an ISO 8601 time", {"timestamp": ""}),
    R("timestamp-feb-30", "record", 200, "is not an ISO 8601 time", {"timestamp": "2025-02-30T00:00:00"}),
    R("timestamp-offset-25h", "record", 200, "is not an ISO 8601 time", {"timestamp": "2025-10-12T00:00:00+25:00"}),
    R("timestamp-long-text", "record", 200, "...' is not an ISO 8601 time", {"timestamp": "9" * 10_000}),
    # --- finding 7: the accepted window (400 days back, 10 minutes ahead)
    R("epoch-negative", "record", 200, "timestamp: 1969-12-31T00:00:00 is more than 400 days old",
      {"timestamp": -86400}),
    R("year-1970", "record", 200, "is more than 400 days old", {"timestamp": "1970-01-01T00:00:00Z"}),
    R("401-days-old", "record", 200, "more than 400 days old (server time", {"timestamp": ts(-pd.Timedelta(days=401))}),
    R("window-setting", "record", 200, "more than 2 days old", {"timestamp": ts(-pd.Timedelta(days=3))},
      env={"FLEETCAST_MAX_RECORD_AGE_DAYS": "2"}),
    R("future-setting", "record", 200, "more than 1 minute in the future", {"timestamp": ts(pd.Timedelta(minutes=30))},
      env={"FLEETCAST_MAX_FUTURE_MINUTES": "1"}),
    # --- finding 1: nesting past the parser's limit is a 400, never a RecursionError
    R("deep-body", "body", 400, "JSON nested too deeply", body=lambda g: b"[" * DEEP),
    R("deep-in-records", "body", 400, "JSON nested too deeply", body=lambda g: wrapped(g, "[" * DEEP)),
    R("deep-closed", "body", 400, "JSON nested too deeply",
      body=lambda g: wrapped(g, "[" * DEEP + "]" * DEEP + "]}")),
    R("deep-ndjson-line", "body-record", 200, "line 2: malformed JSON: JSON nested too deeply",
      body=lambda g: dumps(g) + b"\n" + b"[" * DEEP + b"]" * DEEP, content_type="application/x-ndjson"),
    R("nested-value", "record", 200, "cpu_percent: Input should be a valid number",
      {"cpu_percent": json.loads("[" * 50 + "]" * 50)}),
    # --- other values: every one a per-record error naming the field
    R("cpu-1e400", "body-record", 200, "cpu_percent: Input should be a finite number",
      body=token("cpu_percent", "1e400")),
    R("cpu-array", "record", 200, "cpu_percent: Input should be a valid number", {"cpu_percent": [50]}),
    # partial records (issue 11): a metric null or absent is not reported; the parts merge per key
    R("cpu-null", "accepted", 200, "same server_name and timestamp as record 0: merged", {"cpu_percent": None},
      processed=1),
    R("cpu-missing", "accepted", 200, "same server_name and timestamp as record 0: merged",
      {"cpu_percent": MISSING}, processed=1),
    R("no-metric", "record", 200, "no metric: a record needs at least one of",
      {m: MISSING for m in schema.METRICS}),
    R("server-name-129", "record", 200, "server_name: String should match pattern", {"server_name": "a" * 129}),
    R("server-name-number", "record", 200, "server_name: Input should be a valid string", {"server_name": 12}),
    R("server-name-surrogate", "record", 200, "server_name: Input should be a valid string",
      {"server_name": "web\ud800"}),
    R("status-number", "record", 200, "status: Input should be a valid string", {"status": 1}),
    R("profile-number", "record", 200, "profile: profile must be a string", {"profile": 3}),
    R("record-null", "record", 200, "record must be a JSON object, got null", Item(None)),
    R("record-array", "record", 200, "record must be a JSON object, got array", Item([1, 2])),
    R("record-empty-object", "record", 200, "timestamp: Field required", Item({})),
    R("ndjson-bad-line", "body-record", 200, "line 2: malformed JSON", body=lambda g: dumps(g) + b"\n{oops",
      content_type="application/x-ndjson"),
    # --- finding 9 and other whole-request cases
    R("records-empty", "body", 400, "records is empty", body=lambda g: b'{"records": []}'),
    R("array-empty", "body", 400, "the array is empty", body=lambda g: b"[]"),
    R("records-null", "body", 400, "'records' must be an array of records, got null",
      body=lambda g: b'{"records": null}'),
    R("not-utf8", "body", 400, "body is not UTF-8 text", body=lambda g: dumps([g])[:-2] + b"\xff\xfe]"),
    R("integer-5000-digits", "body", 400, "malformed JSON: Exceeds the limit",
      body=lambda g: wrapped(g, '{"cpu_percent": ' + "9" * 5000 + "}]}")),
    R("gzip-bomb", "body", 413, "FLEETCAST_MAX_BODY_BYTES", body=lambda g: gzip.compress(dumps([g]) + b" " * 100_000),
      encoding="gzip", env={"FLEETCAST_MAX_BODY_BYTES": "20000"}),
    R("header-echo", "body", 415, "unsupported Content-Type", body=lambda g: dumps([g]), content_type=SCRIPT),
    R("encoding-echo", "body", 415, "unsupported Content-Encoding", body=lambda g: dumps([g]), encoding=SCRIPT),
    # --- accepted: numeric strings (documented), duplicates counted once, odd profiles kept with a warning
    R("numeric-strings", "accepted", 200, "", {"cpu_percent": "45.2", "load_average": " 2.5 ",
                                             "server_name": "other"}),
    R("duplicate", "accepted", 200, "same server_name and timestamp as record 0: merged", {}, processed=1),
    R("profile-surrogate", "record", 200, "profile: Input should be a valid string", {"profile": "\udc00"}),
    R("profile-long", "accepted", 200, "...' mapped to 'generic'", {"profile": "p" * 5000, "server_name": "other"}),
    R("epoch-seconds", "accepted", 200, "", {"timestamp": NOW.timestamp() - 300, "server_name": "other"}),
    R("offset-converted", "accepted", 200, "", {"timestamp": (NOW + pd.Timedelta(hours=2)).strftime(
        "%Y-%m-%dT%H:%M:%S+02:00"), "server_name": "other"}),
]


def test_the_table_covers_the_issue() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.fixture(scope="module")
def table_service(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
                  asgi_app: Any) -> Iterator[tuple[TestClient, FeedStore]]:
    state = tmp_path_factory.mktemp("table")
    url = f"sqlite:///{state / 'feed.db'}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"FLEETCAST_DATA_DIR": str(state), "FLEETCAST_STORE_URL": url,
                           "FLEETCAST_MODEL_PATH": str(tiny_checkpoint), "FLEETCAST_REFRESH_SECONDS": "60",
                           "FLEETCAST_RATE_LIMIT_PER_SECOND": "0", "FLEETCAST_DEMO_FLEET": "0"}.items():
            mp.setenv(key, value)
        mp.delenv("FLEETCAST_API_TOKEN", raising=False)
        client = TestClient(asgi_app, client=("127.0.0.1", 50000))
        client.__enter__()
        store = FeedStore(url)
        try:
            yield client, store
        finally:
            client.__exit__(None, None, None)
            store.dispose()


def stored(store: FeedStore, server: str) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(records_table).where(records_table.c[schema.SERVER] == server)).mappings()
        return [dict(r) for r in rows]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in ROWS])
def test_each_input_gets_its_status_and_message_and_spares_the_valid_record(
        table_service: tuple[TestClient, FeedStore], row: Row, monkeypatch: pytest.MonkeyPatch) -> None:
    client, store = table_service
    for key, value in row.env.items():
        monkeypatch.setenv(key, value)
    number = ROWS.index(row)
    good = {"timestamp": ts(-pd.Timedelta(minutes=5 * number)), "server_name": f"ok-{number:03d}",
            "cpu_percent": 12.5, "memory_percent": 40.0, "disk_percent": 30.0, "load_average": 1.25,
            "status": "healthy", "profile": "web_api"}
    if row.kind in ("record", "accepted"):
        if isinstance(row.bad, Item):
            other = row.bad.value
        else:
            other = {k: v for k, v in {**good, **row.bad}.items() if v is not MISSING}
            if row.bad.get("server_name") == "other":
                other["server_name"] = f"other-{number:03d}"
        payload = json.dumps({"records": [good, other]}).encode()
    else:
        assert row.body is not None
        payload = row.body(good)
    headers = {"Content-Type": row.content_type}
    if row.encoding:
        headers["Content-Encoding"] = row.encoding

    r = client.post("/feed/data", content=payload, headers=headers)

    assert r.status_code == row.status, r.text
    assert SCRIPT not in r.text  # header values are never echoed
    data = r.json()
    if row.kind == "body":
        assert row.fragment in data["detail"], data
        assert stored(store, good["server_name"]) == []  # a refused request stores nothing
        return
    if row.kind == "accepted":
        expected = row.processed or 2
        assert (data["records_processed"], data["records_rejected"], data["errors"]) == (expected, 0, []), data
        if row.fragment:
            assert any(row.fragment in w["warning"] and w["index"] == 1 for w in data["warnings"]), data
    elif data["errors"][0].get("kept"):  # only a value was bad: the record's other metrics are stored
        assert data["status"] == "partial" and data["records_rejected"] == 0, data
        assert data["errors"][0]["index"] == 1, data
        bad_metric = row.fragment.split(":", 1)[0]
        assert bad_metric not in data["errors"][0]["kept"], data
    else:
        assert data["status"] == "partial" and data["records_processed"] == 1 and data["records_rejected"] == 1
        assert data["errors"][0]["index"] == 1, data
        assert row.fragment in data["errors"][0]["error"], data
    rows = stored(store, good["server_name"])
    assert len(rows) == 1, rows  # the valid record of the same request is stored, once
    kept = rows[0]
    assert kept[schema.TIMESTAMP] == pd.Timestamp(good["timestamp"]).to_pydatetime()
    assert [kept[m] for m in schema.METRICS] == [good[m] for m in schema.METRICS]
