"""fleetcast's BentoML service (port 8000): feed in, forecasts and alerts out.

Run it: ``bentoml serve`` from the repository root (``[tool.bentoml.build]`` in pyproject.toml names
this service), or ``bentoml serve serving.service:Fleetcast``. Routes are those of the agreed API
(docs/api.md) on a FastAPI app mounted at ``/``; BentoML's own ``/readyz``, ``/livez`` and
``/metrics`` stay available (the forecasts as Prometheus metrics are ``/metrics/forecasts``).

``workers=1`` on purpose: the forecast cache, the alert book and the demo fleet live in the worker's
memory, so a second worker would forecast and alert on its own, and answer from its own, different
batch; the feed store is on disk and shared. One worker answers GETs from pre-serialised bytes and
forecasts 1,000 servers in one batched pass, which is plenty for a fleet (see docs/operations.md).

Hardening (docs/operations.md, "Security and limits"): the client is the TCP peer unless
``FLEETCAST_TRUSTED_PROXIES`` names the proxy (uvicorn's ``FORWARDED_ALLOW_IPS`` is set from it in the
worker); without a token, writes come from loopback only; each POST takes a write slot before its body
is read and must deliver the body within ``FLEETCAST_BODY_TIMEOUT_SECONDS``, so slow uploads cannot take
the request slots reads need; the worker ends with its parent (``serving/process.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import bentoml
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from serving import ingest, model_store, openapi, pages, process, security
from serving.runtime import Answer, ServiceRuntime, error

logger = logging.getLogger(__name__)

if bentoml.server_context.worker_index is not None:
    # In a BentoML worker, before BentoML builds its uvicorn.Config (after it imported this module):
    # uvicorn believes X-Forwarded-For from FORWARDED_ALLOW_IPS, by default from loopback, which would
    # let anything on this host choose its client address (rate limit, loopback-only writes). Only
    # FLEETCAST_TRUSTED_PROXIES may be believed; none by default (serving/security.py).
    os.environ.update(FORWARDED_ALLOW_IPS=security.forwarded_allow_ips())

app = FastAPI(
    title="fleetcast",
    description="Predictive monitoring for server fleets: feed in, TFT forecasts and alerts out.",
    version="0.1.0",
)


def _respond(answer: Answer) -> Response:
    if answer.status_code == 204:
        return Response(status_code=204, headers=answer.headers)
    if isinstance(answer.body, bytes):
        return Response(answer.body, status_code=answer.status_code, media_type="application/json",
                        headers=answer.headers)
    return JSONResponse(answer.body, status_code=answer.status_code, headers=answer.headers)


def _client(request: Request) -> str:
    """The peer's address: the TCP peer, or the client a trusted proxy names (uvicorn decides, see above)."""
    return request.client.host if request.client else "unknown"


