"""A stand-in for the fleetcast service: canned answers of exactly the agreed API shape, over real HTTP.

For the dashboard's unit tests and benchmark, and for working on the dashboard without a model::

    python -m dashboard.standin --servers 50 --port 8000

It counts every request it receives (``StandinService.counts``), so a test can check from the server's
side that the dashboard sent nothing. It is not the service: nothing is forecast, the numbers are
synthetic curves.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from dashboard.data import RISK_LEVELS
from models import alerts as alert_rules
from models.schema import ENCODER_STEPS, HORIZON_STEPS, METRICS, PERCENT_METRICS, PROFILES, STEP_MINUTES

log = logging.getLogger(__name__)

SCENARIOS = ("baseline", "degrading", "critical", "memory_leak", "disk_fill", "cpu_spike")

def _rules() -> tuple[dict[str, str], dict[str, float]]:
    """Alert type and a round breach level per metric, from the real alert rules (models/alerts.yaml)."""
    rules = {rule.metric: rule for rule in alert_rules.load_config().rules}
    types = {m: rules[m].alert_type for m in METRICS}
    limits = {m: 90.0 if m in PERCENT_METRICS else 16.0 for m in METRICS}  # synthetic, not the thresholds
    return types, limits


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S")


def _r(values: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in values]


def synthetic_fleet(
    n_servers: int, now: datetime | None = None, seed: int = 7, history_steps: int = ENCODER_STEPS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(/predictions?include_history=true answer, /alerts answer) for ``n_servers`` synthetic servers."""
    rng = np.random.default_rng(seed)
    alert_types, limits = _rules()
    if now is None:
        now = datetime.now(UTC).replace(tzinfo=None)
        now -= timedelta(minutes=now.minute % STEP_MINUTES)
    now = now.replace(second=0, microsecond=0)
    step = timedelta(minutes=STEP_MINUTES)
    hist_ts = [_iso(now - step * (history_steps - 1 - i)) for i in range(history_steps)]
    fc_ts = [_iso(now + step * (i + 1)) for i in range(HORIZON_STEPS)]
    t_hist = np.arange(-history_steps + 1, 1)
    t_fc = np.arange(1, HORIZON_STEPS + 1)
    predictions: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    for i in range(n_servers):
        name = f"srv-{i:04d}"
        profile = PROFILES[i % len(PROFILES)]
        trend = rng.uniform(0.1, 0.5) if i % 4 == 0 else rng.uniform(-0.02, 0.05)
        history: dict[str, Any] = {"timestamps": hist_ts}
        forecast: dict[str, Any] = {"timestamps": fc_ts}
        current: dict[str, Any] = {"timestamp": hist_ts[-1]}
        predicted: dict[str, Any] = {"timestamp": fc_ts[-1]}
        worst = 0.0
        for m, metric in enumerate(METRICS):
            scale = 8.0 if metric == "load_average" else 100.0
            base = rng.uniform(0.15, 0.6) * scale
            amp = rng.uniform(0.03, 0.12) * scale
            phase = rng.uniform(0, 2 * np.pi)
            slope = trend * scale / 100.0 * (1.0 + m / 4)

            def curve(t: np.ndarray, base: float = base, amp: float = amp, phase: float = phase,
                      slope: float = slope) -> np.ndarray:
                # the trend starts 4 h before now, so the history looks settled and then turns
                return base + amp * np.sin(2 * np.pi * t / 288 + phase) + slope * np.maximum(t + 48, 0)

            hi = 100.0 if metric != "load_average" else 64.0
            hist = np.clip(curve(t_hist) + rng.normal(0, 0.02 * scale, t_hist.size), 0, hi)
            p50 = np.clip(curve(t_fc), 0, hi)
            spread = 0.05 * scale * np.sqrt(t_fc / HORIZON_STEPS + 0.1)
            history[metric] = _r(hist)
            forecast[metric] = {
                "p10": _r(np.clip(p50 - spread, 0, hi)),
                "p50": _r(p50),
                "p90": _r(np.clip(p50 + spread, 0, hi)),
            }
            current[metric] = round(float(hist[-1]), 2)
            predicted[metric] = round(float(p50[-1]), 2)
            limit = limits[metric]
            worst = max(worst, float(np.max(p50 + spread)) / limit)
            breach = np.nonzero(p50 >= limit)[0]
            if breach.size:
                hours = round(float((breach[0] + 1) * STEP_MINUTES / 60), 2)
                severity = "critical" if hours <= 2 else "high" if hours <= 5 else "medium"
                alerts.append(
                    {
                        "server_name": name,
                        "profile": profile,
                        "alert_type": alert_types[metric],
                        "severity": severity,
                        "message": f"{metric} expected to reach {limit:g} in {hours:g} hours",
                        "timestamp": _iso(now),
                        "prediction_time": fc_ts[int(breach[0])],
                        "metric": metric,
                        "threshold": limit,
                        "current_value": current[metric],
                        "predicted_value": round(float(p50[breach[0]]), 2),
                        "probability": 0.6,
                        "hours_to_breach": hours,
                    }
                )
        risk = "critical" if worst >= 1.1 else "high" if worst >= 1.0 else "medium" if worst >= 0.8 else "low"
        predictions.append(
            {
                "server_name": name,
                "profile": profile,
                "current": current,
                "predicted": predicted,
                "confidence": round(float(rng.uniform(0.6, 0.95)), 2),
                "risk_level": risk,
                "seen_in_training": bool(i % 3),
                "history_steps": history_steps,
                "forecast": forecast,
                "history": history,
            }
        )
    predictions.sort(key=lambda p: (RISK_LEVELS.index(p["risk_level"]), p["server_name"]))
    model = {"name": "fleetcast-tft", "version": "3", "run_id": "standin"}
    return (
        {"predictions": predictions, "timestamp": _iso(now), "model": model},
        {"alerts": alerts, "timestamp": _iso(now)},
    )


