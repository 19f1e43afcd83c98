"""The service's settings (``FLEETCAST_*``): write guard, body caps, demo fleet, refresh, which model.

One typed class read from the environment (pydantic-settings); :func:`get_settings` builds it anew on
each call, so the service reads the environment when a runtime starts (tests change it between
services). A malformed value (``FLEETCAST_MAX_RECORDS=lots``) stops the service at start with an error
naming the variable. State locations (``BENTOML_HOME``, ``FLEETCAST_STORE_URL``, ...) are in
``models/settings.py``; all of them are in the settings table of docs/operations.md.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings

from models import schema
from models.config import MODEL_NAME
from models.settings import CONFIG, env

DEFAULT_MODEL_TAG = f"{MODEL_NAME}:latest"


class ServiceSettings(BaseSettings):
    model_config = CONFIG

    api_token: str | None = env("FLEETCAST_API_TOKEN", None, None,
                                "when set, POST endpoints need `Authorization: Bearer <token>` (401)")
    rate_limit_per_second: float = env("FLEETCAST_RATE_LIMIT_PER_SECOND", 20.0, None,
                                       "per-client-IP token bucket refill on POST endpoints; `0` turns it off")
    rate_limit_burst: float = env("FLEETCAST_RATE_LIMIT_BURST", 60.0, None,
                                  "bucket size (requests a client may send at once); 429 + `Retry-After` "
                                  "when empty")
    max_body_bytes: int = env("FLEETCAST_MAX_BODY_BYTES", 10 * 1024 * 1024, None,
                              "POST body cap (10 MB; after gzip decompression); 413 above")
    max_records: int = env("FLEETCAST_MAX_RECORDS", 50_000, None, "records per request; 413 above")
    demo_fleet: bool = env("FLEETCAST_DEMO_FLEET", False, None,
                           "`1` starts the built-in demo fleet (`make demo` does)")
    demo_servers: int = env("FLEETCAST_DEMO_SERVERS", schema.DEFAULT_SERVERS, None, "demo fleet size")
    demo_step_seconds: float = env("FLEETCAST_DEMO_STEP_SECONDS", 2.0, None,
                                   "wall seconds per simulated 5-minute step (150x real time)")
    refresh_seconds: float = env("FLEETCAST_REFRESH_SECONDS", 5.0, None,
                                 "at most this often the background thread forecasts servers with new data")
    model_poll_seconds: float = env("FLEETCAST_MODEL_POLL_SECONDS", 30.0, None,
                                    "how often the service checks the store's tag for a newly packaged model "
                                    "(0: never)")
    model_tag: str = env("FLEETCAST_MODEL_TAG", DEFAULT_MODEL_TAG, None,
                         "model to load from BentoML's model store (and follow)")
    model_path: Path | None = env("FLEETCAST_MODEL_PATH", None, None,
                                  "serve this checkpoint file (`Forecaster.save`) instead of the store's "
                                  "model, pinned: never swapped")


def get_settings() -> ServiceSettings:
    """The service's settings as the environment says now (not cached)."""
    return ServiceSettings()
