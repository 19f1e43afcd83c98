"""Vectorised fleet simulator: realistic per-profile server metrics with labelled incidents.

Two entry points share one model of a server:

* :func:`generate_fleet` builds a whole training set at once (default 20 servers x 17,280
  five-minute steps = 345,600 records) and injects labelled incidents (memory leaks, disks
  filling up, CPU spikes, slow degradation) whose labels are the ground truth for alert evaluation.
* :class:`LiveFleet` emits the same kind of records step by step for the demo fleet of the
  service, with scenario overlays (``memory_leak``, ``critical``, ...) that can be switched on for
  chosen servers without a restart.

Each server is simulated in blocks of steps with numpy (no Python loop over rows). What a block
needs from the previous one (noise states, disk fill level, a running ML job, a decaying burst) is
carried in :class:`_ServerSim`, so a server continues seamlessly from block to block.

How the profiles behave (CPU unless stated):

==============  ===================================================================================
web_api         strong daily cycle (peak ~14:00 UTC, trough ~02:00) and weekly cycle (quiet weekends);
                memory follows the daily cycle a little; logs fill the disk, rotated periodically
database        moderate steady load, nightly batch spike 01:00-03:00; steady high memory (buffer pool);
                disk grows with the data and is archived rarely
ml_compute      long jobs (hours) at high CPU and memory, idle gaps between them
data_ingest     bursty: random bursts that decay over tens of minutes on a mild daily cycle;
                fast disk growth with frequent clean-ups
risk_analytics  end-of-day peak on weekdays (16:30-20:00), a small morning bump, quiet weekends
conductor_mgmt  low, steady load
generic         a mild mixture: small daily cycle and occasional small bursts
==============  ===================================================================================

All profiles: ``load_average`` follows CPU scaled by the server's core count, memory drifts
slowly, disk grows and is cleaned up (a saw-tooth). :func:`generate_fleet` also lays real shapes over
the profiles (``shape_rate``; :data:`REAL_SHAPES`: idle plateaus, rare spikes, level shifts, drifts,
quiet periods, constant companion metrics), then the incidents. ``status`` is derived from the metrics:
``warning`` when any percentage is above 85, ``critical`` above 95.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from models import schema

__all__ = [
    "CRITICAL_PERCENT",
    "INCIDENT_COLUMNS",
    "INCIDENT_TYPES",
    "SCENARIOS",
    "WARNING_PERCENT",
    "FleetData",
    "LiveFleet",
    "default_servers",
    "generate_fleet",
    "status_from_metrics",
]

WARNING_PERCENT = 85.0
CRITICAL_PERCENT = 95.0

SCENARIOS: tuple[str, ...] = ("baseline", "degrading", "critical", "memory_leak", "disk_fill", "cpu_spike")
INCIDENT_TYPES: tuple[str, ...] = ("memory_leak", "disk_fill", "cpu_spike", "degrading")
INCIDENT_COLUMNS: tuple[str, ...] = (schema.SERVER, schema.PROFILE, "incident_type", "start", "end")

# server-name prefixes, in the order default_servers deals them out
_PREFIXES: dict[str, str] = {
    "web_api": "web",
    "database": "db",
    "ml_compute": "ml",
    "data_ingest": "ingest",
    "risk_analytics": "risk",
    "conductor_mgmt": "conductor",
    "generic": "gen",
}
assert set(_PREFIXES) == set(schema.PROFILES), "every profile needs a server-name prefix"

_NS_PER_DAY = 86_400 * 10**9
_STEP_NS = schema.STEP_MINUTES * 60 * 10**9
_STEPS_PER_HOUR = schema.STEPS_PER_HOUR
_LIVE_BLOCK = schema.STEPS_PER_DAY  # LiveFleet simulates a day ahead at a time


@dataclass
class FleetData:
    """A simulated fleet: the records and the ground-truth incident labels.

    ``records`` has ``schema.COLUMNS`` in that order, sorted by (server_name, timestamp);
    ``incidents`` has one row per labelled incident with inclusive ``start`` and ``end``
    timestamps (the first and last record the incident affects).
    """

    records: pd.DataFrame
    incidents: pd.DataFrame


def default_servers(n_servers: int = schema.DEFAULT_SERVERS) -> list[tuple[str, str]]:
    """``[(server_name, profile)]`` dealt round-robin over all profiles: web-01, db-01, ml-01, ...

    Any ``n_servers >= len(schema.PROFILES)`` covers every profile.
    """
    if n_servers < 1:
        raise ValueError("n_servers must be at least 1")
    profiles = list(_PREFIXES)
    counts: dict[str, int] = {}
    servers = []
    for i in range(n_servers):
        profile = profiles[i % len(profiles)]
        counts[profile] = counts.get(profile, 0) + 1
        servers.append((f"{_PREFIXES[profile]}-{counts[profile]:02d}", profile))
    return servers


def status_from_metrics(cpu: np.ndarray, memory: np.ndarray, disk: np.ndarray) -> np.ndarray:
    """``healthy`` / ``warning`` (any percentage > 85) / ``critical`` (any > 95), element-wise."""
    worst = np.maximum(np.maximum(cpu, memory), disk)
    return np.where(
        worst > CRITICAL_PERCENT,
        schema.STATUSES[2],
        np.where(worst > WARNING_PERCENT, schema.STATUSES[1], schema.STATUSES[0]),
    ).astype(object)


# --- one server --------------------------------------------------------------------------------------


def _ar1(rng: np.random.Generator, n: int, phi: float, std: float, state: float) -> tuple[np.ndarray, float]:
    """AR(1) noise with stationary standard deviation ``std``, continuing from ``state``."""
    innov = rng.normal(0.0, std * np.sqrt(1.0 - phi * phi), n)
    out, zf = lfilter([1.0], [1.0, -phi], innov, zi=[phi * state])
    return out, float(out[-1]) if n else state


def _bell(hour: np.ndarray, peak: float, width: float) -> np.ndarray:
    """A smooth daily bump in [0, 1] centred on ``peak`` (hours), wrapping round midnight."""
    d = (hour - peak + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def _window(hour: np.ndarray, start: float, end: float, ramp: float = 0.5) -> np.ndarray:
    """~1 inside [start, end) hours with ``ramp``-hour soft edges, 0 outside."""
    up = np.clip((hour - start) / ramp + 0.5, 0.0, 1.0)
    down = np.clip((end - hour) / ramp + 0.5, 0.0, 1.0)
    return np.minimum(up, down)


@dataclass
class _Params:
    cores: int
    cpu_base: float
    mem_base: float
    disk_low: float
    disk_high: float
    disk_per_day: float  # growth in percentage points per day
    cpu_noise: float
    mem_drift: float
    amp: float  # profile-specific amplitude scale (per server jitter)
    phase: float  # hours of shift of the daily pattern


_CORES = {
    "web_api": (4, 8),
    "database": (16, 32),
    "ml_compute": (32, 64),
    "data_ingest": (8, 16),
    "risk_analytics": (16, 32),
    "conductor_mgmt": (2, 4),
    "generic": (4, 8),
}
# cpu base, memory base, disk low, disk high, disk growth/day, cpu noise std, memory drift std
_LEVELS = {
    "web_api": (18.0, 45.0, 30.0, 70.0, 1.2, 2.5, 2.0),
    "database": (22.0, 72.0, 45.0, 78.0, 0.5, 2.0, 1.0),
    "ml_compute": (8.0, 30.0, 35.0, 80.0, 2.0, 2.0, 1.5),
    "data_ingest": (14.0, 40.0, 25.0, 80.0, 3.0, 2.5, 2.0),
    "risk_analytics": (12.0, 38.0, 30.0, 65.0, 0.8, 2.0, 1.5),
    "conductor_mgmt": (7.0, 28.0, 20.0, 40.0, 0.2, 1.0, 0.8),
    "generic": (18.0, 50.0, 35.0, 70.0, 0.7, 2.0, 1.5),
}


@dataclass
class _ServerSim:
    """The behaviour of one server, simulated block by block with carried state."""

    name: str
    profile: str
    seed: int
    rng: np.random.Generator = field(init=False)
    p: _Params = field(init=False)
    cpu_state: float = 0.0
    mem_state: float = 0.0
    load_state: float = 0.0
    burst_state: float = 0.0
    disk_cum: float = 0.0
    job_on: bool = False
    job_left: int = 0

    def __post_init__(self) -> None:
        # seeded by (seed, name): adding a server does not change the others
        self.rng = np.random.default_rng([self.seed, zlib.crc32(self.name.encode())])
        rng = self.rng
        cpu_base, mem_base, d_low, d_high, d_rate, cpu_noise, mem_drift = _LEVELS[self.profile]
        self.p = _Params(
            cores=int(rng.choice(_CORES[self.profile])),
            cpu_base=cpu_base * rng.uniform(0.85, 1.15),
            mem_base=mem_base * rng.uniform(0.9, 1.1),
            disk_low=d_low * rng.uniform(0.9, 1.1),
            disk_high=d_high * rng.uniform(0.95, 1.05),
            disk_per_day=d_rate * rng.uniform(0.7, 1.3),
            cpu_noise=cpu_noise,
            mem_drift=mem_drift,
            amp=rng.uniform(0.85, 1.15),
            phase=rng.uniform(-0.75, 0.75),
        )
        self.mem_state = float(rng.normal(0.0, self.p.mem_drift))
        self.disk_cum = float(rng.uniform(0.0, self.p.disk_high - self.p.disk_low))
        self.job_left = int(rng.integers(1, 6 * _STEPS_PER_HOUR))

    # -- profile-specific building blocks --

    def _jobs(self, n: int) -> np.ndarray:
        """ML jobs: alternating on (2-10 h) / off (1-6 h) phases as a 0/1 array, state carried."""
        rng = self.rng
        parts: list[np.ndarray] = []
        filled = 0
        on, left = self.job_on, self.job_left
        while filled < n:
            take = min(left, n - filled)
            parts.append(np.full(take, 1.0 if on else 0.0))
            filled += take
            left -= take
            if left == 0:
                on = not on
                hours = rng.uniform(2.0, 10.0) if on else rng.uniform(1.0, 6.0)
                left = max(1, int(hours * _STEPS_PER_HOUR))
        self.job_on, self.job_left = on, left
        x = np.concatenate(parts) if parts else np.zeros(0)
        # ramp a job up/down over ~15 minutes rather than a hard step
        return lfilter([0.35], [1.0, -0.65], x)

    def _bursts(self, n: int, per_hour: float, amp: tuple[float, float], decay_steps: float) -> np.ndarray:
        """Random bursts (Poisson arrivals) that decay exponentially, state carried."""
        rng = self.rng
        impulses = np.zeros(n)
        hits = rng.random(n) < per_hour / _STEPS_PER_HOUR
        impulses[hits] = rng.uniform(amp[0], amp[1], int(hits.sum()))
        phi = np.exp(-1.0 / decay_steps)
        out, _ = lfilter([1.0], [1.0, -phi], impulses, zi=[phi * self.burst_state])
        if n:
            self.burst_state = float(out[-1])
        return out

    def block(self, ts_ns: np.ndarray) -> dict[str, np.ndarray]:
        """Baseline metrics (no incidents) for the timestamps ``ts_ns`` (int64 ns, consecutive steps).

        Returns cpu, memory, disk and ``load_factor`` (load per fully busy core, ~1) before clipping.
        """
        n = len(ts_ns)
        rng, p = self.rng, self.p
        hour = (ts_ns % _NS_PER_DAY) / 3.6e12 - p.phase
        day = ts_ns // _NS_PER_DAY
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        weekend = weekday >= 5
        day_of_block = day - day.min() if n else day

        noise, self.cpu_state = _ar1(rng, n, 0.9, p.cpu_noise, self.cpu_state)
        noise = noise + rng.normal(0.0, 0.6, n)
        drift, self.mem_state = _ar1(rng, n, 0.9995, p.mem_drift, self.mem_state)
        mem_noise = rng.normal(0.0, 0.4, n)
        a = p.amp

        prof = self.profile
        if prof == "web_api":
            daily = _bell(hour, 14.0, 4.0) + 0.35 * _bell(hour, 9.5, 1.5)
            weekly = np.where(weekend, 0.55, 1.0)
            cpu = p.cpu_base + 42.0 * a * daily * weekly
            mem = p.mem_base + 12.0 * daily * weekly
        elif prof == "database":
            per_day = rng.uniform(0.8, 1.2, int(day_of_block.max()) + 1 if n else 0)
            batch = _window(hour, 1.0, 3.0, 0.4) * per_day[day_of_block] if n else np.zeros(0)
            cpu = p.cpu_base + 8.0 * _bell(hour, 13.0, 4.0) + 45.0 * a * batch
            mem = p.mem_base + 3.0 * batch
        elif prof == "ml_compute":
            jobs = self._jobs(n)
            cpu = p.cpu_base + 66.0 * a * jobs
            mem = p.mem_base + 32.0 * jobs
        elif prof == "data_ingest":
            bursts = self._bursts(n, 0.6, (15.0, 35.0), 6.0)
            cpu = p.cpu_base + 8.0 * _bell(hour, 12.0, 5.0) + a * bursts
            mem = p.mem_base + 0.25 * bursts
        elif prof == "risk_analytics":
            weekday_on = np.where(weekend, 0.1, 1.0)
            eod = _window(hour, 16.5, 20.0, 1.0)
            morning = _bell(hour, 8.5, 0.7)
            cpu = p.cpu_base + (55.0 * a * eod + 14.0 * morning) * weekday_on
            mem = p.mem_base + 22.0 * eod * weekday_on
        elif prof == "conductor_mgmt":
            cpu = p.cpu_base + 1.5 * _bell(hour, 12.0, 6.0)
            mem = p.mem_base + np.zeros(n)
            noise = noise * 0.6
        else:  # generic
            bursts = self._bursts(n, 0.15, (5.0, 15.0), 4.0)
            daily = _bell(hour, 13.0, 4.5)
            cpu = p.cpu_base + 14.0 * a * daily * np.where(weekend, 0.8, 1.0) + bursts
            mem = p.mem_base + 5.0 * daily

        cpu = cpu + noise
        mem = mem + drift + mem_noise + 0.03 * (cpu - p.cpu_base)

        # disk: steady growth (+ noise) that is cleaned back to disk_low when it reaches disk_high
        span = p.disk_high - p.disk_low
        growth = np.abs(rng.normal(p.disk_per_day / schema.STEPS_PER_DAY, 0.002, n))
        cum = self.disk_cum + np.cumsum(growth)
        if n:
            self.disk_cum = float(cum[-1] % span)
        disk = p.disk_low + cum % span + rng.normal(0.0, 0.05, n)

        load_noise, self.load_state = _ar1(rng, n, 0.8, 0.08, self.load_state)
        load_factor = 1.0 + load_noise
        return {"cpu": cpu, "memory": mem, "disk": disk, "load_factor": load_factor}


# --- incidents and scenarios -------------------------------------------------------------------------

# live-scenario time constants (hours) of the exponential approach to the target
_SCENARIO_TAU_HOURS = {
    "degrading": 2.0,
    "critical": 0.1,
    "memory_leak": 1.0,
    "disk_fill": 1.25,
    "cpu_spike": 0.1,
}
# incident durations (hours) and time constants as a fraction of the duration
_INCIDENT_HOURS = {
    "memory_leak": (4.0, 12.0),
    "disk_fill": (3.0, 10.0),
    "cpu_spike": (0.5, 3.0),
    "degrading": (6.0, 24.0),
}
_INCIDENT_TAU_FRACTION = {"memory_leak": 1 / 3, "disk_fill": 1 / 3, "degrading": 1 / 3}
_CPU_SPIKE_TAU_STEPS = 1.0


def _overlay(kind: str, m: dict[str, np.ndarray], r: np.ndarray, rng: np.random.Generator) -> None:
    """Push the metrics in ``m`` towards the incident's target; ``r`` in [0, 1] is how far (in place)."""
    n = len(r)
    if kind == "memory_leak":
        m["memory"] += (99.0 - m["memory"]) * r
        m["cpu"] += 6.0 * r  # garbage collection works harder
    elif kind == "disk_fill":
        m["disk"] += (99.5 - m["disk"]) * r
    elif kind == "cpu_spike":
        m["cpu"] += (rng.uniform(96.0, 99.5, n) - m["cpu"]) * r
        m["load_factor"] += 0.5 * r  # run queue builds up
    elif kind == "degrading":
        m["cpu"] += (97.0 - m["cpu"]) * r
        m["memory"] += (93.0 - m["memory"]) * r
    elif kind == "critical":
        m["cpu"] += (rng.uniform(96.0, 99.5, n) - m["cpu"]) * r
        m["memory"] += (rng.uniform(96.0, 99.0, n) - m["memory"]) * r
        m["load_factor"] += 0.8 * r
    elif kind != "baseline":
        raise ValueError(f"unknown scenario {kind!r}; expected one of {', '.join(SCENARIOS)}")


