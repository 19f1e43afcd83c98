"""The batch generator: a whole simulated fleet at once, with labelled incidents (the training data).

:func:`generate_fleet` builds a whole training set at once (default 20 servers x 17,280 five-minute
steps = 345,600 records): each server from :class:`models.simulator.server.ServerSim`, real shapes
laid over the profiles (:mod:`models.simulator.shapes`), then injected incidents (memory leaks, disks
filling up, CPU spikes, slow degradation) whose labels are the ground truth for alert evaluation.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models import schema
from models.simulator.server import STEP_NS, ServerSim, default_servers, finish, floor_to_step, overlay, records_frame
from models.simulator.shapes import add_shapes

INCIDENT_TYPES: tuple[str, ...] = ("memory_leak", "disk_fill", "cpu_spike", "degrading")
INCIDENT_COLUMNS: tuple[str, ...] = (schema.SERVER, schema.PROFILE, "incident_type", "start", "end")
_STEPS_PER_HOUR = schema.STEPS_PER_HOUR


@dataclass
class FleetData:
    """A simulated fleet: the records and the ground-truth incident labels.

    ``records`` has ``schema.COLUMNS`` in that order, sorted by (server_name, timestamp);
    ``incidents`` has one row per labelled incident with inclusive ``start`` and ``end``
    timestamps (the first and last record the incident affects).
    """

    records: pd.DataFrame
    incidents: pd.DataFrame


# incident durations (hours) and time constants as a fraction of the duration
_INCIDENT_HOURS = {
    "memory_leak": (4.0, 12.0),
    "disk_fill": (3.0, 10.0),
    "cpu_spike": (0.5, 3.0),
    "degrading": (6.0, 24.0),
}
_INCIDENT_TAU_FRACTION = {"memory_leak": 1 / 3, "disk_fill": 1 / 3, "degrading": 1 / 3}
_CPU_SPIKE_TAU_STEPS = 1.0


def _plan_incidents(
    rng: np.random.Generator, servers: list[tuple[str, str]], steps: int, incident_rate: float
) -> list[tuple[int, str, int, int]]:
    """[(server index, type, first step, n steps)], types dealt round-robin, never overlapping on a server.

    About one incident per server per 30 days at ``incident_rate=1``; none in a server's first day.
    """
    days = steps / schema.STEPS_PER_DAY
    n_incidents = int(round(incident_rate * len(servers) * days / 30.0))
    lo = schema.STEPS_PER_DAY if steps > 2 * schema.STEPS_PER_DAY else 0
    taken: dict[int, list[tuple[int, int]]] = {}
    plan = []
    offset = int(rng.integers(len(INCIDENT_TYPES)))
    types = [INCIDENT_TYPES[(i + offset) % len(INCIDENT_TYPES)] for i in range(n_incidents)]
    for kind in types:
        for _attempt in range(20):
            hours = rng.uniform(*_INCIDENT_HOURS[kind])
            length = max(2, int(hours * _STEPS_PER_HOUR))
            if steps - length - 1 <= lo:
                break
            server = int(rng.integers(len(servers)))
            first = int(rng.integers(lo, steps - length - 1))
            gap = 6 * _STEPS_PER_HOUR  # keep incidents on one server apart
            if any(first < e + gap and s < first + length + gap for s, e in taken.get(server, [])):
                continue
            taken.setdefault(server, []).append((first, first + length))
            plan.append((server, kind, first, length))
            break
    return plan


def _incident_ramp(kind: str, length: int) -> np.ndarray:
    k = np.arange(1, length + 1, dtype=float)
    tau = _CPU_SPIKE_TAU_STEPS if kind == "cpu_spike" else _INCIDENT_TAU_FRACTION[kind] * length
    return 1.0 - np.exp(-k / tau)


def generate_fleet(
    n_servers: int = schema.DEFAULT_SERVERS,
    steps: int = schema.DEFAULT_STEPS,
    seed: int = 42,
    start: str | pd.Timestamp = "2025-01-01",
    servers: list[tuple[str, str]] | None = None,
    incident_rate: float = 1.0,
    shape_rate: float = 1.0,
) -> FleetData:
    """Simulate a fleet: ``steps`` five-minute records per server from ``start`` (UTC), with incidents.

    ``servers`` (``[(name, profile)]``) overrides ``default_servers(n_servers)``. The same arguments
    always give the identical result. ``incident_rate`` scales the number of incidents (about one
    per server per 30 days at 1.0; 0 for none). ``shape_rate`` scales the real-shape episodes
    (:data:`REAL_SHAPES`: about one per server every 3 days at 1.0, each 2-72 h; 0 for none, the
    profiles alone); incidents are laid over them, so their labels hold.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if incident_rate < 0:
        raise ValueError("incident_rate must be >= 0")
    if shape_rate < 0:
        raise ValueError("shape_rate must be >= 0")
    servers = list(servers) if servers is not None else default_servers(n_servers)
    if not servers:
        raise ValueError("a fleet needs at least one server")
    for name, profile in servers:
        if profile not in schema.PROFILES:
            raise ValueError(f"server {name!r}: unknown profile {profile!r}")
        if not schema.is_valid_server_name(name):
            raise ValueError(f"invalid server name {name!r}")
    if len({name for name, _ in servers}) != len(servers):
        raise ValueError("server names must be unique")

    t0 = floor_to_step(start)
    ts_ns = t0.value + np.arange(steps, dtype=np.int64) * STEP_NS
    plan = _plan_incidents(np.random.default_rng([seed, 0x1C1D]), servers, steps, incident_rate)
    overlay_rng = np.random.default_rng([seed, 0x0E7])

    frames = []
    for idx, (name, profile) in enumerate(servers):
        sim = ServerSim(name, profile, seed)
        m = sim.block(ts_ns)
        if shape_rate > 0:  # own generator per server: adding a server or an incident changes no shape
            add_shapes(m, np.random.default_rng([seed, zlib.crc32(name.encode()), 0x5AA9E]), shape_rate)
        for server, kind, first, length in plan:
            if server != idx:
                continue
            sl = slice(first, first + length)
            part = {k: v[sl] for k, v in m.items()}
            overlay(kind, part, _incident_ramp(kind, length), overlay_rng)
        frames.append(records_frame(name, profile, ts_ns, finish(m, sim.p.cores)))

    records = pd.concat(frames, ignore_index=True)
    order = np.argsort(records[schema.SERVER].to_numpy(dtype=str), kind="stable")
    records = records.iloc[order].reset_index(drop=True)

    rows = [
        (
            servers[s][0],
            servers[s][1],
            kind,
            pd.Timestamp(ts_ns[first]),
            pd.Timestamp(ts_ns[first + length - 1]),
        )
        for s, kind, first, length in plan
    ]
    incidents = pd.DataFrame(rows, columns=list(INCIDENT_COLUMNS))
    incidents["start"] = pd.to_datetime(incidents["start"]).astype("datetime64[ns]")
    incidents["end"] = pd.to_datetime(incidents["end"]).astype("datetime64[ns]")
    incidents = incidents.sort_values([schema.SERVER, "start"], ignore_index=True)
    return FleetData(records=records, incidents=incidents)


