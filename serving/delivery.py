"""Alert delivery: fleetcast's alerts pushed to Alertmanager (API v2) and to plain JSON webhooks.

The service's alert book decides *what* is firing; this module only tells others, off the forecasting
path. After each refresh :meth:`AlertDelivery.observe` gets the list of active alerts (``GET /alerts``'s
elements) and compares it with the previous one, by Alertmanager's identity of an alert (its label set):

- a new label set is an alert *opened*, a label set gone is an alert *resolved* (``endsAt`` = now); a
  change of a label (``severity`` rises as the breach nears) is therefore the old alert resolved and a
  new one opened, as with a Prometheus rule whose labels change;
- a known label set with other annotations (time to breach, probability, ...) is an *update*.

Each target has a bounded queue of pending notifications and its own daemon thread that posts them,
at most :data:`MAX_BATCH` alerts a request (Prometheus' notifier batch). Opened and resolved alerts are
queued at once; updates travel with the resends. Forecasting never waits on a target.

**Alertmanager** (``FLEETCAST_ALERTMANAGER_URL``, comma-separated for several, each gets every alert as
in Prometheus' ``alertmanagers`` list): ``POST <url>/api/v2/alerts`` with labels ``alertname`` (the
alert type), ``server``, ``metric``, ``severity``, ``profile``, ``level``; annotations ``summary``,
``time_to_breach``, ``probability``, ``breach_time``, ``threshold``, ``current_value``,
``predicted_value`` (and ``explanation`` when the alert has one); ``startsAt`` (when fleetcast opened
it), ``endsAt`` and ``generatorURL`` (``<FLEETCAST_EXTERNAL_URL>/predictions/<server>``). As
Prometheus' rule manager does (``rules/alerting.go``: ``sendAlerts``, ``resolvedRetention``), every
firing alert is re-sent every ``FLEETCAST_ALERT_RESEND_SECONDS`` with ``endsAt`` four resend intervals
ahead (Alertmanager resolves an alert whose ``endsAt`` passes without an update, so a stopped fleetcast
leaves no alert firing for ever), and a resolved alert is re-sent with its ``endsAt`` for 15 minutes.

**Webhook** (``FLEETCAST_ALERT_WEBHOOK_URL``): one JSON POST per batch of opened/resolved alerts, in
Alertmanager's webhook shape (``version`` "4", ``status``, ``alerts`` with ``status``, ``labels``,
``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``, ``fingerprint``, ``commonLabels``, ...),
so receivers written for Alertmanager work unchanged. No resends.

**Failures.** A connection error, a timeout, a 5xx, 408 or 429 keeps the batch queued and retries after
a backoff (1 s doubling up to ``FLEETCAST_ALERT_RETRY_MAX_SECONDS``); another 4xx (the target refuses
the alerts themselves) drops the batch, counted and reported. The queue keeps the latest state per
alert (a newer one replaces the pending one) and holds at most ``FLEETCAST_ALERT_QUEUE_SIZE`` entries:
when full, the oldest *firing* entries are dropped first (a firing alert is re-sent with the next
resend from the active set, so its latest state is not lost); a resolve is never dropped (at most one
per alert, so the queue outgrows its size only by resolves). ``GET /health`` shows each target's
queue, last success and last error; BentoML's ``/metrics`` counts alerts sent, failed and dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from models.alerts import humanize_minutes

logger = logging.getLogger(__name__)

MAX_BATCH = 256  # alerts per request (Prometheus' notifier: DefaultMaxBatchSize)
RESOLVED_RETENTION = timedelta(minutes=15)  # a resolved alert is re-sent this long (Prometheus: resolvedRetention)
RETRY_BASE_SECONDS = 1.0
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's webhook: endsAt of a firing alert

Key = tuple[tuple[str, str], ...]  # an alert's identity in Alertmanager: its sorted label set


def _utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(ts: datetime) -> str:
    """``2025-10-12T21:40:05.000Z`` (UTC, milliseconds), what Alertmanager's API reads and writes."""
    ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _parse_utc(stamp: Any) -> datetime:
    """fleetcast's timestamps (``2025-10-12T21:40:05``, naive UTC) as aware datetimes."""
    ts = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)


