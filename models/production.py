"""Production data: the feed store's records as a training / evaluation dataset (the closed loop).

Plain functions the Dagster assets (``orchestration/assets/feed.py``), the sensor and the benchmarks
call:

- :func:`production_dataset`: raw feed records -> the contract's columns on the 5-minute grid by the
  one alignment policy (:func:`models.grid.align`, every segment kept under its server's name: long
  outages stay gaps, nothing is invented across them);
- :func:`validate_production`: the same Pandera model as the simulated dataset
  (:class:`models.validation.FleetDatasetModel`) with production rules: types, ranges, categories and
  unique keys are fatal; missing profiles and gaps (the ``regular_5min_steps`` rule) are reported,
  not fatal;
- :func:`server_days`: how much feed there is (distinct server x UTC day pairs), what the sensor
  watches grow;
- :func:`prepare_production_experiment`: the experiment of a run that saw production data. Training
  reads the first 80 % of feed time (plus the simulated training part for ``mixed``); evaluation and
  the champion gate score on the held-out production windows, the last 20 % of feed time, with the
  same baselines and score as the simulated protocol (:mod:`models.evaluation`).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from models import evaluation, features, grid, schema
from models.validation import ValidationReport, validate_fleet

Source = Literal["simulated", "feed", "mixed"]
SOURCES: tuple[str, ...] = ("simulated", "feed", "mixed")
FEED_TRAIN_FRACTION = 0.8
# rules a production dataset may break and still train: reported in the check's metadata
NON_FATAL_CHECKS: frozenset[str] = frozenset({"regular_5min_steps", "all_profiles_present"})


def production_dataset(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw feed records -> contract columns on the grid (float64 metrics, ns timestamps), long gaps kept."""
    if raw.empty:
        return schema.empty_frame()
    out = grid.align(raw, segments="keep")
    out[schema.TIMESTAMP] = out[schema.TIMESTAMP].astype("datetime64[ns]")
    for metric in schema.METRICS:
        out[metric] = out[metric].astype("float64")
    return out[list(schema.COLUMNS)].reset_index(drop=True)


def server_days(records: pd.DataFrame) -> int:
    """Distinct (server, UTC day) pairs in ``records``."""
    if records.empty:
        return 0
    days = pd.to_datetime(records[schema.TIMESTAMP]).dt.floor("D")
    return int(pd.DataFrame({"s": records[schema.SERVER].to_numpy(), "d": days.to_numpy()}).drop_duplicates().shape[0])


@dataclass
class ProductionReport:
    """:func:`validate_production`'s outcome: ``ok`` is False only for fatal failures."""

    ok: bool
    fatal: pd.DataFrame  # failure cases of the fatal rules
    gaps: pd.DataFrame  # server_name, start, steps: the long outages (what the grid left as gaps)
    missing_profiles: list[str]
    rows: int
    servers: int
    server_days: int
    report: ValidationReport = field(repr=False)

    def summary(self, max_rows: int = 10) -> str:
        if self.ok:
            return "no fatal failures"
        return self.fatal.head(max_rows).astype(str).to_markdown(index=False)


def validate_production(dataset: pd.DataFrame) -> ProductionReport:
    """Validate a :func:`production_dataset` with :class:`~models.validation.FleetDatasetModel`."""
    report = validate_fleet(dataset)
    cases = report.failure_cases
    fatal = cases[~cases["check"].astype(str).isin(NON_FATAL_CHECKS)].reset_index(drop=True)
    long_gaps = grid.gaps(dataset, max_gap_steps=0)
    long_gaps = long_gaps.drop(columns="cuts")
    present = set(dataset[schema.PROFILE].unique()) if not dataset.empty else set()
    return ProductionReport(
        ok=fatal.empty and not dataset.empty,
        fatal=fatal if not dataset.empty else pd.DataFrame(
            [{"check": "not_empty", "failure_case": "the feed store holds no records"}]),
        gaps=long_gaps,
        missing_profiles=sorted(set(schema.PROFILES) - present),
        rows=len(dataset),
        servers=int(dataset[schema.SERVER].nunique()) if not dataset.empty else 0,
        server_days=server_days(dataset),
        report=report,
    )


def feed_cutoff(production: pd.DataFrame, train_fraction: float = FEED_TRAIN_FRACTION) -> pd.Timestamp:
    """First timestamp of the held-out production period: ``train_fraction`` of feed time (grid steps)."""
    times = np.sort(production[schema.TIMESTAMP].unique())
    if len(times) < 2:
        raise ValueError("the production dataset spans fewer than two timestamps")
    return pd.Timestamp(times[int(len(times) * train_fraction)])