# --- real shapes ---------------------------------------------------------------------------------------
# Shapes real fleets have and the profiles alone lack (seen in ../shared/data/nab/other/: CloudWatch disk
# writes and network-in, an auto-scaling group's CPU, request latency, machine temperature): long idle
# plateaus with almost no noise, rare isolated spikes on a flat series, level shifts (a deploy, a drop to
# ~0 when a service stops), slow drifts, and companion metrics a shipper reports as constant.
REAL_SHAPES = ("idle_plateau", "rare_spikes", "level_shift", "drift", "quiet", "flat_companions")
_SHAPE_HOURS = {
    "idle_plateau": (2.0, 30.0),
    "rare_spikes": (12.0, 72.0),
    "level_shift": (6.0, 72.0),
    "drift": (6.0, 48.0),
    "quiet": (12.0, 72.0),
    "flat_companions": (12.0, 72.0),
}
SHAPE_EPISODES_PER_DAY = 1 / 3  # per server at shape_rate=1: an episode starts every ~3 days


def _plan_shapes(rng: np.random.Generator, steps: int, rate: float) -> list[tuple[str, int, int]]:
    """[(shape, first step, n steps)] for one server: Poisson many episodes, may overlap each other."""
    n = int(rng.poisson(rate * SHAPE_EPISODES_PER_DAY * steps / schema.STEPS_PER_DAY))
    plan = []
    for _ in range(n):
        kind = REAL_SHAPES[int(rng.integers(len(REAL_SHAPES)))]
        length = min(steps, max(2, int(rng.uniform(*_SHAPE_HOURS[kind]) * _STEPS_PER_HOUR)))
        first = int(rng.integers(0, max(1, steps - length + 1)))
        plan.append((kind, first, length))
    return plan


