"""The live fleet: the simulator step by step, with scenarios switched on without a restart.

:class:`LiveFleet` emits the same kind of records as the batch generator, one 5-minute step at a time,
for the service's demo fleet (``serving/demo_fleet.py``); scenario overlays (``memory_leak``,
``critical``, ...; :data:`models.simulator.server.SCENARIOS`) can be switched on for chosen servers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models import schema
from models.simulator.server import (
    SCENARIOS,
    STEP_NS,
    ServerSim,
    default_servers,
    finish,
    floor_to_step,
    overlay,
    records_frame,
)

_LIVE_BLOCK = schema.STEPS_PER_DAY  # LiveFleet simulates a day ahead at a time
# live-scenario time constants (hours) of the exponential approach to the target
_SCENARIO_TAU_HOURS = {
    "degrading": 2.0,
    "critical": 0.1,
    "memory_leak": 1.0,
    "disk_fill": 1.25,
    "cpu_spike": 0.1,
}


def baseline_scenario() -> dict[str, Any]:
    """The scenario state with none active: what :attr:`LiveFleet.scenario` shows by default, and what the
    service shows when it runs no demo fleet."""
    return {"scenario": "baseline", "servers": [], "duration_hours": None, "started_at": None, "expires_at": None}


class LiveFleet:
    """The simulator step by step, for the service's live demo fleet.

    ``start`` is the fleet's current time: the timestamp of the last history record (default: now,
    UTC, floored to 5 minutes). :meth:`history` gives ``history_steps`` records per server ending
    there; each :meth:`next_step` moves the clock 5 minutes and returns one record per server.
    Scenarios (:meth:`set_scenario`) overlay the baseline of chosen servers from the current time;
    their effect starts with the next step and grows with simulated time (``memory_leak`` breaches
    95 % within about three simulated hours, ``cpu_spike`` and ``critical`` within minutes).
    """

    def __init__(
        self,
        servers: list[tuple[str, str]] | None = None,
        seed: int = 0,
        start: pd.Timestamp | None = None,
        history_steps: int = schema.ENCODER_STEPS,
    ) -> None:
        if history_steps < 1:
            raise ValueError("history_steps must be at least 1")
        self.servers = list(servers) if servers is not None else default_servers()
        for name, profile in self.servers:
            if profile not in schema.PROFILES:
                raise ValueError(f"server {name!r}: unknown profile {profile!r}")
        self._names = [name for name, _ in self.servers]
        if len(set(self._names)) != len(self._names):
            raise ValueError("server names must be unique")
        now = floor_to_step(start if start is not None else pd.Timestamp.now(tz="UTC"))
        self._sims = [ServerSim(name, profile, seed) for name, profile in self.servers]
        self._rng = np.random.default_rng([seed, 0x11FE])
        first = now.value - (history_steps - 1) * STEP_NS
        ts_ns = first + np.arange(history_steps, dtype=np.int64) * STEP_NS
        frames = []
        for sim in self._sims:
            out = finish(sim.block(ts_ns), sim.p.cores)
            frames.append(records_frame(sim.name, sim.profile, ts_ns, out))
        self._history = pd.concat(frames, ignore_index=True).sort_values(
            [schema.SERVER, schema.TIMESTAMP], ignore_index=True
        )
        self._now = int(ts_ns[-1])
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffer_ts = np.zeros(0, dtype=np.int64)
        self._pos = 0
        self._scenario: dict[str, Any] = baseline_scenario()
        self._names_arr = np.array(self._names, dtype=object)
        self._profiles_arr = np.array([profile for _, profile in self.servers], dtype=object)
        self._cores = np.array([sim.p.cores for sim in self._sims], dtype=float)
        self._order = np.argsort(self._names_arr.astype(str), kind="stable")

    @property
    def now(self) -> pd.Timestamp:
        """Timestamp of the latest record emitted (or of the last history record)."""
        return pd.Timestamp(self._now)

    def history(self) -> pd.DataFrame:
        """The initial ``history_steps`` records per server, sorted by (server_name, timestamp)."""
        return self._history.copy()

    def _refill(self) -> None:
        ts_ns = self._now + np.arange(1, _LIVE_BLOCK + 1, dtype=np.int64) * STEP_NS
        self._buffer = [sim.block(ts_ns) for sim in self._sims]
        self._buffer_ts = ts_ns
        self._pos = 0

    def _expire(self) -> None:
        sc = self._scenario
        if sc["expires_at"] is not None and self._now >= pd.Timestamp(sc["expires_at"]).value:
            self._scenario = baseline_scenario()

    def next_step(self) -> pd.DataFrame:
        """Advance 5 minutes: one record per server, with the active scenario applied."""
        if self._pos >= len(self._buffer_ts):
            self._refill()
        i = self._pos
        self._pos += 1
        self._now = int(self._buffer_ts[i])
        sc = self._scenario
        m = {k: np.array([block[k][i] for block in self._buffer]) for k in self._buffer[0]}
        if sc["scenario"] != "baseline":
            hit = np.isin(self._names_arr, sc["servers"])
            elapsed_h = (self._now - pd.Timestamp(sc["started_at"]).value) / 3.6e12
            r = np.full(int(hit.sum()), 1.0 - np.exp(-elapsed_h / _SCENARIO_TAU_HOURS[sc["scenario"]]))
            part = {k: v[hit] for k, v in m.items()}
            overlay(sc["scenario"], part, r, self._rng)
            for k, v in part.items():
                m[k][hit] = v
        out = finish(m, self._cores)
        n = len(self._sims)
        frame = pd.DataFrame(
            {
                schema.TIMESTAMP: pd.to_datetime(np.full(n, self._now, dtype=np.int64), unit="ns"),
                schema.SERVER: self._names_arr,
                **{k: out[k] for k in schema.METRICS},
                schema.STATUS: out[schema.STATUS],
                schema.PROFILE: self._profiles_arr,
            },
            columns=list(schema.COLUMNS),
        )
        self._expire()
        return frame.iloc[self._order].reset_index(drop=True)

    def set_scenario(
        self, scenario: str, servers: list[str] | None = None, duration_hours: float | None = None
    ) -> None:
        """Apply ``scenario`` to ``servers`` (default: all) for ``duration_hours`` (None: until changed).

        Raises ValueError for an unknown scenario, an unknown server or a non-positive duration.
        """
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
        targets = list(self._names) if servers is None else list(servers)
        unknown = [s for s in targets if s not in self._names]
        if unknown:
            raise ValueError(f"unknown server(s): {', '.join(map(str, unknown))}")
        if duration_hours is not None and not duration_hours > 0:
            raise ValueError("duration_hours must be positive")
        if scenario == "baseline":
            self._scenario = baseline_scenario()
            return
        started = pd.Timestamp(self._now)
        expires = started + pd.Timedelta(hours=duration_hours) if duration_hours is not None else None
        self._scenario = {
            "scenario": scenario,
            "servers": targets,
            "duration_hours": duration_hours,
            "started_at": started.isoformat(),
            "expires_at": expires.isoformat() if expires is not None else None,
        }

    @property
    def scenario(self) -> dict:
        """``{"scenario", "servers", "duration_hours", "started_at", "expires_at"}`` (times ISO 8601 UTC)."""
        return {**self._scenario, "servers": list(self._scenario["servers"])}


