"""Dashboard benchmark: server-side time of a heatmap metric switch with 1,000 servers (target < 50 ms).

    make bench-dashboard                       # stand-in service with 1,000 synthetic servers
    .venv/bin/python tests/benchmarks/bench_dashboard.py --servers 1000 --switches 40
    .venv/bin/python tests/benchmarks/bench_dashboard.py --url http://localhost:8000   # a running service
    .venv/bin/python tests/benchmarks/bench_dashboard.py --live   # starts and feeds a real bentoml serve

By default the data comes from ``dashboard.standin`` (canned answers of exactly the agreed API shape over
real HTTP: 1,000 servers × 288 steps of history and 96 steps × 3 quantiles × 4 metrics of forecast). The
app runs in-process under ``streamlit.testing.v1.AppTest``; a switch is timed by the app itself (the
whole script run, ``fleetcast_run_ms`` in session state) and, for reference, from setting the selectbox
to the end of AppTest's round trip. AppTest reruns the WHOLE script (in a browser only the heatmap
fragment reruns), so the figure is an upper bound of the server-side cost. Browser drawing is
not included. Also printed: the first load (4 GETs, JSON parsing, first render) and the requests sent
during the switches (must be 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import httpx
import pandas as pd
from streamlit.testing.v1 import AppTest

from dashboard.client import FleetcastClient, request_count
from dashboard.session import HEATMAP_KEY, HEATMAP_MS_KEY, RUN_MS_KEY
from dashboard.standin import StandinService
from models import simulator
from models.schema import METRICS

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
TARGET_MS = 50.0


def bench(url: str, switches: int) -> None:
    os.environ["FLEETCAST_API_URL"] = url
    os.environ["FLEETCAST_DASHBOARD_REFRESH_SECONDS"] = "3600"
    size = len(httpx.get(f"{url}/predictions", params={"include_history": "true"}, timeout=120).content)
    started = time.perf_counter()
    snap = FleetcastClient(url).fetch_snapshot()
    fetch_s = time.perf_counter() - started
    started = time.perf_counter()
    for metric in METRICS:
        snap.fleet.heatmap(metric)
    matrices_s = time.perf_counter() - started

    at = AppTest.from_file(str(APP), default_timeout=300)
    started = time.perf_counter()
    at.run()
    first_s = time.perf_counter() - started
    if at.exception:
        raise SystemExit(f"the app raised: {[e.value for e in at.exception]}")
    n_rows = len(at.session_state[HEATMAP_KEY]["servers"])

    # one warm-up pass over the metrics (first use of each metric computes its matrix once), then timed
    order = [*METRICS[1:], METRICS[0]]
    for metric in order:
        at.selectbox(key="heatmap_metric").set_value(metric).run()
    before = request_count()
    times_ms, script_ms, fragment_ms = [], [], []
    for i in range(switches):
        metric = order[i % len(order)]
        t0 = time.perf_counter()
        at.selectbox(key="heatmap_metric").set_value(metric).run()
        times_ms.append((time.perf_counter() - t0) * 1000)
        script_ms.append(at.session_state[RUN_MS_KEY])
        fragment_ms.append(at.session_state[HEATMAP_MS_KEY])
        assert at.session_state[HEATMAP_KEY]["metric"] == metric
    sent = request_count() - before

    median = statistics.median(script_ms)
    p90 = sorted(script_ms)[int(0.9 * (len(script_ms) - 1))]
    print(f"servers in the heatmap:            {n_rows}")
    print(f"/predictions?include_history size:  {size / 1e6:.1f} MB")
    print(f"one refresh (4 GETs + parse):       {fetch_s * 1000:.0f} ms")
    print(f"4 heatmap matrices (once/refresh):  {matrices_s * 1000:.0f} ms")
    print(f"first page load (AppTest run):      {first_s * 1000:.0f} ms")
    print(f"metric switch, full script rerun:   median {median:.1f} ms, p90 {p90:.1f} ms ({switches} switches)")
    print(f"  heatmap fragment alone (browser): median {statistics.median(fragment_ms):.1f} ms")
    print(f"  same, incl. AppTest round trip:   median {statistics.median(times_ms):.1f} ms")
    print(f"requests sent during the switches:  {sent}")
    print(f"target < {TARGET_MS:.0f} ms: {'met' if median < TARGET_MS else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=1000, help="servers in the stand-in service")
    parser.add_argument("--switches", type=int, default=40, help="timed metric switches")
    parser.add_argument("--url", help="benchmark against this running service instead of the stand-in")
    parser.add_argument("--live", action="store_true",
                        help="start a real `bentoml serve` (the MLflow champion, else an untrained default-size TFT), "
                             "feed it --servers servers x 24 h over HTTP and benchmark against it")
    args = parser.parse_args()
    if args.live:
        import bench_serve  # beside this script: one way to start, feed and stop a real service

        forecaster, described = bench_serve.load_model()
        end = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("5min")
        base = simulator.LiveFleet(servers=simulator.default_servers(100), seed=11, start=end).history()
        with bench_serve.serving(forecaster) as client:
            bench_serve.feed_and_wait(client, bench_serve.fleet_history(args.servers, end, base))
            print(f"data: a real `bentoml serve` with {args.servers} servers fed over HTTP; model: {described}")
            bench(str(client.base_url).rstrip("/"), args.switches)
        return
    if args.url:
        print(f"data: the service at {args.url}")
        bench(args.url.rstrip("/"), args.switches)
        return
    print(f"data: stand-in service (dashboard.standin) with {args.servers} synthetic servers")
    with StandinService(n_servers=args.servers) as service:
        bench(service.url, args.switches)


if __name__ == "__main__":
    main()