def prepare_production_experiment(production: pd.DataFrame, simulated: pd.DataFrame | None = None,
                                  train_fraction: float = FEED_TRAIN_FRACTION) -> evaluation.Experiment:
    """The experiment of a run that sees production data (``source`` feed, or mixed with ``simulated``).

    Every feed server trains on its first ``train_fraction`` of feed time and is scored on windows
    after it (origin every 2 h, full 24 h encoder, full 8 h horizon), against the same baselines.
    No server is held out (they are the fleet being served). ``simulated`` records (mixed) add their
    own first 80 % to training, never to evaluation.
    """
    cutoff = feed_cutoff(production, train_fraction)
    fingerprint_of = production if simulated is None else pd.concat([production, simulated], ignore_index=True)
    split = evaluation.Split(cutoff=cutoff, seen=sorted(production[schema.SERVER].unique()), unseen=[],
                             fingerprint=evaluation.dataset_fingerprint(fingerprint_of))
    frame = features.prepare_frame(production)
    train_frame = frame[frame[schema.TIMESTAMP] < cutoff].reset_index(drop=True)
    windows = evaluation.validation_windows(frame, cutoff)
    windows = windows[windows[schema.SERVER].isin(split.seen)].reset_index(drop=True)  # not earlier segments
    if windows.empty:
        raise ValueError("no held-out production window: the feed's last 20 % is shorter than a horizon")
    if simulated is not None:
        sim = evaluation.prepare_experiment(simulated)
        train_frame = pd.concat([train_frame, sim.train_frame], ignore_index=True)
    return evaluation.Experiment(split=split, frame=frame, train_frame=train_frame, windows=windows,
                                 n_records=len(fingerprint_of))


# --- automation: when to retrain on the feed -----------------------------------------------------------
SKILL_KEYS: tuple[str, ...] = ("fleet_skill", "rolling_skill", "skill")


def skill_from_health(health: Any) -> float | None:
    """The fleet's rolling skill (model MAE / best-naive MAE) from a /health document, None if absent.

    Looks for ``fleet_skill`` / ``rolling_skill`` / ``skill`` at the top level, then one level down (e.g.
    ``{"guard": {"fleet_skill": 1.3}}``). A missing, null or non-finite value is unknown (None).
    """
    if not isinstance(health, dict):
        return None
    candidates = [health, *(v for v in health.values() if isinstance(v, dict))]
    for doc in candidates:
        for key in SKILL_KEYS:
            value = doc.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
    return None


def read_fleet_skill(url: str, timeout: float = 3.0) -> float | None:
    """GET ``url`` (the service's /health) and return :func:`skill_from_health`; None when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (configured URL)
            return skill_from_health(json.loads(response.read()))
    except (OSError, ValueError, urllib.error.URLError):
        return None


@dataclass(frozen=True)
class RetrainDecision:
    launch: bool
    trigger: str  # feed_growth | skill | none
    reason: str


def retrain_decision(server_days_now: int, server_days_at_last_run: int, threshold: int,
                     skill: float | None, hours_since_last_run: float | None,
                     min_hours: float) -> RetrainDecision:
    """Launch feed retraining when the feed grew by ``threshold`` server-days since the last run, or when
    the fleet's rolling skill is below 1.0 (the model loses to naive) and no run started in the last
    ``min_hours``. ``skill`` None = unknown: only growth can trigger."""
    grown = server_days_now - server_days_at_last_run
    if server_days_now > 0 and grown >= threshold:
        return RetrainDecision(True, "feed_growth",
                               f"feed grew by {grown} server-days since the last run (threshold {threshold}; "
                               f"{server_days_now} in the store)")
    recent = hours_since_last_run is not None and hours_since_last_run < min_hours
    if skill is not None and skill < 1.0 and server_days_now > 0:
        if recent:
            return RetrainDecision(False, "none", f"rolling skill {skill:.3f} < 1.0, but the last run started "
                                                  f"{hours_since_last_run:.1f} h ago (< {min_hours:g} h)")
        return RetrainDecision(True, "skill", f"fleet rolling skill {skill:.3f} < 1.0: the model loses to the "
                                              f"best naive baseline")
    skill_text = "unknown" if skill is None else f"{skill:.3f}"
    return RetrainDecision(False, "none", f"feed grew by {grown} of {threshold} server-days; rolling skill "
                                          f"{skill_text}")
