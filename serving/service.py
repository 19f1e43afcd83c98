"""fleetcast's BentoML service (port 8000): feed in, forecasts and alerts out.

Run it: ``bentoml serve`` from the repository root (``[tool.bentoml.build]`` in pyproject.toml names
this service), or ``bentoml serve serving.service:Fleetcast``. Routes are those of the agreed API
(docs/api.md) on a FastAPI app mounted at ``/``; BentoML's own ``/readyz``, ``/livez`` and
``/metrics`` stay available (the forecasts as Prometheus metrics are ``/metrics/forecasts``).

``workers=1`` on purpose: the forecast cache, the alert book and the demo fleet live in the worker's
memory, so a second worker would forecast and alert on its own, and answer from its own, different
batch; the feed store is on disk and shared. One worker answers GETs from pre-serialised bytes and
forecasts 1,000 servers in one batched pass, which is plenty for a fleet (see docs/operations.md).
"""

from __future__ import annotations

import bentoml
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving import ingest, model_store
from serving.runtime import Answer, ServiceRuntime, error

app = FastAPI(
    title="fleetcast",
    description="Predictive monitoring for server fleets: feed in, TFT forecasts and alerts out.",
    version="0.1.0",
)


def _respond(answer: Answer) -> Response:
    if isinstance(answer.body, bytes):
        return Response(answer.body, status_code=answer.status_code, media_type="application/json",
                        headers=answer.headers)
    return JSONResponse(answer.body, status_code=answer.status_code, headers=answer.headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _read_body(request: Request, limit: int) -> bytes | Answer:
    """The body, or a 413 as soon as it grows past ``limit`` (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return error(413, f"body of {declared} bytes is larger than {limit} bytes (FLEETCAST_MAX_BODY_BYTES)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return error(413, f"body larger than {limit} bytes (FLEETCAST_MAX_BODY_BYTES)")
        chunks.append(chunk)
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
        self.runtime = ServiceRuntime()
        self.runtime.start()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.runtime.stop()

    @app.post("/feed/data")
    async def feed_data(self, request: Request) -> Response:
        denied = self.runtime.guard(request.headers.get("authorization"), _client(request))
        limits = ingest.Limits.now()
        body = denied or await _read_body(request, limits.body_bytes)
        if isinstance(body, Answer):
            return _respond(body)
        answer = await run_in_threadpool(self.runtime.feed, body, request.headers.get("content-type"),
                                         request.headers.get("content-encoding"), limits)
        return _respond(answer)

    @app.get("/predictions")
    def predictions(self, include_history: bool = False) -> Response:
        return _respond(self.runtime.predictions(include_history))

    @app.get("/predictions/{server_name}")
    def prediction(self, server_name: str) -> Response:
        return _respond(self.runtime.prediction(server_name))

    @app.get("/alerts")
    def alerts(self) -> Response:
        return _respond(self.runtime.alerts())

    @app.get("/metrics/forecasts")
    def forecast_metrics(self, server: str | None = None, metric: str | None = None) -> Response:
        answer = self.runtime.forecast_metrics(server, metric)
        if answer.status_code != 200:
            return _respond(answer)
        return Response(answer.body, headers=answer.headers)

    @app.get("/health")
    def health(self) -> Response:
        return JSONResponse(self.runtime.health())

    @app.get("/scenario")
    def scenario(self) -> Response:
        return JSONResponse(self.runtime.scenario())

    @app.post("/scenario/set")
    async def set_scenario(self, request: Request) -> Response:
        denied = self.runtime.guard(request.headers.get("authorization"), _client(request))
        if denied is not None:
            return _respond(denied)
        try:
            payload = await request.json()
        except ValueError as exc:
            return _respond(error(400, f"malformed JSON body: {exc}"))
        return _respond(self.runtime.set_scenario(payload))
