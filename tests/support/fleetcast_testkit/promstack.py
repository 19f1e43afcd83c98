"""Real peers for the alert-delivery and exposition tests, on free loopback ports, stopped after.

- :class:`Alertmanager`: Debian's ``prometheus-alertmanager`` (temp storage, no cluster);
- :class:`Prometheus`: Debian's ``prometheus`` (temp TSDB), scraping whatever its config says;
- :class:`Command`: any other peer binary by its command line (node_exporter, collectd, ...);
  all three are a :class:`PeerProcess` (log in its work dir, ready check, stopped on exit);
- :class:`Receiver`: a small HTTP server that records the JSON bodies POSTed to it (a webhook receiver:
  what Alertmanager or fleetcast's webhook delivery send), and can answer with a chosen status;
- :class:`LiveService`: an ASGI app (the real fleetcast service) under uvicorn on a loopback port, so
  that peers can reach it over HTTP.

``make debian-packages`` installs the two binaries on CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from fleetcast_testkit import free_port

ALERTMANAGER_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
PROMETHEUS_BIN = shutil.which("prometheus")
PROMTOOL_BIN = shutil.which("promtool")
AMTOOL_BIN = shutil.which("amtool")


def require(binary: str | None, package: str) -> str:
    """The binary's path; a clear failure (not a skip) naming the Debian package when it is missing."""
    if binary is None:
        raise RuntimeError(f"{package} is not installed: `make debian-packages` installs it")
    return binary


class PeerProcess:
    """A peer process in a session of its own, its log at ``<workdir>/<name>.log``; ready when
    ``GET <url><ready_path>`` answers 200 (at once when ``ready_path`` is None); stopped on exit."""

    name = "peer"
    ready_path: str | None = "/-/ready"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> PeerProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            if self.ready_path is None:
                return self
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready on {self.url} within {timeout} s: {self.tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Command(PeerProcess):
    """Any peer given by its command line ``argv`` (``port``: where it listens, if it does)."""

    def __init__(self, name: str, argv: list[str], workdir: Path, port: int | None = None,
                 ready_path: str | None = None) -> None:
        self.name = name
        self.ready_path = ready_path
        self._argv = list(argv)
        super().__init__(workdir, port)

    def argv(self) -> list[str]:
        return self._argv


class Alertmanager(PeerProcess):
    name = "alertmanager"

    def __init__(self, workdir: Path, port: int | None = None, config: str | None = None) -> None:
        super().__init__(workdir, port)
        self.config = config or 'route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n'

    def argv(self) -> list[str]:
        config = self.workdir / "alertmanager.yml"
        config.write_text(self.config)
        (self.workdir / "data").mkdir(exist_ok=True)
        return [require(ALERTMANAGER_BIN, "prometheus-alertmanager"), f"--config.file={config}",
                f"--storage.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=", "--log.level=warn"]

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` (active ones: Alertmanager hides alerts whose ``endsAt`` has passed),
        those whose labels include ``labels``."""
        found = httpx.get(self.url + "/api/v2/alerts", timeout=10).raise_for_status().json()
        return [a for a in found if all(a["labels"].get(k) == v for k, v in labels.items())]


class Prometheus(PeerProcess):
    name = "prometheus"

    def __init__(self, workdir: Path, config: str, rules: str | None = None, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.config = config
        self.rules = rules

    def argv(self) -> list[str]:
        if self.rules is not None:
            (self.workdir / "rules.yml").write_text(self.rules)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config)
        return [require(PROMETHEUS_BIN, "prometheus"), f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn"]

    def api(self, path: str, **params: str) -> Any:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).raise_for_status().json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant PromQL query over the HTTP API: the vector's elements."""
        return self.api("query", query=expr)["result"]


class Receiver:
    """Records the JSON bodies POSTed to it, by path; answers ``status`` (200 unless told otherwise)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 200
        self.received: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = receiver.status
                if status < 300:
                    with receiver._lock:
                        receiver.received.append((self.path, json.loads(body or b"null")))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self, path: str | None = None) -> list[Any]:
        with self._lock:
            return [b for p, b in self.received if path is None or p == path]

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LiveService:
    """``asgi_app`` (the real service) under uvicorn on ``http://127.0.0.1:<port>``, lifespan and all.

    The service reads its settings from the environment when its lifespan starts (here)."""

    def __init__(self, asgi_app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=self.port, lifespan="on",
                                                     log_level="warning", access_log=False))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> LiveService:
        self._thread = threading.Thread(target=self._server.run, name="live-service", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=60)

    def __enter__(self) -> LiveService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
