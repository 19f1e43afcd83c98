"""Real shapes laid over the profiles: what real fleets show and the profiles alone lack.

Shapes real fleets have and the profiles alone lack (seen in ../shared/data/nab/other/: CloudWatch disk
writes and network-in, an auto-scaling group's CPU, request latency, machine temperature): long idle
plateaus with almost no noise, rare isolated spikes on a flat series, level shifts (a deploy, a drop to
~0 when a service stops), slow drifts, and companion metrics a shipper reports as constant.

:func:`add_shapes` lays Poisson-many episodes over one server's raw metrics (about one every 3 days per
server at ``rate=1``, each 2-72 h, in place); :func:`apply_shape` rewrites one episode's slice.
"""

from __future__ import annotations

import numpy as np

from models import schema

_STEPS_PER_HOUR = schema.STEPS_PER_HOUR

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


def apply_shape(kind: str, m: dict[str, np.ndarray], rng: np.random.Generator) -> None:
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


def add_shapes(m: dict[str, np.ndarray], rng: np.random.Generator, rate: float) -> list[tuple[str, int, int]]:
    plan = _plan_shapes(rng, len(m["cpu"]), rate)
    for kind, first, length in plan:
        sl = slice(first, first + length)
        apply_shape(kind, {k: v[sl] for k, v in m.items()}, rng)  # views: edits land in m
    return plan


