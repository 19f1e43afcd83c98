"""Alert backtest (issue 10): do fleetcast's alerts come true, how early, and how often are they wrong?

Protocol (docs/performance.md, "Alert quality"):

- **Fleets.** A held-out simulated fleet the model never saw: a fresh seed (:data:`TEST_SEED`), server
  names of its own (``test-web-01``, ...), 20 servers, 30 days of forecast origins after a day of
  history (and 8 h 30 min of truth after the last origin). The probability cuts are chosen on a
  *calibration* fleet of another seed and prefix (:data:`CALIBRATION_SEED`, ``cal-``), never on the test
  fleet (:func:`calibrate`).
- **Origins** every 30 minutes; at each the model forecasts every server from its last 24 h through the
  service's own fast path (:meth:`models.tft.Forecaster.forecast`, the fused forward), and the alert
  rules run exactly as in the service: :func:`models.alerts.evaluate_forecast` with the history (trend,
  already-above) and an :class:`models.alerts.AlertBook` fed with data time.
- **Breach** (ground truth 1): the actual value reaching its *warning* threshold after at least 1 h below
  it. A breach is *caught* with lead L when an alert on that (server, metric) was active at every origin
  from L before the breach up to the last origin before it (L at most 8 h 30 min); recall counts leads
  of at least 1 h. Only what the forecast saw coming counts: at the breach the value was below the
  threshold for an hour, so "already above" cannot catch it.
- **Onset**: a (server, metric) going from no alert to alert. It is *true* when the value is at or
  above the warning threshold within 8 h 30 min after it (a breach follows, or the value is up there).
  Onsets opened by "already above" are not counted (they are not predictions).
- **Incidents** (ground truth 2): the simulator's labelled incidents; one is caught when an alert on
  one of its metrics is active at an origin between its start and 1 h before its worst point.
- **Baselines on the same origins**: ``predict_linear`` (least squares over the last hour, threshold
  reached within 8 h, as Prometheus' ``predict_linear(x[1h], 8*3600) >= t``) and a plain static
  threshold (value at or above 90 % of the warning threshold); both raw, as a Prometheus rule without
  ``for:``.
- **Real traces**: the NAB CloudWatch CPU traces with their labelled anomaly windows
  (``../shared/data/nab/anomaly_windows.json``; the traces present beside it): an anomaly is caught when
  a CPU alert is active between 8 h 30 min before its window's start and 1 h before the window's middle
  (NAB centres windows on the anomaly).

Figures per metric and overall: recall at >= 1 h lead, median lead, precision of onsets, onsets per
server-day, median time from onset to breach. :func:`run_backtest` returns them as a table;
:func:`mlflow_metrics` gives the stable MLflow names (``alerts_<method>_<metric>_<figure>``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from models import alerts as alert_rules
from models import config, schema, simulator

log = logging.getLogger(__name__)

TEST_SEED = 2026
CALIBRATION_SEED = 1701
ORIGIN_EVERY = 6  # steps: 30 minutes
HISTORY_STEPS = schema.ENCODER_STEPS  # 24 h
BELOW_STEPS = schema.STEPS_PER_HOUR  # a breach follows at least 1 h below the threshold
LOOKAHEAD = 102  # steps: 8 h 30 min
MIN_LEAD = schema.STEPS_PER_HOUR  # recall counts leads of at least 1 h
STATIC_FRACTION = 0.9  # the static baseline fires at 90 % of the warning threshold
METHODS: tuple[str, ...] = ("fleetcast", "predict_linear", "static")
FIGURES: tuple[str, ...] = ("recall_1h", "median_lead_h", "precision", "onsets_per_server_day",
                            "onset_to_breach_h", "breaches", "onsets", "incident_recall_1h")
INCIDENT_METRICS: dict[str, tuple[str, ...]] = {
    "memory_leak": ("memory_percent",),
    "disk_fill": ("disk_percent",),
    "cpu_spike": ("cpu_percent", "load_average"),
    "degrading": ("cpu_percent", "memory_percent", "load_average"),
}
CUT_GRID: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9)
CALIBRATION_FILE = Path(__file__).with_name("alert_calibration.yaml")


# --- fleets and forecasts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FleetSpec:
    seed: int = TEST_SEED
    n_servers: int = 20
    days: int = 30
    prefix: str = "test"
    start: str = "2026-03-02"
    shape_rate: float = 1.0  # the simulator's real-shape episodes; 0: the simulator before them (issue 10)

    @property
    def steps(self) -> int:
        return HISTORY_STEPS + self.days * schema.STEPS_PER_DAY + LOOKAHEAD

    def key(self) -> str:
        shapes = "" if self.shape_rate == 1.0 else f"-r{self.shape_rate:g}"
        return f"{self.prefix}-s{self.seed}-n{self.n_servers}-d{self.days}{shapes}"


TEST_FLEET = FleetSpec()
CALIBRATION_FLEET = FleetSpec(seed=CALIBRATION_SEED, prefix="cal")


def simulate(spec: FleetSpec) -> simulator.FleetData:
    """The fleet of ``spec``: the simulator's servers renamed ``<prefix>-web-01``, ... (never trained on)."""
    servers = [(f"{spec.prefix}-{name}", profile) for name, profile in simulator.default_servers(spec.n_servers)]
    return simulator.generate_fleet(steps=spec.steps, seed=spec.seed, start=spec.start, servers=servers,
                                    shape_rate=spec.shape_rate)