async def _read_body(request: Request, limit: int, timeout: float) -> bytes | Answer:
    """The body; a 413 as soon as it grows past ``limit`` (before reading it all); a 408 when it has not
    arrived within ``timeout`` seconds (a slow or stuck upload holds its write slot no longer)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return error(413, f"declared Content-Length is larger than {limit} bytes (FLEETCAST_MAX_BODY_BYTES)")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return error(413, f"body larger than {limit} bytes (FLEETCAST_MAX_BODY_BYTES)")
                chunks.append(chunk)
    except TimeoutError:
        return error(408, f"the request body did not arrive within {timeout:g} s "
                          "(FLEETCAST_BODY_TIMEOUT_SECONDS): send it at once, or in smaller batches",
                     {"Connection": "close"})
    except ClientDisconnect:
        return error(400, "the client disconnected before the body was complete")
    return b"".join(chunks)


@bentoml.service(
    name="fleetcast",
    http={"port": 8000},
    workers=1,  # in-memory forecast cache, alert book and demo fleet are per worker (see module doc)
    traffic={"timeout": 60, "max_concurrency": 256},
    resources={"cpu": "2"},
)
@bentoml.asgi_app(app, path="/")
class Fleetcast:
    """Loads the model (``fleetcast-tft:latest`` from BentoML's model store), starts the refresh, and follows
    the tag to each newly packaged champion (``serving/runtime.py``)."""

    # The model served, declared so that `bentoml build` records it in the Bento (and `containerize`
    # copies it in). Declared only when the store holds it: `bentoml serve` resolves declared models
    # before it starts, and the service must also start without one (degraded until the pipeline
    # packages a champion, which the runtime then picks up without a restart).
    if model_store.has_model():
        model = bentoml.models.BentoModel(model_store.model_tag())

    def __init__(self) -> None:
        if bentoml.server_context.worker_index is not None:
            process.exit_with_parent()  # no orphan worker after a kill -9 of `bentoml serve` (serving/process.py)
        self.runtime = ServiceRuntime()
        self.runtime.start()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.runtime.stop()

    async def _write(self, request: Request, handle: Callable[[bytes], Answer], body_bytes: int) -> Response:
        """The write path shared by the POST routes: guard (token, loopback, rate), a write slot taken
        before the body is read (429 at once without one), the body read under its size cap (``body_bytes``)
        and timeout, then ``handle(body)`` in a worker thread, which gives the slot back when it ends.

        A request the service answers 504 (60 s, BentoML's traffic timeout) is not cancelled in that
        thread: its batch may still be committed (docs/api.md; upserts make the retry safe).
        """
        client = _client(request)
        denied = self.runtime.guard(request.headers.get("authorization"), client) or \
            self.runtime.take_write_slot(client)
        if denied is not None:
            return _respond(denied)
        handed_over = False
        try:
            body = await _read_body(request, body_bytes, self.runtime.settings.body_timeout_seconds)
            if isinstance(body, Answer):
                if body.status_code == 408:
                    self.runtime.count_refusal("body_timeout")
                return _respond(body)

            def work() -> Answer:
                try:
                    return handle(body)
                finally:
                    self.runtime.release_write_slot(client)

            handed_over = True
            return _respond(await run_in_threadpool(work))
        finally:
            if not handed_over:
                self.runtime.release_write_slot(client)

    @app.post("/feed/data", openapi_extra=openapi.feed_request_body(), responses=openapi.FEED_RESPONSES,
              summary="Ingest fleet records")
    async def feed_data(self, request: Request) -> Response:
        limits = ingest.Limits.now()
        content_type, encoding = request.headers.get("content-type"), request.headers.get("content-encoding")
        return await self._write(request, lambda body: self.runtime.feed(body, content_type, encoding, limits),
                                 limits.body_bytes)

    @app.post("/api/v1/write", summary="Prometheus remote write (protocol 1.0)",
              openapi_extra=openapi.remote_write_request_body(), responses=openapi.REMOTE_WRITE_RESPONSES)
    async def remote_write(self, request: Request) -> Response:
        # the agent routes use the caps as read at start: building the settings per request costs
        # milliseconds, too much at remote write's request rate (/feed/data reads them per request)
        limits = self.runtime.agent_limits
        encoding = request.headers.get("content-encoding")
        return await self._write(request, lambda body: self.runtime.remote_write(body, encoding, limits),
                                 limits.body_bytes)

    @app.post("/v1/metrics", summary="OTLP/HTTP metrics (protobuf or JSON)",
              openapi_extra=openapi.otlp_request_body(), responses=openapi.OTLP_RESPONSES)
    async def otlp_metrics(self, request: Request) -> Response:
        limits = self.runtime.agent_limits
        content_type, encoding = request.headers.get("content-type"), request.headers.get("content-encoding")
        return await self._write(request, lambda body: self.runtime.otlp(body, content_type, encoding, limits),
                                 limits.body_bytes)

    @app.get("/predictions", responses={200: {"model": openapi.Predictions}, **openapi.PAGED})
    def predictions(self, include_history: bool = False, limit: int | None = None, offset: int | None = None,
                    risk_level: str | None = None, profile: str | None = None,
                    server: str | None = None) -> Response:
        try:
            query = pages.Query.parse(limit, offset, risk_level, profile, server)
        except ValueError as exc:
            return _respond(error(400, str(exc)))
        return _respond(self.runtime.predictions(include_history, query))

    @app.get("/predictions/{server_name}", responses={
        200: {"model": openapi.Prediction, "description": "one server's forecast, with history"},
        404: {"model": openapi.Problem, "description": "no forecast for that server (a name with a line break "
              "is not routed at all: the router's plain-text 404)",
              "content": {"text/plain": {"schema": {"type": "string"}}}}, **openapi.NO_MODEL})
    def prediction(self, server_name: str) -> Response:
        return _respond(self.runtime.prediction(server_name))

    @app.get("/alerts", responses={200: {"model": openapi.Alerts}, **openapi.PAGED})
    def alerts(self, limit: int | None = None, offset: int | None = None, severity: str | None = None,
               profile: str | None = None, server: str | None = None) -> Response:
        try:
            query = pages.Query.parse(limit, offset, severity, profile, server, level_name="severity")
        except ValueError as exc:
            return _respond(error(400, str(exc)))
        return _respond(self.runtime.alerts(query))

    @app.get("/metrics/forecasts", responses=openapi.FORECAST_METRICS_RESPONSES)
    def forecast_metrics(self, server: str | None = None, metric: str | None = None) -> Response:
        answer = self.runtime.forecast_metrics(server, metric)
        if answer.status_code != 200:
            return _respond(answer)
        return Response(answer.body, headers=answer.headers)

    @app.get("/health", responses={200: {"model": openapi.Health}})
    def health(self) -> Response:
        return JSONResponse(self.runtime.health())

    @app.get("/scenario", responses={200: {"model": openapi.Scenario}})
    def scenario(self) -> Response:
        return JSONResponse(self.runtime.scenario())

    @app.post("/scenario/set", openapi_extra=openapi.scenario_request_body(), responses=openapi.SCENARIO_RESPONSES,
              summary="Set the demo fleet's scenario")
    async def set_scenario(self, request: Request) -> Response:
        return await self._write(request, self._set_scenario, ingest.Limits.now().body_bytes)

    def _set_scenario(self, body: bytes) -> Answer:
        try:
            payload = ingest.loads(body.decode("utf-8-sig"))
        except ingest.IngestError as exc:
            return error(exc.status_code, exc.detail)
        except UnicodeDecodeError as exc:
            return error(400, f"body is not UTF-8 text (byte {exc.start})")
        except ValueError as exc:  # json.JSONDecodeError
            return error(400, f"malformed JSON: {getattr(exc, 'msg', 'invalid')}")
        return self.runtime.set_scenario(payload)
