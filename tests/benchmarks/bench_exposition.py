"""Benchmark: what the Prometheus exposition and the alert delivery add to a refresh and cost per scrape.

Run with ``.venv/bin/python tests/benchmarks/bench_exposition.py [--servers 1000 10000]``. For each fleet
size: ``GET /predictions`` entries built by the service's own ``build_entry`` from forecasts of the
synthetic forecaster (the stand-in's; no model: the figures are the exposition's, not the TFT's), then

- ``ForecastExposition.update``: the work added to a refresh of every server, and of 1 % of them;
- ``render``: a scrape after such a refresh (prometheus_client renders the refreshed servers' lines; the
  others' are kept), a repeated scrape (cached), and a first scrape filtered to one server prefix;
- ``AlertDelivery.observe``: the work added to each refresh by the alert delivery (no target: the diff
  and the Alertmanager mapping of every active alert), with one alert per server.

Prints the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from fleetcast_testkit.standin import SyntheticForecaster  # noqa: E402

from models import alerts, simulator  # noqa: E402
from serving.delivery import AlertDelivery  # noqa: E402
from serving.exposition import ForecastExposition  # noqa: E402
from serving.forecasting import build_entry, rule_thresholds  # noqa: E402


def entries_for(n_servers: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    fleet = simulator.LiveFleet(servers=simulator.default_servers(n_servers), seed=0, history_steps=24)
    history = fleet.history()
    forecasts = SyntheticForecaster().forecast(history)
    config = alerts.load_config()
    by_server = dict(tuple(history.groupby("server_name", sort=False)))
    entries, active = [], []
    for name, fc in forecasts.items():
        h = by_server[name]
        entry = build_entry(fc, h, [], rule_thresholds(config, fc.profile))
        entries.append({k: v for k, v in entry.items() if k != "history"})
        active.append({"server_name": name, "profile": fc.profile, "alert_type": "memory_exhaustion_predicted",
                       "severity": "high", "level": "warning", "message": "Memory expected to reach 85% in 3 hours",
                       "timestamp": "2025-10-12T21:40:05", "first_seen": "2025-10-12T21:10:05",
                       "prediction_time": "2025-10-13T00:40:00", "metric": "memory_percent", "threshold": 85.0,
                       "current_value": 70.0, "predicted_value": 85.2, "probability": 0.55, "hours_to_breach": 3.0})
    return entries, active


def best(repeat: int, fn: Any) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    model = {"name": "fleetcast-tft", "version": "synthetic", "run_id": None}
    for n in args.servers:
        entries, active = entries_for(n)
        exp = ForecastExposition()
        update = best(args.repeat, lambda e=exp, en=entries: e.update(en, [], model, "2025-10-12T21:40:05"))
        some = entries[: max(1, n // 100)]
        update_some = best(args.repeat, lambda e=exp, en=some: e.update(en, [], model, "2025-10-12T21:40:05"))

        def scrape_after(refreshed: list[dict[str, Any]], e: ForecastExposition = exp) -> None:
            e.update(refreshed, [], model, "2025-10-12T21:40:05")
            e.render()

        render_all = best(args.repeat, lambda en=entries: scrape_after(en)) - update
        render_some = best(args.repeat, lambda en=some: scrape_after(en)) - update_some
        body = exp.render()
        cached = best(args.repeat, exp.render)
        prefix = entries[0]["server_name"].split("-")[0]
        share = sum(e["server_name"].startswith(prefix) for e in entries) / len(entries)
        exp.update(entries, [], model, "2025-10-12T21:40:05")
        filtered = best(1, lambda e=exp, p=prefix: e.render(server=p))  # its servers' lines rendered anew

        def observe(a: list[dict[str, Any]] = active) -> None:
            AlertDelivery().observe(a)  # a fresh delivery: every alert opens (the most work per refresh)

        deliver = best(args.repeat, observe)
        series = sum(1 for line in body.splitlines() if not line.startswith(b"#"))
        print(f"{n:,} servers: {series:,} series, {len(body) / 1e6:.1f} MB")
        print(f"  exposition update, every server refreshed: {update * 1000:8.1f} ms")
        print(f"  exposition update, 1 % refreshed:          {update_some * 1000:8.1f} ms")
        print(f"  scrape after every server was refreshed:   {render_all * 1000:8.1f} ms")
        print(f"  scrape after 1 % was refreshed:            {render_some * 1000:8.1f} ms")
        print(f"  scrape again, no refresh between (cached): {cached * 1e6:8.1f} us")
        print(f"  first scrape ?server={prefix}- ({share:.0%} of servers): {filtered * 1000:8.1f} ms")
        print(f"  delivery observe, {len(active):,} alerts:         {deliver * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
