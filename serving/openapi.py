"""What the service's OpenAPI document (``GET /openapi.json``, the Swagger UI at ``/docs``) says about each
route: request bodies and every answer, as pydantic models.

Documentation only: the routes keep reading their bodies themselves (``serving/service.py``), so they
accept exactly what docs/api.md lists (NDJSON, gzip, a bare array, one record); the schemas describe the
JSON forms. A schemathesis run against this document (tests/serving/test_live_service.py) checks that
the answers match it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from models import schema


class Problem(BaseModel):
    """An error answer: what was wrong and where."""

    detail: str


class RecordError(BaseModel):
    index: int | None = Field(description="the record's position in the request (0-based; NDJSON: non-empty "
                                          "line); null for a record built from collectd value lists")
    error: str = Field(description="`<field>: <what is wrong>`")
    kept: list[str] | None = Field(None, description="only a value was bad: the record's other metrics, stored")


class RecordWarning(BaseModel):
    index: int | None
    warning: str = Field(description="a record stored with a change (profile mapped, duplicate merged)")


class FeedResult(BaseModel):
    """The answer to POST /feed/data (200 with at least one record stored, 422 with none)."""

    status: str = Field(json_schema_extra={"enum": ["success", "partial", "error"]})
    records_processed: int = Field(description="distinct records stored (a duplicate in the batch counts once)")
    records_rejected: int
    errors: list[RecordError]
    warnings: list[RecordWarning]


class FeedRequest(BaseModel):
    """The contract's body; a bare array of records, one record, and NDJSON are accepted too."""

    model_config = ConfigDict(extra="allow")

    records: list[schema.PartialRecord] = Field(min_length=1)


class ScenarioRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenario: str = Field(json_schema_extra={"examples": ["memory_leak", "baseline"]})
    duration_hours: float | None = Field(default=None, gt=0, le=24 * 30)
    servers: list[str] | None = None


class ScenarioSet(BaseModel):
    status: str
    scenario: str
    duration_hours: float | None
    servers: list[str]


class Scenario(BaseModel):
    scenario: str
    servers: list[str]
    duration_hours: float | None
    started_at: str | None
    expires_at: str | None
    demo_fleet: bool
    available: list[str]


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str | None
    version: str | None
    run_id: str | None


class Prediction(BaseModel):
    """One server's forecast (docs/api.md has every field)."""

    model_config = ConfigDict(extra="allow")

    server_name: str
    profile: str
    current: dict[str, Any]
    predicted: dict[str, Any]
    confidence: float
    risk_level: str
    thresholds: dict[str, dict[str, float]]
    seen_in_training: bool
    history_steps: int
    forecast_source: dict[str, str] = Field(
        description="per metric, the forecast served: model, last_value, seasonal_naive or mean_24h (docs/api.md)")
    forecast: dict[str, Any]


class Predictions(BaseModel):
    predictions: list[Prediction]
    timestamp: str | None
    model: ModelInfo
    total: int | None = Field(None, description="paged answers only: how many servers match the filters")
    next_offset: int | None = Field(None, description="paged answers only: the next page's offset, null at the end")


class Alerts(BaseModel):
    alerts: list[dict[str, Any]]
    timestamp: str | None
    total: int | None = Field(None, description="paged answers only: how many alerts match the filters")
    next_offset: int | None = Field(None, description="paged answers only: the next page's offset, null at the end")


class WriteLoad(BaseModel):
    in_flight: int
    in_flight_peak: int
    in_flight_limit: int
    in_flight_limit_per_client: int
    clients_in_flight: int
    rate_limit_entries: int
    refused: dict[str, int]


class ForecastGuardStatus(BaseModel):
    enabled: bool
    servers_by_source: dict[str, dict[str, int]] | None
    skill: dict[str, float | None] | None
    servers_scored: dict[str, int] | None
    window_hours: int | None


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(json_schema_extra={"enum": ["healthy", "degraded"]})
    uptime_seconds: float
    model_loaded: bool
    predictions_served: int
    last_prediction: str | None
    last_refresh_seconds: float | None
    model: dict[str, Any]
    servers_tracked: int
    records_stored: int
    last_feed_time: str | None
    demo_fleet: bool
    error: str | None
    writes: WriteLoad
    forecast_guard: ForecastGuardStatus


