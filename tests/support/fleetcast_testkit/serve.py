"""A real `bentoml serve` (or `fleetcast serve`) of the checkout, in a process group of its own, for the tests
that need the real server: uvicorn as BentoML runs it, the worker process, real sockets.

:func:`served` starts it, waits for ``/readyz`` and always stops it: SIGTERM to its group, then SIGKILL to
whatever of its process tree is left (recorded while it ran: BentoML's workers sit in sessions of
their own). :func:`kill_group` is the hard kill the durability tests need (``kill -9 -<pgid>``).
:func:`service_env` is the environment of a server whose state all lives in one directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from fleetcast_testkit import free_port

if TYPE_CHECKING:
    import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path
    family: list[psutil.Process] = field(default_factory=list)  # the server's process tree once ready

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.family if p.pid != self.proc.pid]


def service_env(state: Path, **overrides: str) -> dict[str, str]:
    """This process's environment with the service's state under ``state`` (data dir, BentoML home, feed
    store) and no demo fleet; ``overrides`` (e.g. ``FLEETCAST_MODEL_PATH``) are set last."""
    return {**os.environ, "FLEETCAST_DATA_DIR": str(state), "BENTOML_HOME": str(state / "bentoml"),
            "FLEETCAST_STORE_URL": f"sqlite:///{state / 'feed.db'}", "FLEETCAST_DEMO_FLEET": "0", **overrides}


def wire_items(frame: pd.DataFrame, decimals: int) -> list[dict[str, Any]]:
    """Contract records as a shipper posts them (``serving.demo_fleet.frame_to_items``), metrics rounded to
    ``decimals`` places to keep benchmark requests small."""
    from models import schema
    from serving.demo_fleet import frame_to_items

    out = frame[list(schema.COLUMNS)].copy()
    for m in schema.METRICS:
        out[m] = out[m].astype(float).round(decimals)
    return frame_to_items(out)


def bentoml_command(host: str, port: int) -> list[str]:
    return [str(Path(sys.executable).with_name("bentoml")), "serve", "--host", host, "--port", str(port)]


def fleetcast_serve_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "orchestration.cli", "serve", "--host", host, "--port", str(port)]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """``kill -9`` of the server's process group (what a supervisor or an OOM kill of the group does)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def listening(port: int) -> list[int]:
    """Pids listening on TCP ``port`` (any address)."""
    return sorted({c.pid or -1 for c in psutil.net_connections(kind="tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port})


def wait_until(predicate: object, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


def _stop(served: Served) -> None:
    proc = served.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # graceful: the arbiter stops its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(proc)
    alive = [p for p in served.family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    _, alive = psutil.wait_procs(alive, timeout=20)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@contextlib.contextmanager
def served(log: Path, env: dict[str, str], port: int | None = None, host: str = "127.0.0.1",
           command: Sequence[str] | None = None, url_host: str | None = None,
           timeout: float = 180.0) -> Iterator[Served]:
    """`bentoml serve` of the checkout on ``host:port`` (a free loopback port by default) with ``env``;
    ``command`` replaces the command line (e.g. ``ip netns exec <ns> ...``); ``url_host`` is where the test
    reaches it (default ``host``)."""
    port = port or free_port()
    cmd = list(command) if command is not None else bentoml_command(host, port)
    url = f"http://{url_host or host}:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    server = Served(proc, url, port, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready in {timeout} s:\n{server.log_tail()}")
            time.sleep(0.5)
        root = psutil.Process(proc.pid)
        server.family = [root, *root.children(recursive=True)]
        yield server
    finally:
        _stop(server)