@dataclass
class Series:
    """One fleet as arrays: ``values[server][metric]`` on the 5-minute grid, and the origins (step indices)."""

    servers: list[str]
    profiles: list[str]
    timestamps: pd.DatetimeIndex
    values: dict[str, dict[str, np.ndarray]]
    origins: np.ndarray
    incidents: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def days(self) -> float:
        return len(self.origins) * ORIGIN_EVERY / schema.STEPS_PER_DAY

    @classmethod
    def from_records(cls, records: pd.DataFrame, incidents: pd.DataFrame | None = None,
                     origin_every: int = ORIGIN_EVERY) -> Series:
        servers = sorted(records[schema.SERVER].unique().tolist())
        by = dict(tuple(records.groupby(schema.SERVER, sort=False)))
        first = by[servers[0]]
        timestamps = pd.DatetimeIndex(first[schema.TIMESTAMP].to_numpy())
        values = {s: {m: by[s][m].to_numpy(dtype=float) for m in schema.METRICS} for s in servers}
        profiles = [str(by[s][schema.PROFILE].iloc[0]) for s in servers]
        n = len(timestamps)
        origins = np.arange(HISTORY_STEPS - 1, n - LOOKAHEAD, origin_every)
        return cls(servers, profiles, timestamps, values, origins,
                   incidents if incidents is not None else pd.DataFrame())


def checkpoint_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def forecast_origins(forecaster: Any, records: pd.DataFrame, series: Series, chunk: int = 48,
                     progress: Callable[[str], None] | None = None) -> np.ndarray:
    """Quantile forecasts ``[server, origin, horizon, metric, 3]`` (float32) of every server at every origin
    of ``series``, from the 24 h up to and including the origin, in batches of ``chunk`` origins (each
    origin's window is its own series ``<server>.o<k>``: the forecaster sees one batch of windows)."""
    n_s, n_o = len(series.servers), len(series.origins)
    out = np.zeros((n_s, n_o, schema.HORIZON_STEPS, len(schema.METRICS), 3), dtype=np.float32)
    by = {s: g.reset_index(drop=True) for s, g in records.groupby(schema.SERVER, sort=False)}
    window = np.arange(-HISTORY_STEPS + 1, 1)
    started = time.perf_counter()
    for c0 in range(0, n_o, chunk):
        ks = range(c0, min(c0 + chunk, n_o))
        frames = []
        for s in series.servers:
            frame = by[s]
            rows = (series.origins[list(ks)][:, None] + window[None, :]).ravel()
            part = frame.iloc[rows].copy()
            part[schema.SERVER] = np.repeat([f"{s}.o{k}" for k in ks], len(window))
            frames.append(part)
        forecasts = forecaster.forecast(pd.concat(frames, ignore_index=True))
        for i, s in enumerate(series.servers):
            for k in ks:
                fc = forecasts[f"{s}.o{k}"]
                out[i, k] = np.stack([fc.quantiles[m] for m in schema.METRICS], axis=1)
        if progress is not None:
            progress(f"forecast origins {ks.stop}/{n_o} ({time.perf_counter() - started:.0f} s)")
    return out


