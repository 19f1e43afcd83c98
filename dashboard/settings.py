"""The dashboard's settings: which service it reads, its token, how often it refreshes.

One typed class read from the environment (pydantic-settings), built anew by :func:`get_settings` on
each call. A refresh period or timeout that is not a positive number is ignored with a warning (the
default is used), so a typo never takes the dashboard down. All settings: the table in
docs/operations.md.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import field_validator
from pydantic_settings import BaseSettings

from models.settings import CONFIG, env

log = logging.getLogger(__name__)

DEFAULT_REFRESH_SECONDS = 30.0
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_SERVERS = 500


class DashboardSettings(BaseSettings):
    model_config = CONFIG

    api_url: str = env("FLEETCAST_API_URL", "http://localhost:8000", None,
                       "the service the dashboard reads (its only data source)")
    api_token: str | None = env("FLEETCAST_API_TOKEN", None, None,
                                "bearer token the dashboard sends with `POST /scenario/set` when the service "
                                "requires one")
    refresh_seconds: float = env("FLEETCAST_DASHBOARD_REFRESH_SECONDS", DEFAULT_REFRESH_SECONDS, None,
                                 "auto-refresh period of the dashboard, seconds (the service's own forecast "
                                 "refresh is `FLEETCAST_REFRESH_SECONDS`); not a positive number: ignored")
    api_timeout: float = env("FLEETCAST_API_TIMEOUT", DEFAULT_TIMEOUT_SECONDS, None,
                             "seconds the dashboard waits for an answer (connecting: at most 5 s); not a "
                             "positive number: ignored")

    max_servers: int = env("FLEETCAST_DASHBOARD_MAX_SERVERS", DEFAULT_MAX_SERVERS, None,
                           "the dashboard shows at most this many servers, the riskiest first (a page of "
                           "`GET /predictions`; the search box finds the others); not a positive number: ignored")

    @field_validator("api_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("refresh_seconds", "api_timeout", "max_servers", mode="wrap")
    @classmethod
    def _positive_or_default(cls, value: Any, handler: Any, info: Any) -> float:
        field = cls.model_fields[info.field_name]
        default = field.default
        try:
            number = float(handler(value))
        except ValueError:
            log.warning("ignoring %s=%r: not a number", field.validation_alias, value)
            return default
        if number <= 0:
            log.warning("ignoring %s=%r: not positive", field.validation_alias, value)
            return default
        return int(number) if field.annotation is int else number


def get_settings() -> DashboardSettings:
    """The dashboard's settings as the environment says now (not cached)."""
    return DashboardSettings()