class StandinService:
    """A threaded HTTP server on 127.0.0.1 answering like the fleetcast service."""

    def __init__(self, n_servers: int = 6, demo_fleet: bool = True, port: int = 0) -> None:
        predictions, alerts = synthetic_fleet(n_servers)
        self.demo_fleet = demo_fleet
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.scenario: dict[str, Any] = {
            "scenario": "baseline",
            "servers": [],
            "duration_hours": 24,
            "started_at": predictions["timestamp"],
            "expires_at": None,
        }
        self.set_predictions(predictions, alerts)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def set_predictions(self, predictions: dict[str, Any], alerts: dict[str, Any]) -> None:
        no_history = {
            **predictions,
            "predictions": [{k: v for k, v in p.items() if k != "history"} for p in predictions["predictions"]],
        }
        with self._lock:
            self._pred_full = json.dumps(predictions).encode()
            self._pred_short = json.dumps(no_history).encode()
            self._by_name = {p["server_name"]: p for p in predictions["predictions"]}
            self._alerts = json.dumps(alerts).encode()
            self._n = len(predictions["predictions"])
            self._stamp = predictions["timestamp"]

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def start(self) -> StandinService:
        self._thread = threading.Thread(target=self._server.serve_forever, name="standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StandinService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- routing ------------------------------------------------------------------------------------
    def _health(self) -> dict[str, Any]:
        return {
            "status": "healthy",
            "uptime_seconds": 3600.0,
            "model_loaded": True,
            "predictions_served": self.total,
            "last_prediction": self._stamp,
            "model": {"name": "fleetcast-tft", "version": "3", "run_id": "standin", "source": "standin"},
            "servers_tracked": self._n,
            "records_stored": self._n * ENCODER_STEPS,
            "last_feed_time": self._stamp,
            "demo_fleet": self.demo_fleet,
        }

    def _route(self, method: str, path: str, query: str, body: bytes) -> tuple[int, bytes]:
        if method == "GET":
            if path == "/health":
                return 200, json.dumps(self._health()).encode()
            if path == "/readyz":
                return 200, b'{"status":"ready"}'
            if path == "/predictions":
                return 200, self._pred_full if "include_history=true" in query else self._pred_short
            if path.startswith("/predictions/"):
                one = self._by_name.get(path.removeprefix("/predictions/"))
                if one is None:
                    return 404, json.dumps({"detail": f"unknown server {path.rsplit('/', 1)[-1]!r}"}).encode()
                return 200, json.dumps(one).encode()
            if path == "/alerts":
                return 200, self._alerts
            if path == "/scenario":
                answer = {**self.scenario, "demo_fleet": self.demo_fleet, "available": SCENARIOS}
                return 200, json.dumps(answer).encode()
        if method == "POST" and path == "/scenario/set":
            if not self.demo_fleet:
                return 409, b'{"detail":"the demo fleet is off (FLEETCAST_DEMO_FLEET=1 turns it on)"}'
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                return 400, b'{"detail":"body: malformed JSON"}'
            if req.get("scenario") not in SCENARIOS:
                return 422, json.dumps({"detail": f"scenario: unknown {req.get('scenario')!r}"}).encode()
            self.scenario = {
                "scenario": req["scenario"],
                "servers": list(req.get("servers") or []),
                "duration_hours": req.get("duration_hours", 24),
                "started_at": self._stamp,
                "expires_at": None,
            }
            answer = {"status": "success", **{k: self.scenario[k] for k in ("scenario", "duration_hours", "servers")}}
            return 200, json.dumps(answer).encode()
        return 404, b'{"detail":"Not Found"}'

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, method: str) -> None:
                parts = urlsplit(self.path)
                with service._lock:
                    service.counts[f"{method} {parts.path}"] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload = service._route(method, parts.path, parts.query, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("standin: " + format, *args)

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve canned fleetcast API answers for the dashboard.")
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-demo", action="store_true", help="answer as if the demo fleet were off")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    service = StandinService(args.servers, demo_fleet=not args.no_demo, port=args.port)
    log.info("stand-in service with %d servers on %s", args.servers, service.url)
    try:
        service._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service._server.server_close()


if __name__ == "__main__":
    main()