def redact(url: str) -> str:
    """``url`` without its credentials (``http://user:secret@am:9093`` -> ``http://am:9093``), for reports."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def split_urls(value: str | None, variable: str = "URL") -> list[str]:
    """A comma-separated list of http(s) URLs (blanks ignored), each without a trailing slash; ValueError
    naming ``variable`` for one that is not an http(s) URL with a host."""
    urls = [u.strip().rstrip("/") for u in (value or "").split(",") if u.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{variable}: {redact(url)!r} is not an http(s) URL with a host")
    return urls


def _number(value: Any) -> str:
    return "" if value is None else f"{float(value):g}"


def alertmanager_alert(alert: Mapping[str, Any], external_url: str) -> dict[str, Any]:
    """One fleetcast alert (an element of ``GET /alerts``) as an Alertmanager API v2 alert, without ``endsAt``."""
    labels = {
        "alertname": str(alert["alert_type"]),
        "server": str(alert["server_name"]),
        "metric": str(alert.get("metric") or ""),
        "severity": str(alert.get("severity") or ""),
        "profile": str(alert.get("profile") or ""),
        "level": str(alert.get("level") or ""),
    }
    hours = float(alert.get("hours_to_breach") or 0.0)
    annotations = {
        "summary": str(alert.get("message") or labels["alertname"]),
        "time_to_breach": "now" if hours <= 0 else humanize_minutes(hours * 60.0),
        "probability": f"{float(alert.get('probability') or 0.0):.2f}",
        "breach_time": rfc3339(_parse_utc(alert["prediction_time"])) if alert.get("prediction_time") else "",
        "threshold": _number(alert.get("threshold")),
        "current_value": _number(alert.get("current_value")),
        "predicted_value": _number(alert.get("predicted_value")),
    }
    explanation = alert.get("explanation")
    if explanation:
        annotations["explanation"] = (explanation if isinstance(explanation, str)
                                      else json.dumps(explanation, separators=(",", ":"), sort_keys=True))
    started = alert.get("first_seen") or alert.get("timestamp")
    return {
        "labels": {k: v for k, v in labels.items() if v},  # Alertmanager: an empty label is no label
        "annotations": {k: v for k, v in annotations.items() if v},
        "startsAt": rfc3339(_parse_utc(started) if started else _utcnow()),
        "generatorURL": f"{external_url.rstrip('/')}/predictions/{quote(labels['server'], safe='')}",
    }


def alert_key(am_alert: Mapping[str, Any]) -> Key:
    return tuple(sorted(am_alert["labels"].items()))


def fingerprint(key: Key) -> str:
    """16 hex digits naming a label set (stable across restarts; Alertmanager's own hash differs)."""
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def webhook_payload(alerts: list[dict[str, Any]], external_url: str, receiver: str = "fleetcast") -> dict[str, Any]:
    """Alertmanager's webhook body (``version`` 4) for ``alerts`` (Alertmanager API alerts with ``endsAt``
    set when resolved)."""
    items = []
    for a in alerts:
        resolved = bool(a.get("endsAt"))
        items.append({"status": "resolved" if resolved else "firing", "labels": a["labels"],
                      "annotations": a["annotations"], "startsAt": a["startsAt"],
                      "endsAt": a["endsAt"] if resolved else ZERO_TIME, "generatorURL": a["generatorURL"],
                      "fingerprint": fingerprint(alert_key(a))})

    def common(field: str) -> dict[str, str]:
        if not items:
            return {}
        shared = dict(items[0][field])
        for item in items[1:]:
            shared = {k: v for k, v in shared.items() if item[field].get(k) == v}
        return shared

    return {
        "version": "4", "groupKey": f"{{}}:{{receiver=\"{receiver}\"}}", "truncatedAlerts": 0,
        "status": "firing" if any(i["status"] == "firing" for i in items) else "resolved",
        "receiver": receiver, "groupLabels": {}, "commonLabels": common("labels"),
        "commonAnnotations": common("annotations"), "externalURL": external_url, "alerts": items,
    }


@lru_cache(maxsize=1)
def _counters() -> dict[str, Any]:
    """fleetcast's counters on BentoML's ``/metrics``. prometheus_client is imported here, at first use,
    not with the service module: BentoML's worker sets its multiprocess directory after importing it."""
    from prometheus_client import Counter

    labels = ["kind", "target"]
    return {
        "sent": Counter("fleetcast_alert_notifications_sent", "Alerts delivered to a target.", labels),
        "failed": Counter("fleetcast_alert_notifications_failed", "Alerts in requests that failed (retried).", labels),
        "dropped": Counter("fleetcast_alert_notifications_dropped",
                           "Alerts given up: refused by the target, or dropped from a full queue.", labels),
    }


def _count(name: str, kind: str, target: str, n: int) -> None:
    if n <= 0:
        return
    try:
        _counters()[name].labels(kind=kind, target=target).inc(n)
    except Exception:  # metrics are a nicety; delivery never fails for them
        logger.debug("metrics counter %s failed", name, exc_info=True)


@dataclass
class _Pending:
    alert: dict[str, Any]  # Alertmanager API alert; "endsAt" present when resolved
    resolved: bool
    seq: int


class PendingQueue:
    """The notifications one target has not delivered: the latest state per alert, oldest change first.

    At most ``capacity`` entries; when full, the oldest firing entries go first; resolved ones never do."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self._items: OrderedDict[Key, _Pending] = OrderedDict()
        self._seq = 0
        self.dropped = 0

    def put(self, key: Key, alert: dict[str, Any]) -> int:
        """Queue ``alert`` (replacing a pending state of the same alert); returns how many entries were dropped."""
        self._seq += 1
        self._items.pop(key, None)
        self._items[key] = _Pending(alert, bool(alert.get("endsAt")), self._seq)
        dropped = 0
        while len(self._items) > self.capacity:
            victim = next((k for k, p in self._items.items() if not p.resolved), None)
            if victim is None:
                break  # only resolves left: they stay
            del self._items[victim]
            dropped += 1
        self.dropped += dropped
        return dropped

    def peek(self, n: int) -> list[tuple[Key, _Pending]]:
        out = []
        for item in self._items.items():
            if len(out) >= n:
                break
            out.append(item)
        return out

    def ack(self, batch: Iterable[tuple[Key, _Pending]]) -> None:
        """Remove the delivered entries, unless a newer state of the alert arrived meanwhile."""
        for key, sent in batch:
            current = self._items.get(key)
            if current is not None and current.seq == sent.seq:
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


class DeliveryError(Exception):
    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class Target:
    """One Alertmanager or webhook: its queue, its sender thread, its status."""

    def __init__(self, url: str, kind: str, delivery: AlertDelivery) -> None:
        if kind not in ("alertmanager", "webhook"):
            raise ValueError(f"unknown target kind {kind!r}")
        self.url = url
        self.kind = kind
        self.name = redact(url)
        self.endpoint = f"{url}/api/v2/alerts" if kind == "alertmanager" else url
        self._delivery = delivery
        self.queue = PendingQueue(delivery.queue_size)
        self._lock = threading.Lock()  # guards the queue and the status
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=delivery.timeout_seconds,
                                  headers={"User-Agent": "fleetcast-alert-delivery"})
        self._retry_at = 0.0
        self.failures = 0  # consecutive
        self.sent = 0
        self.failed = 0
        self.last_success: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    # --- queue ---------------------------------------------------------------------------------------
    def enqueue(self, alerts: Iterable[dict[str, Any]]) -> None:
        dropped = 0
        with self._lock:
            for alert in alerts:
                dropped += self.queue.put(alert_key(alert), alert)
        if dropped:
            logger.warning("alert queue of %s full: dropped %d firing updates (re-sent with the next resend)",
                           self.name, dropped)
            _count("dropped", self.kind, self.name, dropped)
        self._wake.set()

    # --- sending -------------------------------------------------------------------------------------
    def _body(self, batch: list[tuple[Key, _Pending]]) -> Any:
        if self.kind == "webhook":
            return webhook_payload([p.alert for _, p in batch], self._delivery.external_url)
        valid_until = rfc3339(_utcnow() + timedelta(seconds=4 * self._delivery.resend_seconds))
        return [p.alert if p.resolved else {**p.alert, "endsAt": valid_until} for _, p in batch]

    def _post(self, body: Any) -> None:
        try:
            response = self._http.post(self.endpoint, json=body)
        except Exception as exc:  # connection, timeout, protocol: all worth a retry; the thread must not die
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retry=True) from exc
        if response.status_code >= 300:
            code = response.status_code
            retry = code >= 500 or code in (408, 429)
            raise DeliveryError(f"HTTP {code} from {self.name}: {response.text[:200]}", retry=retry)

    def send_once(self) -> bool:
        """Post the oldest pending batch now; True when delivered (or nothing was pending)."""
        with self._lock:
            batch = self.queue.peek(MAX_BATCH)
        if not batch:
            return True
        try:
            self._post(self._body(batch))
        except DeliveryError as exc:
            with self._lock:
                self.last_error, self.last_error_at = str(exc), _utcnow()
                if exc.retry:
                    self.failures += 1
                    self.failed += len(batch)
                    delay = min(self._delivery.retry_max_seconds, RETRY_BASE_SECONDS * 2 ** min(self.failures - 1, 20))
                    self._retry_at = time.monotonic() + delay
                else:  # the target refuses these alerts: retrying would block the queue for ever
                    self.queue.ack(batch)
                    self.queue.dropped += len(batch)
                failures = self.failures
            _count("failed" if exc.retry else "dropped", self.kind, self.name, len(batch))
            # one warning per outage, not one per retry
            log = logger.warning if not exc.retry or failures == 1 else logger.debug
            log("alert delivery to %s failed (%d alerts, %s): %s", self.name, len(batch),
                "retrying with backoff" if exc.retry else "dropped", exc)
            return False
        with self._lock:
            self.queue.ack(batch)
            self.sent += len(batch)
            recovered, self.failures = self.failures, 0
            self._retry_at = 0.0
            self.last_success = _utcnow()
        _count("sent", self.kind, self.name, len(batch))
        if recovered:
            logger.info("alert delivery to %s works again after %d failed attempts", self.name, recovered)
        return True

    def _loop(self) -> None:
        resend = self._delivery.resend_seconds if self.kind == "alertmanager" else None
        next_resend = time.monotonic() + resend if resend else float("inf")
        while not self._stop.is_set():
            now = time.monotonic()
            if resend and now >= next_resend:
                self._delivery.resend(self)
                next_resend = now + resend
            with self._lock:
                pending, retry_at = len(self.queue), self._retry_at
            if pending and now >= retry_at:
                self.send_once()
                continue
            wake_at = min(next_resend, retry_at if pending else float("inf"))
            self._wake.wait(timeout=min(max(wake_at - time.monotonic(), 0.0), 1.0))
            self._wake.clear()  # news during a backoff wakes the loop, but the backoff still holds

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"fleetcast-alerts-{self.kind}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._delivery.timeout_seconds + 5)
            self._thread = None
        self._http.close()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "kind": self.kind, "url": self.name, "queue": len(self.queue), "sent": self.sent,
                "failed": self.failed, "dropped": self.queue.dropped, "consecutive_failures": self.failures,
                "last_success": None if self.last_success is None else rfc3339(self.last_success),
                "last_error": self.last_error,
                "last_error_at": None if self.last_error_at is None else rfc3339(self.last_error_at),
            }


class AlertDelivery:
    """Tells Alertmanagers and webhooks about the service's alerts (module doc); thread-safe."""

    def __init__(self, alertmanager_urls: Iterable[str] = (), webhook_urls: Iterable[str] = (),
                 external_url: str = "http://localhost:8000", resend_seconds: float = 60.0,
                 queue_size: int = 10_000, timeout_seconds: float = 10.0, retry_max_seconds: float = 60.0,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        if resend_seconds <= 0:
            raise ValueError("FLEETCAST_ALERT_RESEND_SECONDS must be positive")
        self.external_url = external_url.rstrip("/")
        self.resend_seconds = float(resend_seconds)
        self.queue_size = int(queue_size)
        self.timeout_seconds = float(timeout_seconds)
        self.retry_max_seconds = max(float(retry_max_seconds), 0.0)
        self.clock = clock
        self._lock = threading.Lock()
        self._firing: dict[Key, dict[str, Any]] = {}
        self._resolved: dict[Key, tuple[dict[str, Any], datetime]] = {}
        self.targets = ([Target(u, "alertmanager", self) for u in alertmanager_urls]
                        + [Target(u, "webhook", self) for u in webhook_urls])

    # --- from the engine -----------------------------------------------------------------------------
    def observe(self, alerts: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """Take the active alerts after a refresh; queue what opened and resolved for every target.

        Returns the events ``("opened" | "updated" | "resolved", Alertmanager alert)``."""
        now = self.clock()
        current = {}
        for alert in alerts:
            am = alertmanager_alert(alert, self.external_url)
            current[alert_key(am)] = am
        events: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            for key, am in current.items():
                before = self._firing.get(key)
                if before is None:
                    events.append(("opened", am))
                    self._resolved.pop(key, None)
                elif before["annotations"] != am["annotations"]:
                    events.append(("updated", am))
            for key in self._firing.keys() - current.keys():
                done = {**self._firing[key], "endsAt": rfc3339(now)}
                self._resolved[key] = (done, now)
                events.append(("resolved", done))
            self._firing = current
            for key in [k for k, (_, at) in self._resolved.items() if now - at > RESOLVED_RETENTION]:
                del self._resolved[key]
            changes = [am for kind, am in events if kind != "updated"]
            if changes:  # queued under the lock: a resend's snapshot is never older than what is queued
                for target in self.targets:
                    target.enqueue(changes)
        return events

    def snapshot(self) -> list[dict[str, Any]]:
        """What a resend carries: every firing alert (latest annotations) and those resolved in the last 15 min."""
        with self._lock:
            return list(self._firing.values()) + [a for a, _ in self._resolved.values()]

    def resend(self, target: Target) -> None:
        """Queue the snapshot for ``target``, atomically with respect to :meth:`observe` (a snapshot taken
        before a resolve and queued after it would put the alert back to firing)."""
        with self._lock:
            target.enqueue(list(self._firing.values()) + [a for a, _ in self._resolved.values()])

    @property
    def firing(self) -> int:
        with self._lock:
            return len(self._firing)

    # --- lifecycle and status ------------------------------------------------------------------------
    def start(self) -> None:
        for target in self.targets:
            target.start()

    def stop(self) -> None:
        for target in self.targets:
            target.stop()

    def status(self) -> dict[str, Any]:
        return {"firing": self.firing, "targets": [t.status() for t in self.targets]}


def from_settings(settings: Any) -> AlertDelivery | None:
    """The delivery the service's settings ask for, or None when no Alertmanager or webhook is set."""
    managers = split_urls(settings.alertmanager_url, "FLEETCAST_ALERTMANAGER_URL")
    hooks = split_urls(settings.alert_webhook_url, "FLEETCAST_ALERT_WEBHOOK_URL")
    if not managers and not hooks:
        return None
    return AlertDelivery(managers, hooks, external_url=settings.external_url,
                         resend_seconds=settings.alert_resend_seconds, queue_size=settings.alert_queue_size,
                         timeout_seconds=settings.alert_timeout_seconds,
                         retry_max_seconds=settings.alert_retry_max_seconds)