def _answer(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"model": model, "description": description}


NO_MODEL = {503: _answer(Problem, "no model loaded (the service still stores the feed)")}
PAGED = {400: _answer(Problem, "a paging or filter parameter is out of range or unknown (serving/pages.py)"),
         **NO_MODEL}
WRITE_GUARD = {
    401: _answer(Problem, "a token is configured and the request lacks it"),
    403: _answer(Problem, "no token is configured and the peer is not loopback"),
    408: _answer(Problem, "the body did not arrive within FLEETCAST_BODY_TIMEOUT_SECONDS"),
    429: _answer(Problem, "over the client's rate, or no free write slot (Retry-After)"),
}
FEED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _answer(FeedResult, "at least one record stored (`status` success or partial)"),
    400: _answer(Problem, "the body cannot be read: malformed, empty, nested too deeply, wrong shape"),
    413: _answer(Problem, "body or record count over the caps"),
    415: _answer(Problem, "unsupported Content-Type or Content-Encoding"),
    422: _answer(FeedResult, "no record valid (each is named in `errors`)"),
    **WRITE_GUARD,
}
FORECAST_METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the forecasts in Prometheus' text exposition format (version 0.0.4)",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
    400: _answer(Problem, "unknown metric"),
    **NO_MODEL,
}
REMOTE_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    204: {"description": "every record built from the samples stored"},
    400: _answer(Problem, "not snappy, not a WriteRequest, or records rejected (named; the others stored)"),
    413: _answer(Problem, "body or record count over the caps"),
    415: _answer(Problem, "a Content-Encoding other than snappy"),
    **WRITE_GUARD,
}
_OTLP_BODY = {"application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
              "application/json": {"schema": {"type": "object"}}}
OTLP_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "an ExportMetricsServiceResponse (partial_success: rejected points, ignored metrics)",
          "content": _OTLP_BODY},
    400: {"description": "a google.rpc.Status: the body is not an ExportMetricsServiceRequest", "content": _OTLP_BODY},
    413: {"description": "a google.rpc.Status: body or record count over the caps", "content": _OTLP_BODY},
    415: {"description": "a google.rpc.Status: another Content-Type or Content-Encoding", "content": _OTLP_BODY},
    **WRITE_GUARD,
}
SCENARIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _answer(ScenarioSet, "scenario applied"),
    400: _answer(Problem, "malformed JSON"),
    409: _answer(Problem, "the demo fleet is off"),
    413: _answer(Problem, "body over FLEETCAST_MAX_BODY_BYTES"),
    422: _answer(Problem, "unknown scenario or server, bad duration, unknown field"),
    **WRITE_GUARD,
}


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined (a request body schema in ``openapi_extra`` is
    copied as is, so references into its own ``$defs`` would not resolve in the document)."""
    doc = model.model_json_schema()
    defs = doc.pop("$defs", {})

    def expand(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return expand(defs[ref.removeprefix("#/$defs/")])
            return {k: expand(v) for k, v in node.items()}
        if isinstance(node, list):
            return [expand(v) for v in node]
        return node

    return expand(doc)


def feed_request_body() -> dict[str, Any]:
    record = _inline(schema.PartialRecord)
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"anyOf": [
            _inline(FeedRequest),
            {"type": "array", "items": record, "minItems": 1, "title": "Records"},
            record,
        ]}},
        "application/x-ndjson": {"schema": {"type": "string", "description": "one record (JSON object) a line"}},
    }}}


def remote_write_request_body() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/x-protobuf": {"schema": {
        "type": "string", "format": "binary",
        "description": "a snappy-compressed (block format) prometheus.WriteRequest, remote write protocol 1.0"}}}}}


def otlp_request_body() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/x-protobuf": {"schema": {"type": "string", "format": "binary",
                                              "description": "an OTLP ExportMetricsServiceRequest"}},
        "application/json": {"schema": {"type": "object", "description": "an OTLP/JSON ExportMetricsServiceRequest"}},
    }}}


def scenario_request_body() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _inline(ScenarioRequest)}}}}
