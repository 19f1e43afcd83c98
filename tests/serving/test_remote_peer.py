"""Without a token, a peer that is not loopback cannot write: a real `bentoml serve` in a network namespace
this test creates, reached from outside it over a veth pair, and from inside it over its own loopback.

The namespace and both addresses exist only for the test (198.18.0.0/15, the range set aside for network
benchmark tests, RFC 2544) and are deleted after it; no traffic leaves this machine. Creating a namespace
needs root (CI runs as root); the same check is tested in-process in test_hardening.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fleetcast_testkit import free_port
from fleetcast_testkit.serve import bentoml_command, served

pytestmark = pytest.mark.slow


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[tuple[str, str, str]]:
    """(namespace, address inside it, address of this side): a namespace joined to this one by a veth pair."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("creating a network namespace needs root and iproute2 (the in-process test covers the check)")
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    octet = next(o for o in random.sample(range(256), 256) if f"198.18.{o}." not in used)
    tag = f"{os.getpid() % 100000}"
    ns, outer, inner = f"fcns{tag}", f"fcv{tag}a", f"fcv{tag}b"
    here, there = f"198.18.{octet}.1", f"198.18.{octet}.2"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("addr", "add", f"{here}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{there}/30", "dev", inner)
        _ip("netns", "exec", ns, "ip", "link", "set", inner, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, there, here
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True, timeout=30, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


INSIDE = """
import httpx, json, sys
r = httpx.post(sys.argv[1] + "/feed/data", json=json.loads(sys.argv[2]), timeout=30)
print(json.dumps({"status": r.status_code, "body": r.json()}))
"""


def test_without_a_token_only_loopback_peers_write(namespace: tuple[str, str, str], service_env: Path,
                                                   h: Any) -> None:
    ns, there, here = namespace
    port = free_port()
    env = dict(os.environ)
    command = ["ip", "netns", "exec", ns, *bentoml_command("0.0.0.0", port)]  # all addresses of the namespace
    with served(service_env / "serve.log", env, port=port, command=command, url_host=there) as server:
        items = h.fleet_items(n_servers=1, steps=12)
        with httpx.Client(transport=httpx.HTTPTransport(local_address=here), timeout=30) as remote:
            r = remote.post(f"{server.url}/feed/data", json=items)
            assert r.status_code == 403, r.text
            assert "loopback" in r.json()["detail"] and "FLEETCAST_API_TOKEN" in r.json()["detail"]
            assert remote.post(f"{server.url}/scenario/set", json={"scenario": "critical"}).status_code == 403
            assert remote.get(f"{server.url}/predictions").status_code == 200  # reads stay open
            # the peer cannot claim to be loopback
            spoofed = remote.post(f"{server.url}/feed/data", json=items, headers={"X-Forwarded-For": "127.0.0.1"})
            assert spoofed.status_code == 403
            assert remote.get(f"{server.url}/health").json()["records_stored"] == 0

        inside = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", INSIDE,
                                 f"http://127.0.0.1:{port}", json.dumps(items)],
                                capture_output=True, text=True, timeout=120, check=True)
        answer = json.loads(inside.stdout.strip().splitlines()[-1])
        assert answer["status"] == 200 and answer["body"]["records_processed"] == len(items)
        health = httpx.get(f"{server.url}/health", timeout=30).json()
        assert health["records_stored"] == len(items) and health["writes"]["refused"]["not_loopback"] == 3
