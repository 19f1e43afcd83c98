"""The service's settings (``FLEETCAST_*``): write guard, body caps, record time window, demo fleet,
refresh, which model, alert delivery.

One typed class read from the environment (pydantic-settings); :func:`get_settings` builds it anew on
each call, so the service reads the environment when a runtime starts (tests change it between
services). A malformed value (``FLEETCAST_MAX_RECORDS=lots``) stops the service at start with an error
naming the variable. State locations (``BENTOML_HOME``, ``FLEETCAST_STORE_URL``, ...) are in
``models/settings.py``; all of them are in the settings table of docs/operations.md.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings

from models import schema
from models.config import MODEL_NAME
from models.settings import CONFIG, env

DEFAULT_MODEL_TAG = f"{MODEL_NAME}:latest"


class ServiceSettings(BaseSettings):
    model_config = CONFIG

    api_token: str | None = env("FLEETCAST_API_TOKEN", None, None,
                                "when set, POST endpoints need `Authorization: Bearer <token>` (401)")
    allow_anonymous_writes: bool = env("FLEETCAST_ALLOW_ANONYMOUS_WRITES", False, None,
                                       "without a token, POST endpoints answer 403 to peers that are not "
                                       "loopback; `1` opens them to every peer (a trusted network only)")
    trusted_proxies: str | None = env("FLEETCAST_TRUSTED_PROXIES", None, None,
                                      "comma-separated addresses or CIDRs of reverse proxies whose "
                                      "`X-Forwarded-For` names the client; unset: the TCP peer is the client, "
                                      "the header is ignored")
    rate_limit_per_second: float = env("FLEETCAST_RATE_LIMIT_PER_SECOND", 20.0, None,
                                       "average POSTs per second per client address: at most `BURST` per "
                                       "window of `BURST / PER_SECOND` s (sliding window, at least 1 s); `0` "
                                       "turns the limit off")
    rate_limit_burst: float = env("FLEETCAST_RATE_LIMIT_BURST", 60.0, None,
                                  "requests a client may send at once; 429 + `Retry-After` beyond")
    max_writes_in_flight: PositiveInt = env("FLEETCAST_MAX_WRITES_IN_FLIGHT", 64, None,
                                            "POSTs being received or ingested at once, all clients together; "
                                            "429 at once (before the body is read) beyond, so reads keep "
                                            "BentoML's other request slots")
    max_writes_in_flight_per_client: PositiveInt = env("FLEETCAST_MAX_WRITES_IN_FLIGHT_PER_CLIENT", 4, None,
                                                       "the same, per client address")
    body_timeout_seconds: PositiveFloat = env("FLEETCAST_BODY_TIMEOUT_SECONDS", 20.0, None,
                                              "a POST body must arrive within this many seconds (408 "
                                              "otherwise); keep it under the 60 s request timeout")
    max_body_bytes: int = env("FLEETCAST_MAX_BODY_BYTES", 10 * 1024 * 1024, None,
                              "POST body cap (10 MB; after gzip decompression); 413 above")
    max_records: int = env("FLEETCAST_MAX_RECORDS", 50_000, None, "records per request; 413 above")
    max_record_age_days: PositiveFloat = env("FLEETCAST_MAX_RECORD_AGE_DAYS", 400.0, None,
                                             "records older than this (by the server clock) are rejected "
                                             "per record")
    max_future_minutes: PositiveFloat = env("FLEETCAST_MAX_FUTURE_MINUTES", 10.0, None,
                                            "records further ahead of the server clock are rejected per record")
    profiles_file: Path | None = env("FLEETCAST_PROFILES_FILE", None, None,
                                     "YAML mapping of server-name patterns to profiles (`db-*: database`), first "
                                     "match wins; used by every ingest path for records that send no known "
                                     "profile (serving/profiles.py)")
    remote_write_server_label: str = env("FLEETCAST_REMOTE_WRITE_SERVER_LABEL", "instance", None,
                                         "`POST /api/v1/write`: the label that names the server (its `:port` "
                                         "suffix is dropped)")
    remote_write_profile_label: str = env("FLEETCAST_REMOTE_WRITE_PROFILE_LABEL", "fleetcast_profile", None,
                                          "`POST /api/v1/write`: the label that carries the profile")
    remote_write_root_mount: str = env("FLEETCAST_REMOTE_WRITE_ROOT_MOUNT", "/", None,
                                       "the `mountpoint` whose `node_filesystem_*` series give `disk_percent` "
                                       "(remote write; also collectd's df instance, `/` is `root`)")
    demo_fleet: bool = env("FLEETCAST_DEMO_FLEET", False, None,
                           "`1` starts the built-in demo fleet (`make demo` does)")
    demo_servers: int = env("FLEETCAST_DEMO_SERVERS", schema.DEFAULT_SERVERS, None, "demo fleet size")
    demo_step_seconds: float = env("FLEETCAST_DEMO_STEP_SECONDS", 2.0, None,
                                   "wall seconds per simulated 5-minute step (150x real time)")
    refresh_seconds: float = env("FLEETCAST_REFRESH_SECONDS", 5.0, None,
                                 "at most this often the background thread forecasts servers with new data")
    guard: bool = env("FLEETCAST_GUARD", True, None,
                      "`0` always serves the model; by default each server's metric gets the model's forecast or a "
                      "naive fallback (the naive ensemble, or a baseline clearly better), whichever scored better on "
                      "its last 24 h (docs/api.md, `forecast_source`)")
    guard_backtest_origins: int = env("FLEETCAST_GUARD_BACKTEST_ORIGINS", 4, None,
                                      "a new server's model is backtested at this many origins of its own history "
                                      "(0 to 4; 0: it gets the model until live forecasts are scored)")
    model_poll_seconds: float = env("FLEETCAST_MODEL_POLL_SECONDS", 30.0, None,
                                    "how often the service checks the store's tag for a newly packaged model "
                                    "(0: never)")
    model_tag: str = env("FLEETCAST_MODEL_TAG", DEFAULT_MODEL_TAG, None,
                         "model to load from BentoML's model store (and follow)")
    model_path: Path | None = env("FLEETCAST_MODEL_PATH", None, None,
                                  "serve this checkpoint file (`Forecaster.save`) instead of the store's "
                                  "model, pinned: never swapped")
    external_url: str = env("FLEETCAST_EXTERNAL_URL", "http://localhost:8000", None,
                            "the service's URL as its users reach it; each alert's `generatorURL` is "
                            "`<this>/predictions/<server>`")
    alertmanager_url: str | None = env("FLEETCAST_ALERTMANAGER_URL", None, None,
                                       "Alertmanager base URL(s), comma-separated (each gets every alert); "
                                       "alerts are POSTed to `<url>/api/v2/alerts`")
    alert_webhook_url: str | None = env("FLEETCAST_ALERT_WEBHOOK_URL", None, None,
                                        "URL(s), comma-separated, that get a JSON POST (Alertmanager's webhook "
                                        "shape) when alerts open or resolve")
    alert_resend_seconds: float = env("FLEETCAST_ALERT_RESEND_SECONDS", 60.0, None,
                                      "firing alerts are re-sent to Alertmanager this often, with `endsAt` 4x "
                                      "this ahead (Prometheus' `--rules.alert.resend-delay`)")
    alert_queue_size: int = env("FLEETCAST_ALERT_QUEUE_SIZE", 10_000, None,
                                "pending notifications per target; when full the oldest firing ones are "
                                "dropped (re-sent with the next resend), resolves never")
    alert_timeout_seconds: float = env("FLEETCAST_ALERT_TIMEOUT_SECONDS", 10.0, None,
                                       "HTTP timeout of one delivery request")
    alert_retry_max_seconds: float = env("FLEETCAST_ALERT_RETRY_MAX_SECONDS", 60.0, None,
                                         "longest wait between retries to a failing target (1 s, doubling)")


def get_settings() -> ServiceSettings:
    """The service's settings as the environment says now (not cached)."""
    return ServiceSettings()