def _apply_shape(kind: str, m: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Rewrite the slice ``m`` (raw cpu/memory/disk/load_factor of one episode) into a real shape, in place."""
    n = len(m["cpu"])
    edge = np.minimum(1.0, np.minimum(np.arange(1, n + 1), np.arange(n, 0, -1)) / 2.0)  # ~10 min in/out
    if kind == "idle_plateau":  # a near-constant low level, noise a few hundredths of a point
        level = float(np.exp(rng.uniform(np.log(0.1), np.log(12.0))))
        noise = rng.normal(0.0, level * rng.uniform(0.005, 0.05), n)
        m["cpu"] += (level + noise - m["cpu"]) * edge
        hold = float(m["memory"][0])
        m["memory"] += (hold + rng.normal(0.0, 0.02, n) - m["memory"]) * edge
    elif kind == "rare_spikes":  # isolated 1-3 step spikes on whatever the series does
        for _ in range(int(rng.integers(1, 5))):
            at, width = int(rng.integers(n)), int(rng.integers(1, 4))
            m["cpu"][at:at + width] = rng.uniform(40.0, 100.0)
            m["load_factor"][at:at + width] += rng.uniform(0.2, 1.0)
    elif kind == "level_shift":  # the level jumps and stays (or the service stops: a drop to ~0)
        if rng.random() < 0.25:
            m["cpu"][:] = np.abs(rng.normal(0.0, 0.05, n)) + 0.05
        else:
            m["cpu"] += rng.uniform(-0.8, 0.8) * max(5.0, float(np.mean(m["cpu"])))
        m["memory"] += rng.uniform(-12.0, 12.0)
    elif kind == "drift":  # a slow ramp away from the usual level
        ramp = np.linspace(0.0, 1.0, n)
        m["cpu"] += ramp * rng.uniform(-30.0, 30.0)
        m["memory"] += ramp * rng.uniform(-10.0, 15.0)
        m["disk"] += ramp * rng.uniform(0.0, 8.0)
    elif kind == "quiet":  # the same pattern far below the profile's usual level
        m["cpu"] *= rng.uniform(0.02, 0.3)
    elif kind == "flat_companions":  # memory and disk reported as constants
        m["memory"][:] = float(m["memory"][0]) if rng.random() < 0.7 else rng.uniform(5.0, 95.0)
        m["disk"][:] = float(m["disk"][0])
    else:
        raise ValueError(f"unknown shape {kind!r}; expected one of {', '.join(REAL_SHAPES)}")


def _add_shapes(m: dict[str, np.ndarray], rng: np.random.Generator, rate: float) -> list[tuple[str, int, int]]:
    plan = _plan_shapes(rng, len(m["cpu"]), rate)
    for kind, first, length in plan:
        sl = slice(first, first + length)
        _apply_shape(kind, {k: v[sl] for k, v in m.items()}, rng)  # views: edits land in m
    return plan


def _finish(m: dict[str, np.ndarray], cores: int) -> dict[str, np.ndarray]:
    cpu = np.clip(m["cpu"], 0.0, 100.0)
    mem = np.clip(m["memory"], 0.0, 100.0)
    disk = np.clip(m["disk"], 0.0, 100.0)
    load = np.clip(cores * cpu / 100.0 * m["load_factor"], 0.0, schema.MAX_LOAD_AVERAGE)
    return {
        "cpu_percent": cpu,
        "memory_percent": mem,
        "disk_percent": disk,
        "load_average": load,
        schema.STATUS: status_from_metrics(cpu, mem, disk),
    }


def _frame(name: str, profile: str, ts_ns: np.ndarray, out: dict[str, np.ndarray]) -> pd.DataFrame:
    n = len(ts_ns)
    data: dict[str, Any] = {
        schema.TIMESTAMP: pd.to_datetime(ts_ns, unit="ns"),
        schema.SERVER: np.full(n, name, dtype=object),
        **{k: out[k] for k in schema.METRICS},
        schema.STATUS: out[schema.STATUS],
        schema.PROFILE: np.full(n, profile, dtype=object),
    }
    return pd.DataFrame(data, columns=list(schema.COLUMNS))


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


def _timestamp(value: str | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.floor(schema.STEP_FREQ)


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

    t0 = _timestamp(start)
    ts_ns = t0.value + np.arange(steps, dtype=np.int64) * _STEP_NS
    plan = _plan_incidents(np.random.default_rng([seed, 0x1C1D]), servers, steps, incident_rate)
    overlay_rng = np.random.default_rng([seed, 0x0E7])

    frames = []
    for idx, (name, profile) in enumerate(servers):
        sim = _ServerSim(name, profile, seed)
        m = sim.block(ts_ns)
        if shape_rate > 0:  # own generator per server: adding a server or an incident changes no shape
            _add_shapes(m, np.random.default_rng([seed, zlib.crc32(name.encode()), 0x5AA9E]), shape_rate)
        for server, kind, first, length in plan:
            if server != idx:
                continue
            sl = slice(first, first + length)
            part = {k: v[sl] for k, v in m.items()}
            _overlay(kind, part, _incident_ramp(kind, length), overlay_rng)
        frames.append(_frame(name, profile, ts_ns, _finish(m, sim.p.cores)))

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


# --- live fleet --------------------------------------------------------------------------------------


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
        now = _timestamp(start if start is not None else pd.Timestamp.now(tz="UTC"))
        self._sims = [_ServerSim(name, profile, seed) for name, profile in self.servers]
        self._rng = np.random.default_rng([seed, 0x11FE])
        first = now.value - (history_steps - 1) * _STEP_NS
        ts_ns = first + np.arange(history_steps, dtype=np.int64) * _STEP_NS
        frames = []
        for sim in self._sims:
            out = _finish(sim.block(ts_ns), sim.p.cores)
            frames.append(_frame(sim.name, sim.profile, ts_ns, out))
        self._history = pd.concat(frames, ignore_index=True).sort_values(
            [schema.SERVER, schema.TIMESTAMP], ignore_index=True
        )
        self._now = int(ts_ns[-1])
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffer_ts = np.zeros(0, dtype=np.int64)
        self._pos = 0
        self._scenario: dict[str, Any] = self._baseline()
        self._names_arr = np.array(self._names, dtype=object)
        self._profiles_arr = np.array([profile for _, profile in self.servers], dtype=object)
        self._cores = np.array([sim.p.cores for sim in self._sims], dtype=float)
        self._order = np.argsort(self._names_arr.astype(str), kind="stable")

    @staticmethod
    def _baseline() -> dict[str, Any]:
        return {
            "scenario": "baseline",
            "servers": [],
            "duration_hours": None,
            "started_at": None,
            "expires_at": None,
        }

    @property
    def now(self) -> pd.Timestamp:
        """Timestamp of the latest record emitted (or of the last history record)."""
        return pd.Timestamp(self._now)

    def history(self) -> pd.DataFrame:
        """The initial ``history_steps`` records per server, sorted by (server_name, timestamp)."""
        return self._history.copy()

    def _refill(self) -> None:
        ts_ns = self._now + np.arange(1, _LIVE_BLOCK + 1, dtype=np.int64) * _STEP_NS
        self._buffer = [sim.block(ts_ns) for sim in self._sims]
        self._buffer_ts = ts_ns
        self._pos = 0

    def _expire(self) -> None:
        sc = self._scenario
        if sc["expires_at"] is not None and self._now >= pd.Timestamp(sc["expires_at"]).value:
            self._scenario = self._baseline()

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
            _overlay(sc["scenario"], part, r, self._rng)
            for k, v in part.items():
                m[k][hit] = v
        out = _finish(m, self._cores)
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
            self._scenario = self._baseline()
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


# --- summaries for people --------------------------------------------------------------------------


def profile_summary(records: pd.DataFrame) -> pd.DataFrame:
    """Per profile: servers, records, mean/std of each metric and the share of non-healthy records."""
    grouped = records.groupby(schema.PROFILE, sort=True)
    out = pd.DataFrame(
        {
            "servers": grouped[schema.SERVER].nunique(),
            "records": grouped.size(),
        }
    )
    for metric in schema.METRICS:
        out[f"{metric}_mean"] = grouped[metric].mean()
        out[f"{metric}_std"] = grouped[metric].std()
    out["not_healthy_share"] = grouped[schema.STATUS].apply(lambda s: float((s != schema.STATUSES[0]).mean()))
    return out.reset_index()


def plot_fleet_sample(
    records: pd.DataFrame,
    path: Any,
    days: float = 3.0,
    metrics: tuple[str, ...] = ("cpu_percent", "memory_percent"),
) -> Any:
    """Save a PNG of the last ``days`` of one server per profile (a panel per metric); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = records[schema.TIMESTAMP].max()
    recent = records[records[schema.TIMESTAMP] > end - pd.Timedelta(days=days)]
    first = recent.groupby(schema.PROFILE, sort=True)[schema.SERVER].min()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(10, 2.6 * len(metrics)), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        for profile, server in first.items():
            s = recent[recent[schema.SERVER] == server]
            ax.plot(s[schema.TIMESTAMP], s[metric], lw=0.8, label=f"{server} ({profile})")
        ax.set_ylabel(schema.METRIC_LABELS.get(metric, metric))
        if metric in schema.PERCENT_METRICS:
            ax.set_ylim(0, 100)
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path
