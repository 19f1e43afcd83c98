"""POST /feed/data: body parsing, per-record validation and the write into the feed store.

One path for every record that enters fleetcast: the HTTP feed and the built-in demo fleet both call
:func:`ingest_items`, so both get the same validation (``models.schema.PartialRecord``) and the same
store; the agents' formats (``serving/agents.py``) go through :func:`validate_items` too.

Accepted bodies
- ``{"records": [record, ...]}`` (the contract), a bare JSON array of records, or one JSON object
  (Logstash's ``http`` output with ``format => "json"`` posts one event per request);
- NDJSON, one record per line (Fluent Bit ``format json_lines``, Fluentd ``out_http`` default,
  Vector ``framing.method = "newline_delimited"``), as ``application/x-ndjson`` /
  ``application/jsonlines`` or detected in ``text/plain``;
- ``Content-Encoding: gzip`` bodies (the size cap applies after decompression).

Field aliases for shippers that keep their own names (used only when the contract's name is absent):
``@timestamp``/``time`` -> timestamp, ``hostname``/``host``/``host.name`` -> server_name, ``cpu``,
``memory``/``mem``, ``disk``, ``load``/``load1`` -> the four metrics, ``server_profile`` -> profile.

What is refused where
- The whole request (4xx with ``detail``): what makes the body unreadable (not JSON, not UTF-8, nested
  deeper than Python's parser goes, bad gzip), a wrong shape (``records`` not an array, a JSON scalar), an
  empty body or empty ``records``, too large or too many records. Messages never quote a header's value.
- One value (``errors`` entry naming its index and the field, with ``kept``: the record's other metrics,
  stored): a metric out of range or not a number.
- One record (``errors`` entry naming its index, the others stored): every other problem with a value
  (:class:`models.schema.PartialRecord`: patterns, no metric at all, timestamps that do not convert), and a timestamp
  outside the accepted window (older than ``FLEETCAST_MAX_RECORD_AGE_DAYS``, further ahead than
  ``FLEETCAST_MAX_FUTURE_MINUTES``, both by the server clock).
- Two records for the same (server_name, timestamp) in one request are merged (the metrics the later
  one carries replace the earlier's, as a later request would) and counted once; a warning names the
  merged index.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import pandas as pd
from pydantic import ValidationError

from models import schema
from serving.profiles import SOURCE_RECORD, ProfileMap
from serving.settings import get_settings
from serving.store import PROFILE_SOURCE

PROFILE_SOURCE_KEY = "_profile_source"  # on items an agent format built: where their profile came from

JSON_TYPES = ("application/json", "text/json")
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonlines",
                "application/json-lines", "application/x-jsonlines", "application/jsonl")
TEXT_TYPES = ("text/plain",)

ALIASES: dict[str, tuple[str, ...]] = {
    schema.TIMESTAMP: ("@timestamp", "time"),
    schema.SERVER: ("hostname", "host"),
    "cpu_percent": ("cpu",),
    "memory_percent": ("memory", "mem"),
    "disk_percent": ("disk",),
    "load_average": ("load", "load1"),
    schema.PROFILE: ("server_profile",),
}


class Limits(NamedTuple):
    """The request caps and the record time window, read from the settings once per request
    (``FLEETCAST_MAX_BODY_BYTES``, ``FLEETCAST_MAX_RECORDS``, ``FLEETCAST_MAX_RECORD_AGE_DAYS``,
    ``FLEETCAST_MAX_FUTURE_MINUTES``)."""

    body_bytes: int
    records: int
    max_age: timedelta
    max_future: timedelta

    @classmethod
    def now(cls) -> Limits:
        return cls.of(get_settings())

    @classmethod
    def of(cls, s: Any) -> Limits:
        """The limits of a :class:`serving.settings.ServiceSettings`."""
        return cls(s.max_body_bytes, s.max_records, timedelta(days=s.max_record_age_days),
                   timedelta(minutes=s.max_future_minutes))


class IngestError(Exception):
    """A whole request refused: HTTP ``status_code`` with a ``detail`` naming what and where."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip``/``deflate``; 413 when the (decompressed) body exceeds ``limit``."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        data = body
    elif encoding in ("gzip", "x-gzip", "deflate"):
        try:
            if encoding == "deflate":
                d = zlib.decompressobj()
                data = d.decompress(body, limit + 1)
            else:
                with gzip.GzipFile(fileobj=io.BytesIO(body)) as f:
                    data = f.read(limit + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise IngestError(400, f"body is not valid {encoding} data: {exc}") from exc
    else:
        raise IngestError(415, "unsupported Content-Encoding; send the body as is or with gzip/deflate")
    if len(data) > limit:
        raise IngestError(413, f"body larger than {limit} bytes (FLEETCAST_MAX_BODY_BYTES)")
    return data


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


TOO_DEEP = "JSON nested too deeply (a record is a flat object; arrays of arrays are not records)"


def loads(text: str) -> Any:
    """``json.loads``; a document nested deeper than the parser's recursion limit (about 1,000 levels,
    a 2 KB body of ``[``) is a :class:`IngestError` 400, not a ``RecursionError`` (used by every JSON
    body the service reads)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise IngestError(400, TOO_DEEP) from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer literal longer than Python converts (4,300 digits)
        raise IngestError(400, f"malformed JSON: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).split(";", 1)[0].split("\n", 1)[0][:120]


def _parse_ndjson(text: str) -> list[Any]:
    items: list[Any] = []
    parsed = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
            parsed += 1
        except json.JSONDecodeError as exc:
            items.append(_BadLine(lineno, exc.msg, exc.colno))
        except RecursionError:
            items.append(_BadLine(lineno, TOO_DEEP, 1))
        except ValueError as exc:  # an integer literal longer than Python converts
            items.append(_BadLine(lineno, _first_line(exc), 1))
    if items and not parsed:
        first = items[0]
        raise IngestError(400, f"malformed NDJSON: no line is valid JSON (line {first.lineno}: {first.message})")
    return items


@dataclass(frozen=True)
class _BadLine:
    lineno: int
    message: str
    column: int


def parse_body(body: bytes, content_type: str | None) -> list[Any]:
    """Body -> list of raw items (dicts, or anything a client sent, validated later one by one)."""
    media = _media_type(content_type)
    if media and media not in JSON_TYPES + NDJSON_TYPES + TEXT_TYPES and not media.endswith("+json"):
        raise IngestError(415, "unsupported Content-Type; send application/json "
                               "({\"records\": [...]} or an array) or application/x-ndjson (one record a line)")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(400, f"body is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise IngestError(400, "empty body: send {\"records\": [...]}, a JSON array or NDJSON")
    if media in NDJSON_TYPES:
        return _parse_ndjson(text)
    try:
        payload = loads(text)
    except json.JSONDecodeError as exc:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if media in TEXT_TYPES + ("",) and len(lines) > 1:
            return _parse_ndjson(text)
        raise IngestError(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if isinstance(payload, list):
        if not payload:
            raise IngestError(400, "the array is empty: send at least one record")
        return payload
    if isinstance(payload, dict):
        if "records" in payload:
            records = payload["records"]
            if not isinstance(records, list):
                raise IngestError(400, f"'records' must be an array of records, got {_json_type(records)}")
            if not records:
                raise IngestError(400, "records is empty: send at least one record")
            return records
        return [payload]  # one event per request (Logstash http output, format => "json")
    raise IngestError(400, f"body must be a JSON object or array, got {_json_type(payload)}")


def _json_type(value: Any) -> str:
    """A parsed JSON value's type as JSON names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def apply_aliases(item: dict[str, Any]) -> dict[str, Any]:
    """Map shipper field names onto the contract's (only where the contract's name is absent)."""
    out = dict(item)
    for target, names in ALIASES.items():
        if target in out:
            continue
        for name in names:
            value = out.get(name)
            if name == "host" and isinstance(value, dict):  # ECS: host.name
                value = value.get("name")
            if value is not None:
                out[target] = value
                break
    return out


def _format_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err.get("loc", ())) or "record"
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


