"""The `fleetcast` command: what users type.

    fleetcast pipeline [--retrain]   materialize the whole asset graph once (dataset → champion → Bento model)
    fleetcast demo [--retrain]       pipeline (unless a packaged champion exists), then start every service:
                                     Dagster :3000, MLflow :5000, BentoML :8000 (demo fleet on), Streamlit :8501
    fleetcast serve [--host H] [--port P] [bentoml serve options]
                                     only the inference service (`bentoml serve` of this checkout), after
                                     checking that nothing listens on the port (a stale service is named)

Every start first checks its ports: a port already taken fails at once with the pid and command line of
the process holding it (a service left over from an earlier run, typically), instead of a later
"Address already in use" deep in BentoML's arbiter.

All state goes to the embedded defaults of models/config.py (./data), each overridable by environment.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from models import config

log = logging.getLogger("fleetcast")

PORTS = {"dagster": 3000, "mlflow": 5000, "service": 8000, "dashboard": 8501}


def service_env() -> dict[str, str]:
    """The environment every child process shares, so all of them see the same state."""
    env = dict(os.environ)
    env.setdefault("DAGSTER_HOME", str(config.dagster_home()))
    env.setdefault("BENTOML_HOME", str(config.bentoml_home()))
    env.setdefault("MLFLOW_TRACKING_URI", config.mlflow_tracking_uri())
    env.setdefault("FLEETCAST_STORE_URL", config.store_url())
    env.setdefault("FLEETCAST_API_URL", f"http://localhost:{PORTS['service']}")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _bin(name: str) -> str:
    """An executable of this virtual environment (beside the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def packaged_champion_exists() -> bool:
    """True when BentoML's model store (under BENTOML_HOME) already holds a packaged champion."""
    from serving.model_store import has_model

    return has_model()


def run_pipeline() -> None:
    """Materialize every asset once, recorded in the Dagster instance so the UI shows the runs."""
    import dagster as dg

    from orchestration.definitions import defs

    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def("full_pipeline")
    result = job.execute_in_process(instance=instance)
    if not result.success:
        raise SystemExit("pipeline failed: see the Dagster run logs above")
    log.info("pipeline finished: run %s", result.run_id)


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
                if resp.status < 500:
                    return True
        except OSError:
            time.sleep(1)
    return False


def check_ports(ports: dict[str, int], host: str = "0.0.0.0") -> None:
    """SystemExit naming the process (pid, command) that holds any of ``ports``."""
    from serving.process import listener_on, port_taken_message

    for name, port in ports.items():
        listener = listener_on(port, host)
        if listener is not None:
            raise SystemExit(port_taken_message(port, listener, what=name))


def serve(host: str, port: int, extra: list[str]) -> None:
    """Replace this process with `bentoml serve` of this checkout (same pid: a signal to `fleetcast serve`,
    or to its process group, reaches BentoML), after the port check."""
    check_ports({"the fleetcast service": port}, host)
    env = service_env()
    env.pop("FLEETCAST_API_URL", None)  # the dashboard's setting, not the service's
    os.chdir(config.PROJECT_ROOT)
    bentoml = _bin("bentoml")
    os.execve(bentoml, [bentoml, "serve", "--host", host, "--port", str(port), *extra], env)


def start_services(env: dict[str, str]) -> list[subprocess.Popen]:
    check_ports(PORTS)
    root = str(config.PROJECT_ROOT)
    service_env_ = {**env, "FLEETCAST_DEMO_FLEET": env.get("FLEETCAST_DEMO_FLEET", "1")}
    commands = {
        "dagster": [_bin("dg"), "dev", "-w", "workspace.yaml", "-p", str(PORTS["dagster"])],
        "mlflow": [
            _bin("mlflow"),
            "ui",
            "--backend-store-uri",
            env["MLFLOW_TRACKING_URI"],
            "--host",
            "127.0.0.1",
            "--port",
            str(PORTS["mlflow"]),
        ],
        "service": [_bin("bentoml"), "serve", "--port", str(PORTS["service"])],
        "dashboard": [
            _bin("streamlit"),
            "run",
            "dashboard/app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(PORTS["dashboard"]),
            "--browser.gatherUsageStats",
            "false",
        ],
    }
    procs = []
    for name, cmd in commands.items():
        log.info("starting %s: %s", name, " ".join(cmd))
        procs.append(
            subprocess.Popen(cmd, cwd=root, env=service_env_ if name == "service" else env, start_new_session=True)
        )
    return procs


def stop(procs: list[subprocess.Popen], timeout: float = 20.0) -> None:
    """SIGTERM each process's group (each was started in a session of its own), SIGKILL what outlives ``timeout``,
    then any process of their trees still running (BentoML's workers, in sessions of their own, end with
    their parent by themselves: serving/process.py; this is the safety net)."""
    import psutil

    family = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            family.extend(psutil.Process(proc.pid).children(recursive=True))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for child in alive:
        log.warning("killing %d (%s), still running after its service stopped", child.pid, child.name())
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def demo(retrain: bool) -> None:
    env = service_env()
    os.environ.update(env)
    if retrain or not packaged_champion_exists():
        run_pipeline()
    else:
        log.info("a packaged champion exists; skipping the pipeline (use --retrain to run it again)")
    procs = start_services(env)
    # Ctrl-C and SIGTERM both stop every service (SIGINT may arrive ignored when started in the background).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        urls = {
            "dagster": f"http://localhost:{PORTS['dagster']}",
            "mlflow": f"http://localhost:{PORTS['mlflow']}",
            "service": f"http://localhost:{PORTS['service']}/health",
            "dashboard": f"http://localhost:{PORTS['dashboard']}",
        }
        for name, url in urls.items():
            state = "up" if _wait_http(url, timeout=180) else "NOT answering yet"
            log.info("%-9s %s  (%s)", name, url, state)
        log.info("fleetcast demo is running; Ctrl-C stops every service")
        while all(p.poll() is None for p in procs):
            time.sleep(2)
        log.error("a service exited; stopping the rest")
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        stop(procs)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(
        prog="fleetcast", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pipeline", "demo"):
        p = sub.add_parser(name)
        p.add_argument("--retrain", action="store_true", help="run the pipeline even if a champion is packaged")
    p = sub.add_parser("serve", help="only the inference service (bentoml serve), after a port check")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (default: all, as bentoml serve)")
    p.add_argument("--port", type=int, default=PORTS["service"])
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "serve":
        serve(args.host, args.port, extra)
    elif args.command == "pipeline":
        os.environ.update(service_env())
        run_pipeline()
    else:
        demo(args.retrain)


if __name__ == "__main__":
    main()