def cached_forecasts(forecaster: Any, checkpoint: Path | None, spec: FleetSpec, fleet: simulator.FleetData,
                     series: Series, progress: Callable[[str], None] | None = None) -> np.ndarray:
    """:func:`forecast_origins`, cached under the data dir by checkpoint digest and fleet."""
    if checkpoint is None:
        return forecast_origins(forecaster, fleet.records, series, progress=progress)
    path = config.data_dir() / "backtest" / f"{checkpoint_digest(Path(checkpoint))}-{spec.key()}.npy"
    if path.is_file():
        return np.load(path)
    values = forecast_origins(forecaster, fleet.records, series, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, values)
    return values


# --- the rules at every origin -----------------------------------------------------------------------------
def _history(series: Series, s: str, o: int) -> dict[str, np.ndarray]:
    return {m: series.values[s][m][o - HISTORY_STEPS + 1:o + 1] for m in schema.METRICS}


def fleetcast_activity(series: Series, quantiles: np.ndarray, cfg: alert_rules.AlertConfig) -> dict[str, Any]:
    """Run the service's alert rules over every origin: ``active[metric]`` ``[server, origin]`` bool and
    ``already[metric]`` (the alert active there opened as "already above")."""
    n_s, n_o = len(series.servers), len(series.origins)
    types = {r.metric: r.alert_type for r in cfg.rules}
    active = {m: np.zeros((n_s, n_o), dtype=bool) for m in types}
    already = {m: np.zeros((n_s, n_o), dtype=bool) for m in types}
    book = alert_rules.AlertBook(cfg.open_minutes, cfg.close_minutes)
    steps = pd.to_timedelta(np.arange(1, schema.HORIZON_STEPS + 1) * schema.STEP_MINUTES, unit="min")
    for k, o in enumerate(series.origins):
        origin = series.timestamps[o]
        times = pd.DatetimeIndex(origin + steps)
        for i, s in enumerate(series.servers):
            q = {m: quantiles[i, k, :, j, :].astype(float) for j, m in enumerate(schema.METRICS)}
            recent = _history(series, s, o)
            current = {m: float(v[-1]) for m, v in recent.items()}
            found = alert_rules.evaluate_forecast(s, series.profiles[i], q, times, origin, current, cfg, recent)
            book.update(s, found, origin)
            for a in book.for_server(s):
                active[a["metric"]][i, k] = True
                already[a["metric"]][i, k] = bool(a.get("already_above"))
    return {"active": active, "already": already}


def rule_scores(series: Series, quantiles: np.ndarray, cfg: alert_rules.AlertConfig) -> dict[str, np.ndarray]:
    """:func:`models.alerts.metric_scores` at every (server, origin): ``{metric: [server, origin, 4]}`` with
    (critical held above, critical score, warning held above, warning score). Cuts can then be swept
    without evaluating the rules again (:func:`activity_from_scores`)."""
    n_s, n_o = len(series.servers), len(series.origins)
    out = {r.metric: np.zeros((n_s, n_o, 4)) for r in cfg.rules}
    for i, s in enumerate(series.servers):
        for rule in cfg.rules:
            j = schema.METRICS.index(rule.metric)
            thresholds = cfg.thresholds(rule, series.profiles[i])
            trend = cfg.trend_args(rule.metric)
            v = series.values[s][rule.metric]
            for k, o in enumerate(series.origins):
                sc = alert_rules.metric_scores(rule, thresholds, quantiles[i, k, :, j, :], float(v[o]),
                                               v[o - HISTORY_STEPS + 1:o + 1], above_steps=cfg.above_steps, **trend)
                out[rule.metric][i, k] = (sc["critical"][0], sc["critical"][1], sc["warning"][0], sc["warning"][1])
    return out


