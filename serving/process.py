"""The service's processes: a worker ends with its parent, and a port's stale listener is named.

BentoML 1.4 runs the service in worker processes that circus starts with ``setsid()``: each sits in a
session of its own, outside the process group of ``bentoml serve``. A ``kill -9`` of that group (a
supervisor giving up, an OOM kill of the parent, Ctrl-\\ in a terminal) used to leave the worker running,
re-parented to init, still holding the port and acknowledging writes with the old settings, and the
next ``bentoml serve`` failed with "Address already in use". BentoML offers nothing for this (no
parent-death option in its worker or in circus), so :func:`exit_with_parent` does it in the worker:

- ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` (Linux): the kernel sends SIGTERM when the parent dies, and
  uvicorn shuts down as on any SIGTERM (closes the listener at once, then lets requests finish);
- a watch thread as the fallback for other platforms and for a SIGTERM that does not end the process:
  when the parent changes it sends SIGTERM itself, and ends the process after a grace period.

Every acknowledged record is already on disk (the store fsyncs each batch), so ending a worker never
loses data.

:func:`listener_on` finds who listens on a TCP port (pid and command line), so ``fleetcast serve`` and
``fleetcast demo`` can say which process holds a port instead of failing later in BentoML's arbiter.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import psutil

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
GRACE_SECONDS = 15.0  # after SIGTERM, how long the watch thread lets a shutdown run before it ends the process


def _set_parent_death_signal(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)`` through libc; False where that does not exist (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, interval: float, grace: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    logger.warning("parent process %d is gone: this worker stops too", parent)
    with contextlib.suppress(ProcessLookupError):
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    logger.error("still running %.0f s after SIGTERM: ending the process", grace)
    os._exit(1)


def exit_with_parent(interval: float = 1.0, grace: float = GRACE_SECONDS) -> bool:
    """Make this process stop when its parent dies; True when it set up a watch.

    Nothing to watch when the parent is init (pid 1): in a container ``bentoml serve`` itself may be
    pid 1, and its death ends the container anyway.
    """
    parent = os.getppid()
    if parent <= 1:
        return False
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent, interval, grace), name="fleetcast-parent-watch",
                     daemon=True).start()
    return True


@dataclass(frozen=True)
class Listener:
    pid: int | None
    command: str

    def describe(self) -> str:
        if self.pid is None:
            return "a process this user cannot see"
        return f"pid {self.pid} ({self.command})"


def listener_on(port: int, host: str = "0.0.0.0") -> Listener | None:  # what `bentoml serve` binds
    """The process listening on TCP ``port`` in a way that clashes with a bind to ``host``, or None."""
    wildcard = host in ("0.0.0.0", "::", "")
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        connections = []
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        bound = conn.laddr.ip
        if not (wildcard or bound in ("0.0.0.0", "::", host)):
            continue
        if conn.pid is None:
            return Listener(None, "")
        try:
            command = " ".join(psutil.Process(conn.pid).cmdline()) or psutil.Process(conn.pid).name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            command = "?"
        return Listener(conn.pid, " ".join(command.split())[:200])  # one line, however it was started
    return None


def port_taken_message(port: int, listener: Listener, what: str = "the fleetcast service") -> str:
    return (f"port {port} is already in use by {listener.describe()}: cannot start {what} there. "
            f"If that is a service left from an earlier run, stop it (kill {listener.pid or '<pid>'}); "
            "otherwise choose another port.")
