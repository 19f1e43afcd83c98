"""Optional built-in demo fleet: ``models.simulator.live.LiveFleet`` feeding the service like a shipper would.

Off by default; ``FLEETCAST_DEMO_FLEET=1`` turns it on (``make demo`` does). Its records go through
the same path as POST /feed/data (:func:`serving.ingest.ingest_items`: the same validation, the same
store). It starts with 24 h of history so forecasts exist at once, then emits one 5-minute step for
every server each ``FLEETCAST_DEMO_STEP_SECONDS`` of wall time (default 2 s: 150x faster than real
time), so a scenario change shows in forecasts and alerts within about a minute.
``FLEETCAST_DEMO_SERVERS`` (default 20) sets the fleet size.

The accelerated clock runs ahead of the wall clock, so the future-timestamp check of these records is
made against the fleet's own simulated clock (the only difference from HTTP records).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd

from models import schema
from models.simulator.live import LiveFleet
from models.simulator.server import default_servers
from serving.background import Periodic
from serving.ingest import Limits, ingest_items
from serving.settings import get_settings

logger = logging.getLogger(__name__)

def frame_to_items(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Simulator records -> wire-like dicts (ISO timestamps), as a shipper would post them."""
    out = frame[list(schema.COLUMNS)].copy()
    out[schema.TIMESTAMP] = schema.iso_many(out[schema.TIMESTAMP])
    return out.to_dict(orient="records")


class DemoFleet:
    """A LiveFleet stepping in a background thread and ingesting through the feed path."""

    def __init__(self, store: Any, servers: list[tuple[str, str]] | None = None, seed: int = 0,
                 step_seconds_: float | None = None, on_ingest: Callable[[int], None] | None = None) -> None:
        self.store = store
        settings = get_settings()
        servers = servers or default_servers(settings.demo_servers)
        self.fleet = LiveFleet(servers=servers, seed=seed, start=self._resume_at(store, servers))
        self.step_seconds = settings.demo_step_seconds if step_seconds_ is None else step_seconds_
        self.on_ingest = on_ingest
        self.steps_emitted = 0
        self._lock = threading.Lock()
        self._clock = Periodic(self.step, name="fleetcast-demo-fleet")

    @staticmethod
    def _resume_at(store: Any, servers: list[tuple[str, str]]) -> pd.Timestamp:
        """Now, or later where an earlier run's accelerated clock already wrote past now.

        Starting behind the stored records would leave those (simulated future) records as the newest
        history of every demo server, and forecasts would start from them instead of the new fleet.
        """
        now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor(schema.STEP_FREQ)
        last = store.last_timestamp([name for name, _ in servers])
        return max(now, pd.Timestamp(last)) if last is not None else now

    def _ingest(self, frame: pd.DataFrame) -> int:
        """Ingest ``frame`` in requests of at most ``FLEETCAST_MAX_RECORDS``, as a shipper would (a large
        fleet's 24 h of history is more than one request may carry)."""
        items = frame_to_items(frame)
        limit, now, stored = Limits.now().records, self.fleet.now.to_pydatetime(), 0
        for start in range(0, len(items), limit):
            result = ingest_items(self.store, items[start:start + limit], now=now, max_records=limit)
            if result.errors:
                logger.warning("demo fleet: %d records rejected, first: %s", len(result.errors), result.errors[0])
            stored += len(result.rows)
        if self.on_ingest is not None:
            self.on_ingest(stored)
        return stored

    def seed_history(self) -> int:
        """Write the fleet's 24 h of history (idempotent: upserts)."""
        with self._lock:
            return self._ingest(self.fleet.history())

    def step(self) -> int:
        """Advance the fleet 5 minutes and ingest one record per server."""
        with self._lock:
            frame = self.fleet.next_step()
            self.steps_emitted += 1
            return self._ingest(frame)

    def set_scenario(self, scenario: str, servers: list[str] | None = None,
                     duration_hours: float | None = None) -> dict[str, Any]:
        """Apply a scenario (ValueError for an unknown scenario or server); returns the active one."""
        with self._lock:
            self.fleet.set_scenario(scenario, servers=servers, duration_hours=duration_hours)
            return self.fleet.scenario

    @property
    def scenario(self) -> dict[str, Any]:
        with self._lock:
            return self.fleet.scenario

    @property
    def server_names(self) -> list[str]:
        return [name for name, _ in self.fleet.servers]

    def start(self) -> None:
        self.seed_history()
        self._clock.start(self.step_seconds)

    def stop(self) -> None:
        self._clock.stop()