def activity_from_scores(series: Series, scores: Mapping[str, np.ndarray], cfg: alert_rules.AlertConfig,
                         metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """What :func:`fleetcast_activity` gives, from :func:`rule_scores` and ``cfg``'s cuts and persistence
    (the same decision as :func:`models.alerts.evaluate_metric`, the same :class:`AlertBook`)."""
    metrics = list(metrics or scores)
    active = {m: np.zeros(scores[m].shape[:2], dtype=bool) for m in metrics}
    already = {m: np.zeros(scores[m].shape[:2], dtype=bool) for m in metrics}
    eps = 1e-6
    for m in metrics:
        sc = scores[m]
        cut_c, cut_w = cfg.cut(m, "critical"), cfg.cut(m, "warning")
        held_c, raised_c = sc[..., 0] > 0, sc[..., 1] >= cut_c - eps
        held_w, raised_w = sc[..., 2] > 0, sc[..., 3] >= cut_w - eps
        positive = held_c | raised_c | held_w | raised_w
        is_already = held_c | (~raised_c & held_w)
        for i in range(sc.shape[0]):
            book = alert_rules.AlertBook(cfg.open_minutes, cfg.close_minutes)
            for k, o in enumerate(series.origins):
                found = ([{"alert_type": m, "already_above": bool(is_already[i, k]), "severity": "low",
                           "hours_to_breach": 0.0, "server_name": "s"}] if positive[i, k] else [])
                book.update("s", found, series.timestamps[o])
                if book.is_active("s", m):
                    active[m][i, k] = True
                    already[m][i, k] = bool(book.for_server("s")[0]["already_above"])
    return {"active": active, "already": already}


def _warning(cfg: alert_rules.AlertConfig, metric: str, profile: str) -> float:
    rule = next(r for r in cfg.rules if r.metric == metric)
    return cfg.thresholds(rule, profile)["warning"]


def baseline_activity(series: Series, cfg: alert_rules.AlertConfig, method: str) -> dict[str, Any]:
    """``predict_linear`` or ``static`` at the same origins (raw: active whenever the rule holds)."""
    n_s = len(series.servers)
    metrics = [r.metric for r in cfg.rules]
    active = {m: np.zeros((n_s, len(series.origins)), dtype=bool) for m in metrics}
    x = np.arange(-BELOW_STEPS + 1, 1, dtype=float)
    xc = x - x.mean()
    for i, s in enumerate(series.servers):
        for m in metrics:
            w = _warning(cfg, m, series.profiles[i])
            v = series.values[s][m]
            if method == "static":
                active[m][i] = v[series.origins] >= STATIC_FRACTION * w
                continue
            win = v[series.origins[:, None] + x[None, :].astype(int)]
            slope = (win - win.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
            at_origin = win.mean(axis=1) + slope * (0 - x.mean())
            projected = at_origin + slope * schema.HORIZON_STEPS
            active[m][i] = np.maximum(at_origin, projected) >= w
    return {"active": active, "already": {m: np.zeros_like(a) for m, a in active.items()}}


# --- scoring -----------------------------------------------------------------------------------------------
@dataclass
class Counts:
    leads: list[float] = field(default_factory=list)  # hours, one per breach (0: not caught)
    onsets: int = 0
    true_onsets: int = 0
    to_breach: list[float] = field(default_factory=list)  # hours, true onsets followed by a breach
    incidents: int = 0
    incidents_caught: int = 0

    def add(self, other: Counts) -> None:
        self.leads += other.leads
        self.onsets += other.onsets
        self.true_onsets += other.true_onsets
        self.to_breach += other.to_breach
        self.incidents += other.incidents
        self.incidents_caught += other.incidents_caught

    def figures(self, server_days: float) -> dict[str, float]:
        leads = np.asarray(self.leads, dtype=float)
        caught = leads[leads >= MIN_LEAD / schema.STEPS_PER_HOUR]
        return {
            "recall_1h": float(len(caught) / len(leads)) if len(leads) else float("nan"),
            "median_lead_h": float(np.median(caught)) if len(caught) else float("nan"),
            "precision": self.true_onsets / self.onsets if self.onsets else float("nan"),
            "onsets_per_server_day": self.onsets / server_days if server_days else float("nan"),
            "onset_to_breach_h": float(np.median(self.to_breach)) if self.to_breach else float("nan"),
            "breaches": float(len(leads)),
            "onsets": float(self.onsets),
            "incident_recall_1h": self.incidents_caught / self.incidents if self.incidents else float("nan"),
        }


def breaches(values: np.ndarray, threshold: float) -> np.ndarray:
    """Steps where ``values`` reach ``threshold`` after at least :data:`BELOW_STEPS` below it."""
    above = values >= threshold
    below_run = np.convolve((~above).astype(int), np.ones(BELOW_STEPS, dtype=int), mode="full")[:len(values)]
    prev_all_below = np.r_[np.zeros(1, dtype=bool), below_run[:-1] == BELOW_STEPS]
    return np.flatnonzero(above & prev_all_below)


def score_metric(values: np.ndarray, threshold: float, origins: np.ndarray, active: np.ndarray,
                 already: np.ndarray) -> Counts:
    """Breach leads and onsets of one (server, metric)."""
    c = Counts()
    first, last = origins[0], origins[-1]
    for b in breaches(values, threshold):
        if b < first + LOOKAHEAD or b > last:
            continue  # the 8 h 30 min before the breach must all lie within the origins
        k = int(np.searchsorted(origins, b, side="left")) - 1  # last origin before the breach
        lead = 0
        while k >= 0 and active[k] and b - origins[k] <= LOOKAHEAD:
            lead = b - origins[k]
            k -= 1
        c.leads.append(lead / schema.STEPS_PER_HOUR)
    above = values >= threshold
    opened = active & ~np.r_[False, active[:-1]] & ~already
    for k in np.flatnonzero(opened):
        o = origins[k]
        c.onsets += 1
        ahead = np.flatnonzero(above[o:o + LOOKAHEAD + 1])
        if ahead.size:
            c.true_onsets += 1
            if ahead[0] > 0:
                c.to_breach.append(ahead[0] / schema.STEPS_PER_HOUR)
    return c


def score_incidents(series: Series, activity: Mapping[str, np.ndarray], metric: str | None = None) -> tuple[int, int]:
    """(incidents, caught >= 1 h before their worst point) for the incidents touching ``metric`` (all: None)."""
    if series.incidents.empty:
        return 0, 0
    n, caught = 0, 0
    index = {s: i for i, s in enumerate(series.servers)}
    for row in series.incidents.itertuples(index=False):
        metrics = [m for m in INCIDENT_METRICS.get(row.incident_type, ()) if m in activity]
        if metric is not None:
            if metric not in metrics:
                continue
            metrics = [metric]
        start = int(series.timestamps.get_indexer([row.start])[0])
        end = int(series.timestamps.get_indexer([row.end])[0])
        if start < 0 or end < 0 or row.server_name not in index:
            continue
        i = index[row.server_name]
        primary = series.values[row.server_name][metrics[0]] if metrics else None
        if primary is None:
            continue
        worst = start + int(np.argmax(primary[start:end + 1]))
        ks = np.flatnonzero((series.origins >= start) & (series.origins <= worst - MIN_LEAD))
        if worst - MIN_LEAD < series.origins[0] or start > series.origins[-1]:
            continue
        n += 1
        if ks.size and any(activity[m][i, ks].any() for m in metrics):
            caught += 1
    return n, caught


def score(series: Series, activity: Mapping[str, Any], cfg: alert_rules.AlertConfig,
          rules: Sequence[alert_rules.Rule] | None = None) -> dict[str, dict[str, float]]:
    """Figures per metric (``rules``, default all) and ``overall`` for one method's activity."""
    out: dict[str, dict[str, float]] = {}
    total = Counts()
    server_days = len(series.servers) * series.days
    for rule in rules or cfg.rules:
        m = rule.metric
        c = Counts()
        for i, s in enumerate(series.servers):
            c.add(score_metric(series.values[s][m], _warning(cfg, m, series.profiles[i]), series.origins,
                               activity["active"][m][i], activity["already"][m][i]))
        c.incidents, c.incidents_caught = score_incidents(series, activity["active"], m)
        out[m] = c.figures(server_days)
        total.add(c)
    if rules is None:
        total.incidents, total.incidents_caught = score_incidents(series, activity["active"])
    out["overall"] = total.figures(server_days)
    return out


# --- the backtest ------------------------------------------------------------------------------------------
@dataclass
class BacktestResult:
    table: pd.DataFrame  # rows: method x metric; columns: FIGURES
    cuts: dict[str, dict[str, float]]
    seconds: dict[str, float]
    curve: pd.DataFrame = field(default_factory=pd.DataFrame)  # precision/recall vs one common cut
    real: pd.DataFrame = field(default_factory=pd.DataFrame)

    def overall(self, method: str = "fleetcast") -> dict[str, float]:
        row = self.table[(self.table["method"] == method) & (self.table["metric"] == "overall")]
        return {k: float(row[k].iloc[0]) for k in FIGURES}


def evaluate_methods(series: Series, quantiles: np.ndarray, cfg: alert_rules.AlertConfig,
                     methods: Sequence[str] = METHODS) -> pd.DataFrame:
    rows = []
    for method in methods:
        activity = (fleetcast_activity(series, quantiles, cfg) if method == "fleetcast"
                    else baseline_activity(series, cfg, method))
        for metric, figures in score(series, activity, cfg).items():
            rows.append({"method": method, "metric": metric, **figures})
    return pd.DataFrame(rows, columns=["method", "metric", *FIGURES])


def load_forecaster(checkpoint: Path) -> Any:
    from models import tft

    return tft.Forecaster.from_checkpoint(checkpoint)


def prepare(forecaster: Any, checkpoint: Path | None, spec: FleetSpec,
            progress: Callable[[str], None] | None = None) -> tuple[Series, np.ndarray]:
    fleet = simulate(spec)
    series = Series.from_records(fleet.records, fleet.incidents)
    return series, cached_forecasts(forecaster, checkpoint, spec, fleet, series, progress)


def precision_recall_curve(series: Series, quantiles: np.ndarray, cfg: alert_rules.AlertConfig,
                           cuts: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> pd.DataFrame:
    """Overall precision of onsets and recall at >= 1 h against one common probability cut (all metrics
    and levels), the rest of the rules as configured: what the MLflow plot draws."""
    rows = []
    scores = rule_scores(series, quantiles, cfg)
    for cut in cuts:
        c = cfg.with_cuts({m: {"warning": cut, "critical": cut} for m in schema.METRICS})
        overall = score(series, activity_from_scores(series, scores, c), c)["overall"]
        rows.append({"cut": cut, "precision": overall["precision"], "recall_1h": overall["recall_1h"]})
    return pd.DataFrame(rows)


def run_backtest(checkpoint: Path, spec: FleetSpec = TEST_FLEET, cfg: alert_rules.AlertConfig | None = None,
                 curve: bool = False, real: bool = True, forecaster: Any = None,
                 progress: Callable[[str], None] | None = None) -> BacktestResult:
    """The backtest of ``checkpoint``'s model on ``spec``'s fleet (default: the held-out test fleet)."""
    cfg = cfg or alert_rules.load_config()
    forecaster = forecaster or load_forecaster(checkpoint)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    series, quantiles = prepare(forecaster, checkpoint, spec, progress)
    seconds["forecast"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = evaluate_methods(series, quantiles, cfg)
    seconds["rules"] = time.perf_counter() - t0
    result = BacktestResult(table, {m: {lv: cfg.cut(m, lv) for lv in ("warning", "critical")}
                                    for m in schema.METRICS}, seconds)
    if curve:
        t0 = time.perf_counter()
        result.curve = precision_recall_curve(series, quantiles, cfg)
        seconds["curve"] = time.perf_counter() - t0
    if real:
        t0 = time.perf_counter()
        result.real = real_traces(forecaster, cfg)
        seconds["real"] = time.perf_counter() - t0
    return result


# --- calibration -------------------------------------------------------------------------------------------
def _f1(figures: Mapping[str, float]) -> float:
    p, r = figures["precision"], figures["recall_1h"]
    if not (np.isfinite(p) and np.isfinite(r)) or p + r == 0:
        return 0.0
    return 2 * p * r / (p + r)


TARGET_PRECISION = 0.8  # issue 10's goal for the precision of onsets


def choose_cut(sweep: pd.DataFrame, target_precision: float | None = TARGET_PRECISION) -> float:
    """The cut of one metric's ``sweep`` (cut, precision, recall_1h, f1): the one with the most recall at
    >= 1 h among those whose precision of onsets reaches ``target_precision`` (ties: the higher cut); when
    none does, or ``target_precision`` is None, the best F1 (ties: the higher cut)."""
    rows = sweep.sort_values("cut", ascending=False)
    if target_precision is not None:
        ok = rows[(rows["precision"] >= target_precision) & (rows["recall_1h"] > 0)]
        if not ok.empty:
            return float(ok.loc[ok["recall_1h"].idxmax(), "cut"])  # idxmax: the first (highest cut) of ties
    return float(rows.loc[rows["f1"].idxmax(), "cut"])


def calibrate(checkpoint: Path, spec: FleetSpec = CALIBRATION_FLEET, cfg: alert_rules.AlertConfig | None = None,
              grid: Sequence[float] = CUT_GRID, forecaster: Any = None,
              progress: Callable[[str], None] | None = None,
              target_precision: float | None = TARGET_PRECISION) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """Probability cuts per metric (warning and critical alike) chosen on the calibration fleet: for each
    metric the cut of ``grid`` with the most recall at >= 1 h among those whose precision of onsets
    reaches ``target_precision``, else the best F1 of the two (:func:`choose_cut`). Returns the cuts and
    the sweep (metric, cut, precision, recall_1h, f1)."""
    if spec.seed == TEST_FLEET.seed or spec.prefix == TEST_FLEET.prefix:
        raise ValueError("calibration must not use the test fleet")
    cfg = cfg or alert_rules.load_config()
    forecaster = forecaster or load_forecaster(checkpoint)
    series, quantiles = prepare(forecaster, checkpoint, spec, progress)
    scores = rule_scores(series, quantiles, cfg)
    chosen: dict[str, dict[str, float]] = {}
    rows = []
    for rule in cfg.rules:
        for cut in grid:
            c = cfg.with_cuts({rule.metric: {"warning": cut, "critical": cut}})
            activity = activity_from_scores(series, scores, c, [rule.metric])
            figures = score(series, activity, c, [rule])[rule.metric]
            f1 = _f1(figures)
            rows.append({"metric": rule.metric, "cut": cut, "precision": figures["precision"],
                         "recall_1h": figures["recall_1h"], "f1": f1})
            if progress is not None:
                progress(f"calibrate {rule.metric} cut {cut:.2f}: precision {figures['precision']:.2f} "
                         f"recall {figures['recall_1h']:.2f} F1 {f1:.3f}")
        mine = pd.DataFrame([r for r in rows if r["metric"] == rule.metric])
        cut = choose_cut(mine, target_precision)
        chosen[rule.metric] = {"warning": cut, "critical": cut}
    return chosen, pd.DataFrame(rows)


def write_calibration(cuts: Mapping[str, Mapping[str, float]], path: Path = CALIBRATION_FILE,
                      note: str = "") -> Path:
    header = ("# Probability cuts per metric and level, chosen on the calibration fleet (never the test fleet)\n"
              "# by models.backtest.calibrate (make calibrate-alerts). " + note + "\n")
    body = yaml.safe_dump({"cuts": {m: dict(v) for m, v in cuts.items()}}, sort_keys=True)
    path.write_text(header + body, encoding="utf-8")
    return path


# --- real traces -------------------------------------------------------------------------------------------
def nab_dir() -> Path:
    return config.PROJECT_ROOT.parent / "shared" / "data" / "nab"


def nab_records(csv: Path, profile: str = "generic", cores: int = 4) -> pd.DataFrame:
    """A NAB CloudWatch CPU trace as fleet records on the 5-minute grid: CPU from the trace; memory, disk
    and load filled plausibly and flat (so only CPU can alert); server ``aws-<trace id>``."""
    raw = pd.read_csv(csv, parse_dates=["timestamp"])
    raw["timestamp"] = raw["timestamp"].dt.floor(schema.STEP_FREQ)
    raw = raw.groupby("timestamp", as_index=False)["value"].mean()
    grid = pd.date_range(raw["timestamp"].iloc[0], raw["timestamp"].iloc[-1], freq=schema.STEP_FREQ)
    cpu = raw.set_index("timestamp")["value"].reindex(grid).interpolate(limit_direction="both").to_numpy()
    n = len(grid)
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        schema.TIMESTAMP: grid,
        schema.SERVER: "aws-" + csv.stem.rsplit("_", 1)[-1],
        "cpu_percent": np.clip(cpu, 0.0, 100.0),
        "memory_percent": np.clip(40.0 + rng.normal(0.0, 0.5, n), 0.0, 100.0),
        "disk_percent": np.full(n, 30.0),
        "load_average": np.clip(cores * cpu / 100.0, 0.0, None),
        schema.STATUS: "normal",
        schema.PROFILE: profile,
    }, columns=list(schema.COLUMNS))


def real_traces(forecaster: Any, cfg: alert_rules.AlertConfig, directory: Path | None = None) -> pd.DataFrame:
    """Every method on the NAB traces: anomaly windows caught >= 1 h before their middle, onsets per
    server-day, precision of onsets (true when an anomaly window starts within 8 h 30 min or is on)."""
    directory = directory or nab_dir()
    labels_path = directory / "anomaly_windows.json"
    if not labels_path.is_file():
        return pd.DataFrame()
    labels = json.loads(labels_path.read_text())
    rows = []
    totals = {m: {"windows": 0, "caught": 0, "onsets": 0, "true": 0, "days": 0.0} for m in METHODS}
    traces = 0
    for name, windows in sorted(labels.items()):
        csv = directory / name
        if not csv.is_file() or not windows:
            continue
        records = nab_records(csv)
        series = Series.from_records(records)
        if len(series.origins) < 2:
            continue
        quantiles = forecast_origins(forecaster, records, series)
        traces += 1
        span = [(int(series.timestamps.searchsorted(pd.Timestamp(a))),
                 int(series.timestamps.searchsorted(pd.Timestamp(b)))) for a, b in windows]
        for method in METHODS:
            activity = (fleetcast_activity(series, quantiles, cfg) if method == "fleetcast"
                        else baseline_activity(series, cfg, method))
            act = activity["active"]["cpu_percent"][0]
            already = activity["already"]["cpu_percent"][0]
            t = totals[method]
            t["days"] += series.days
            for a, b in span:
                middle = (a + b) // 2
                if middle - MIN_LEAD < series.origins[0] or a > series.origins[-1]:
                    continue
                t["windows"] += 1
                ks = np.flatnonzero((series.origins >= a - LOOKAHEAD) & (series.origins <= middle - MIN_LEAD))
                t["caught"] += int(act[ks].any())
            opened = act & ~np.r_[False, act[:-1]] & ~already
            for k in np.flatnonzero(opened):
                o = series.origins[k]
                t["onsets"] += 1
                t["true"] += int(any(a - LOOKAHEAD <= o <= b for a, b in span))
    for method, t in totals.items():
        rows.append({"method": method, "traces": traces, "windows": t["windows"],
                     "recall_1h": t["caught"] / t["windows"] if t["windows"] else float("nan"),
                     "precision": t["true"] / t["onsets"] if t["onsets"] else float("nan"),
                     "onsets_per_server_day": t["onsets"] / t["days"] if t["days"] else float("nan")})
    return pd.DataFrame(rows)


# --- reporting ---------------------------------------------------------------------------------------------
def mlflow_metrics(result: BacktestResult) -> dict[str, float]:
    """Stable MLflow names: ``alerts_<method>_<metric or overall>_<figure>`` (NaN figures left out), plus
    ``alerts_real_<method>_<figure>`` for the real traces."""
    out: dict[str, float] = {}
    for row in result.table.to_dict("records"):
        for f in FIGURES:
            value = float(row[f])
            if np.isfinite(value):
                out[f"alerts_{row['method']}_{row['metric']}_{f}"] = value
    for row in result.real.to_dict("records") if not result.real.empty else []:
        for f in ("recall_1h", "precision", "onsets_per_server_day"):
            value = float(row[f])
            if np.isfinite(value):
                out[f"alerts_real_{row['method']}_{f}"] = value
    return out


def markdown_table(result: BacktestResult) -> str:
    t = result.table.copy()
    cols = ["method", "metric", "recall_1h", "median_lead_h", "precision", "onsets_per_server_day",
            "onset_to_breach_h", "breaches", "onsets", "incident_recall_1h"]
    t = t[cols]
    for c in cols[2:]:
        fmt = "{:.0f}" if c in ("breaches", "onsets") else "{:.2f}"
        t[c] = [fmt.format(v) if np.isfinite(v) else "–" for v in t[c]]
    return t.to_markdown(index=False)


def plot_curve(result: BacktestResult) -> Any:
    """Precision of onsets and recall at >= 1 h against the common probability cut (matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if not result.curve.empty:
        ax.plot(result.curve["cut"], result.curve["precision"], marker="o", label="precision of onsets")
        ax.plot(result.curve["cut"], result.curve["recall_1h"], marker="s", label="recall at >= 1 h lead")
    ax.axhline(0.8, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("probability cut (all metrics and levels)")
    ax.set_ylabel("held-out simulated fleet")
    ax.set_ylim(0, 1.02)
    ax.set_title("fleetcast alerts: precision / recall vs cut")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def gate(candidate: Mapping[str, float], champion: Mapping[str, float], tolerance: float) -> tuple[bool, str]:
    """The promotion gate's alert part: False (and why) when the candidate's overall backtest recall at
    >= 1 h or precision of onsets is more than ``tolerance`` below the champion's. Missing figures pass."""
    reasons = []
    for figure, name in (("recall_1h", "recall at >= 1 h"), ("precision", "precision of onsets")):
        key = f"alerts_fleetcast_overall_{figure}"
        new, old = candidate.get(key), champion.get(key)
        if new is None or old is None or not (np.isfinite(new) and np.isfinite(old)):
            continue
        if new < old - tolerance:
            reasons.append(f"alert {name} {new:.3f} < champion's {old:.3f} - tolerance {tolerance:.3f}")
    if reasons:
        return False, "; ".join(reasons)
    return True, f"alert backtest within tolerance {tolerance:.3f} of the champion"
