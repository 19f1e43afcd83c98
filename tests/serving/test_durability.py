"""A hard kill of a real `fleetcast serve` (`bentoml serve` of the checkout): acknowledged records survive, no
process is left listening, a restart on the same port works; a port already taken is named at start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fleetcast_testkit import free_port
from fleetcast_testkit.serve import (
    PROJECT_ROOT,
    fleetcast_serve_command,
    kill_group,
    listening,
    served,
    wait_until,
)

from serving.store import FeedStore

pytestmark = pytest.mark.slow


def test_kill_9_of_the_group_leaves_nothing_listening_and_loses_no_acknowledged_record(
        service_env: Path, h: Any) -> None:
    """`kill -9 -<pgid>` of the server: BentoML's worker sits in a session of its own, so the group kill
    does not reach it; it must end with its parent (serving/process.py) and free the port, and a new
    server on the same port must come up with every acknowledged record."""
    log = service_env / "serve.log"
    port = free_port()
    items = h.fleet_items(n_servers=3, steps=288)
    batches = [items[i:i + 200] for i in range(0, len(items), 200)]
    env = dict(os.environ)
    with served(log, env, port=port, command=fleetcast_serve_command("127.0.0.1", port)) as server:
        acknowledged = 0
        for batch in batches:
            r = httpx.post(f"{server.url}/feed/data", json={"records": batch}, timeout=30)
            assert r.status_code == 200, r.text
            acknowledged += r.json()["records_processed"]
        workers = server.worker_pids()
        assert workers, "BentoML started no worker process"
        assert all(os.getsid(pid) != os.getsid(server.proc.pid) for pid in workers)  # outside the group's session
        kill_group(server.proc)  # no shutdown hook of the server, no flush
        assert wait_until(lambda: not listening(port), timeout=20), \
            f"still listening after kill -9 of the group: {listening(port)}\n{server.log_tail()}"
        assert wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                          for p in workers), timeout=30), "the worker outlived its parent"

    assert acknowledged == len(items)
    store = FeedStore()
    assert store.count() == acknowledged  # on disk, straight after the kill
    store.dispose()

    with served(log, env, port=port, command=fleetcast_serve_command("127.0.0.1", port)) as server:  # same port
        health = httpx.get(f"{server.url}/health", timeout=10).json()
        assert health["records_stored"] == acknowledged and health["model_loaded"] is True
        preds = httpx.get(f"{server.url}/predictions", timeout=60).json()["predictions"]
        assert sorted(p["server_name"] for p in preds) == sorted({i["server_name"] for i in items})
        assert all(p["history_steps"] == 288 for p in preds)


def test_a_taken_port_is_named_at_start(service_env: Path) -> None:
    """Something already listens on the port (here a plain socket of a child process, as a stale service
    would): `fleetcast serve` refuses at once and names its pid and command line."""
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time\n"
         f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); print('up', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"up"
        out = subprocess.run(fleetcast_serve_command("127.0.0.1", port), cwd=PROJECT_ROOT, env=dict(os.environ),
                             capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode != 0
        message = out.stderr.strip().splitlines()[-1]
        assert f"port {port} is already in use by pid {holder.pid}" in message, out.stderr[-2000:]
        assert "import socket" in message and f"kill {holder.pid}" in message
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the holder still has the port: nothing was started on top of it
    finally:
        holder.kill()
        holder.wait(timeout=10)
