"""Acknowledged records survive a hard kill (SIGKILL) of a real `bentoml serve` and a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fleetcast_testkit import free_port

from models import config
from serving.store import FeedStore

pytestmark = pytest.mark.slow


def hard_kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and every process it started (BentoML workers run in their own sessions)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
    proc.wait(timeout=30)


@contextmanager
def bentoml_serve(log: Path, timeout: float = 180.0) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`bentoml serve` from the repository root (service named by pyproject's [tool.bentoml.build]),
    always stopped, with its workers, on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    with log.open("ab") as out:
        proc = subprocess.Popen([str(bentoml_cli), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=config.PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ))
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"bentoml serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"bentoml serve not ready in {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc, url
    finally:
        if proc.poll() is None:
            workers = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGTERM)  # graceful: the arbiter stops its workers
            try:
                proc.wait(timeout=30)
                psutil.wait_procs(workers, timeout=15)
            except subprocess.TimeoutExpired:
                pass
            for p in workers:
                if p.is_running():
                    p.send_signal(signal.SIGKILL)
            if proc.poll() is None:
                hard_kill(proc)


def test_acknowledged_records_survive_sigkill_and_restart(service_env: Path, h: Any) -> None:
    log = service_env / "serve.log"
    items = h.fleet_items(n_servers=3, steps=288)
    batches = [items[i:i + 200] for i in range(0, len(items), 200)]
    with bentoml_serve(log) as (proc, url):
        acknowledged = 0
        for batch in batches:
            r = httpx.post(f"{url}/feed/data", json={"records": batch}, timeout=30)
            assert r.status_code == 200, r.text
            acknowledged += r.json()["records_processed"]
        worker_pids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert worker_pids
        hard_kill(proc)  # kill -9 of the server and its worker: no shutdown hook, no flush
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                       for pid in worker_pids)

    assert acknowledged == len(items)
    store = FeedStore()
    assert store.count() == acknowledged  # on disk, straight after the kill
    store.dispose()

    with bentoml_serve(log) as (_, url):
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["records_stored"] == acknowledged and health["model_loaded"] is True
        preds = httpx.get(f"{url}/predictions", timeout=60).json()["predictions"]
        assert sorted(p["server_name"] for p in preds) == sorted({i["server_name"] for i in items})
        assert all(p["history_steps"] == 288 for p in preds)