@dataclass
class IngestResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_index: list[int] = field(default_factory=list)  # each row's index in the request
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    stored: int = 0
    values_rejected: int = 0  # bad values in records whose other values were stored

    @property
    def status_code(self) -> int:
        return 200 if self.rows else 422

    def body(self) -> dict[str, Any]:
        if not self.rows:
            status = "error"
        elif self.errors:
            status = "partial"
        else:
            status = "success"
        return {"status": status, "records_processed": len(self.rows),
                "records_rejected": len(self.errors) - self.values_rejected,
                "errors": self.errors, "warnings": self.warnings}


def _metric_errors(exc: ValidationError) -> set[str] | None:
    """The metrics whose values failed, when only metric values failed (else None: the record fails)."""
    bad: set[str] = set()
    for err in exc.errors(include_url=False):
        loc = err.get("loc", ())
        if not loc or loc[0] not in schema.METRICS:
            return None
        bad.add(str(loc[0]))
    return bad


def validate_items(items: list[Any], now: datetime | None = None, limits: Limits | None = None,
                   profiles: ProfileMap | None = None, trusted_sources: bool = False) -> IngestResult:
    """Validate each item with ``schema.PartialRecord``; bad ones are named by index, good ones become rows.

    A record may carry any subset of the four metrics. A bad metric value costs only itself: the
    record's other values are stored and its ``errors`` entry says which were ``kept``. ``now`` (UTC,
    naive) is the reference of the time window (default: the wall clock): records older than
    ``limits.max_age`` or more than ``limits.max_future`` ahead of it are rejected. Records for a
    (server, timestamp) already in this batch are merged into it (a warning names both). The profile is
    resolved by ``profiles`` (serving/profiles.py); ``trusted_sources``: items built by an agent format
    carry ``_profile_source`` (the label or attribute the profile came from).
    """
    limits = limits or Limits.now()
    profiles = profiles or ProfileMap()
    reference = now or pd.Timestamp.now(tz="UTC").tz_localize(None).to_pydatetime()
    latest, earliest = reference + limits.max_future, reference - limits.max_age
    shown = reference.replace(microsecond=0).isoformat()
    result = IngestResult()
    seen: dict[tuple[str, datetime], int] = {}  # (server, timestamp) -> position in result.rows
    for index, item in enumerate(items):
        if isinstance(item, _BadLine):
            result.errors.append({"index": index, "error": f"line {item.lineno}: malformed JSON: "
                                                           f"{item.message} at column {item.column}"})
            continue
        if not isinstance(item, dict):
            result.errors.append({"index": index,
                                  "error": f"record must be a JSON object, got {_json_type(item)}"})
            continue
        candidate = apply_aliases(item)
        value_error: dict[str, Any] | None = None
        try:
            record = schema.PartialRecord.model_validate(candidate)
        except ValidationError as exc:
            bad = _metric_errors(exc)
            kept = [m for m in schema.METRICS if candidate.get(m) is not None and m not in (bad or ())]
            if not bad or not kept:
                result.errors.append({"index": index, "error": _format_error(exc)})
                continue
            try:
                record = schema.PartialRecord.model_validate({k: v for k, v in candidate.items() if k not in bad})
            except ValidationError as again:  # something else failed too: the record goes
                result.errors.append({"index": index, "error": _format_error(again)})
                continue
            value_error = {"index": index, "error": _format_error(exc), "kept": kept}
        if record.timestamp > latest:
            result.errors.append({"index": index, "error": (
                f"timestamp: {record.timestamp.isoformat()} is more than {_span(limits.max_future)} in the "
                f"future (server time {shown} UTC; FLEETCAST_MAX_FUTURE_MINUTES)")})
            continue
        if record.timestamp < earliest:
            result.errors.append({"index": index, "error": (
                f"timestamp: {record.timestamp.isoformat()} is more than {_span(limits.max_age)} old "
                f"(server time {shown} UTC; FLEETCAST_MAX_RECORD_AGE_DAYS)")})
            continue
        if value_error is not None:
            result.errors.append(value_error)
            result.values_rejected += 1
        row = record.model_dump()
        sent = candidate.get(schema.PROFILE)
        sent_source = item.get(PROFILE_SOURCE_KEY) if trusted_sources else None
        profile, source, unknown = profiles.resolve(record.server_name, record.profile if sent is not None else None,
                                                    str(sent_source or SOURCE_RECORD))
        if unknown:
            result.warnings.append({"index": index, "warning": f"unknown profile "
                                    f"{_shorten(record.profile)} mapped to {profile!r}"})
        row[schema.PROFILE] = profile
        row[PROFILE_SOURCE] = source
        key = (record.server_name, record.timestamp)
        if key in seen:
            position = seen[key]
            result.warnings.append({"index": index, "warning": (
                f"same server_name and timestamp as record {result.row_index[position]}: "
                "merged, the values this later one carries kept")})
            earlier = result.rows[position]
            for m in schema.METRICS:
                if row[m] is None:
                    row[m] = earlier[m]
            result.rows[position] = row
            result.row_index[position] = index
            continue
        seen[key] = len(result.rows)
        result.rows.append(row)
        result.row_index.append(index)
    return result


def _span(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    value, unit = ((minutes / 1440, "day") if minutes >= 1440 and minutes % 1440 == 0 else
                   (minutes / 60, "hour") if minutes >= 120 and minutes % 60 == 0 else (minutes, "minute"))
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


def _shorten(text: str, limit: int = 40) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "...'"


def ingest_items(store: Any, items: list[Any], now: datetime | None = None,
                 max_records: int | None = None, limits: Limits | None = None,
                 profiles: ProfileMap | None = None, trusted_sources: bool = False) -> IngestResult:
    """Validate ``items`` and commit the valid ones to ``store`` (a :class:`serving.store.FeedStore`);
    413 for more than ``max_records`` (default: ``limits.records``, ``FLEETCAST_MAX_RECORDS``)."""
    limits = limits or Limits.now()
    limit = max_records if max_records is not None else limits.records
    if len(items) > limit:
        raise IngestError(413, f"{len(items)} records in one request; at most {limit} "
                               "(FLEETCAST_MAX_RECORDS): split the batch")
    result = validate_items(items, now=now, limits=limits, profiles=profiles, trusted_sources=trusted_sources)
    result.stored = store.upsert(result.rows)
    return result
