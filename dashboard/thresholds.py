"""Alert thresholds to draw on the server detail charts.

They live in one place, ``models/alerts.yaml`` (or FLEETCAST_ALERTS_FILE), read through
``models.alerts``: the same rules the service raises its alerts with.
"""

from __future__ import annotations

import logging

from models import alerts as rules

log = logging.getLogger(__name__)


def thresholds_for(metric: str, profile: str | None) -> list[tuple[str, float]]:
    """``[(name, value), …]`` thresholds of ``metric`` for ``profile``, lowest first; [] if there is no rule."""
    try:
        found = rules.thresholds_for(metric, profile)
    except (KeyError, ValueError, OSError) as exc:
        log.warning("no thresholds for %s/%s: %s", metric, profile, exc)
        return []
    return sorted(((str(name), float(value)) for name, value in found.items()), key=lambda item: item[1])
