"""Dashboard benchmark: server-side time of a heatmap metric switch with 1,000 servers (target < 50 ms).

    make bench-dashboard                       # a real `bentoml serve`, 1,000 servers fed over HTTP
    .venv/bin/python tests/benchmarks/bench_dashboard.py --servers 1000 --switches 40   # the stand-in
    .venv/bin/python tests/benchmarks/bench_dashboard.py --url http://localhost:8000   # a running service
    .venv/bin/python tests/benchmarks/bench_dashboard.py --live   # starts and feeds a real bentoml serve

Without ``--live``/``--url`` the data comes from the stand-in (``tests/support/fleetcast_testkit/standin.py``:
the real service in-process with a synthetic forecaster, over real HTTP: 1,000 servers × 288 steps of
history and 96 steps × 3 quantiles × 4 metrics of forecast). The app runs in-process under
``streamlit.testing.v1.AppTest``; a switch is timed inside the script run (from the app fetching its
snapshot to the end of its last section, by wrapping ``dashboard.session.current_snapshot`` and
``dashboard.views.render_demo``; the heatmap section alone by wrapping ``dashboard.views.render_heatmap``)
and, for reference, from setting the selectbox to the end of AppTest's round trip. AppTest reruns the
WHOLE script (in a browser only the heatmap fragment reruns), so the figure is an upper bound of the
server-side cost. Browser drawing is not included. Also printed: the first load (4 GETs, JSON parsing,
first render) and the requests sent during the switches (must be 0).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # fleetcast_testkit
from fleetcast_testkit import count_dashboard_requests  # noqa: E402
from fleetcast_testkit.standin import StandinService, build_asgi_app  # noqa: E402

from dashboard import session, views  # noqa: E402
from dashboard.client import FleetcastClient  # noqa: E402
from dashboard.session import HEATMAP_KEY  # noqa: E402
from models import simulator  # noqa: E402
from models.schema import METRICS  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
TARGET_MS = 50.0


class ScriptTimer:
    """Server-side milliseconds of the app's last script run and of its heatmap section, measured by
    wrapping the functions the script calls (the app itself keeps no timers)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.run_ms = 0.0
        self.heatmap_ms = 0.0

    @contextmanager
    def installed(self) -> Iterator[ScriptTimer]:
        originals = (session.current_snapshot, views.render_demo, views.render_heatmap)

        def wrap(fn: Callable[..., Any], before: Callable[[], None] | None,
                 after: Callable[[float], None] | None) -> Callable[..., Any]:
            @functools.wraps(fn)
            def timed(*args: Any, **kwargs: Any) -> Any:
                if before:
                    before()
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if after:
                        after(t0)
            return timed

        def start() -> None:
            self.started = time.perf_counter()

        def end(_t0: float) -> None:
            self.run_ms = (time.perf_counter() - self.started) * 1000

        def heatmap(t0: float) -> None:
            self.heatmap_ms = (time.perf_counter() - t0) * 1000

        session.current_snapshot = wrap(originals[0], start, None)
        views.render_demo = wrap(originals[1], None, end)
        views.render_heatmap = wrap(originals[2], None, heatmap)
        try:
            yield self
        finally:
            session.current_snapshot, views.render_demo, views.render_heatmap = originals


def bench(url: str, switches: int) -> None:
    with ScriptTimer().installed() as timer, count_dashboard_requests() as sent:
        _bench(url, switches, timer, sent)


def _bench(url: str, switches: int, timer: ScriptTimer, sent: Any) -> None:
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
    before = sent.total
    times_ms, script_ms, fragment_ms = [], [], []
    for i in range(switches):
        metric = order[i % len(order)]
        t0 = time.perf_counter()
        at.selectbox(key="heatmap_metric").set_value(metric).run()
        times_ms.append((time.perf_counter() - t0) * 1000)
        script_ms.append(timer.run_ms)
        fragment_ms.append(timer.heatmap_ms)
        assert at.session_state[HEATMAP_KEY]["metric"] == metric
    sent_during = sent.total - before

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
    print(f"requests sent during the switches:  {sent_during}")
    print(f"target < {TARGET_MS:.0f} ms: {'met' if median < TARGET_MS else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=1000, help="servers in the fleet")
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
    print(f"data: stand-in (the service in-process with a synthetic forecaster), {args.servers} demo-fleet servers")
    with StandinService(build_asgi_app(), n_servers=args.servers) as service:
        bench(service.url, args.switches)


if __name__ == "__main__":
    main()
