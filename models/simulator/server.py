"""One simulated server: how each profile behaves, what an incident or scenario does to it, its records.

The building block of the fleet simulator (:mod:`models.simulator`): :class:`ServerSim` simulates one
server in blocks of steps with numpy (no Python loop over rows). What a block needs from the previous
one (noise states, disk fill level, a running ML job, a decaying burst) is carried in the object, so a
server continues seamlessly from block to block. :func:`overlay` pushes a block towards an incident's
or a scenario's target; :func:`finish` clips the raw metrics, derives ``load_average`` and ``status``.

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
slowly, disk grows and is cleaned up (a saw-tooth). The batch generator also lays real shapes over
the profiles (:mod:`models.simulator.shapes`), then the incidents. ``status`` is derived from the metrics:
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

WARNING_PERCENT = 85.0
CRITICAL_PERCENT = 95.0

# what overlay() knows: every scenario of the live fleet; the labelled incidents of the batch generator
# (models.simulator.dataset.INCIDENT_TYPES) are four of them
SCENARIOS: tuple[str, ...] = ("baseline", "degrading", "critical", "memory_leak", "disk_fill", "cpu_spike")

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
STEP_NS = schema.STEP_MINUTES * 60 * 10**9
_STEPS_PER_HOUR = schema.STEPS_PER_HOUR


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
class ServerSim:
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


def overlay(kind: str, m: dict[str, np.ndarray], r: np.ndarray, rng: np.random.Generator) -> None:
    """Push the metrics in ``m`` towards an incident's or scenario's target; ``r`` in [0, 1]: how far (in place)."""
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


def finish(m: dict[str, np.ndarray], cores: int) -> dict[str, np.ndarray]:
    """The four metrics clipped to their ranges, ``load_average`` from CPU and ``cores``, and ``status``."""
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


def records_frame(name: str, profile: str, ts_ns: np.ndarray, out: dict[str, np.ndarray]) -> pd.DataFrame:
    """One server's :func:`finish` output as records with ``schema.COLUMNS``."""
    n = len(ts_ns)
    data: dict[str, Any] = {
        schema.TIMESTAMP: pd.to_datetime(ts_ns, unit="ns"),
        schema.SERVER: np.full(n, name, dtype=object),
        **{k: out[k] for k in schema.METRICS},
        schema.STATUS: out[schema.STATUS],
        schema.PROFILE: np.full(n, profile, dtype=object),
    }
    return pd.DataFrame(data, columns=list(schema.COLUMNS))


def floor_to_step(value: str | pd.Timestamp) -> pd.Timestamp:
    """``value`` as tz-naive UTC, floored to the 5-minute step."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.floor(schema.STEP_FREQ)

