"""Which profile a server gets, and where that came from (``FLEETCAST_PROFILES_FILE``).

Shippers that cannot send a profile (node_exporter via Prometheus, collectd, the OTel Collector) still
need the right one: a mapping file of server-name patterns gives it. Every ingest path (``/feed/data``,
``/api/v1/write``, ``/v1/metrics``) resolves a record's profile the same way, first that applies:

1. a known profile sent with the record (the JSON ``profile`` field, the Prometheus label
   ``FLEETCAST_REMOTE_WRITE_PROFILE_LABEL``, the OTLP resource attribute ``fleetcast.profile``);
2. the first pattern of the mapping file that matches the server name;
3. ``generic`` (an unknown profile that was sent also ends here, with a warning).

The mapping file is YAML, a mapping of shell-style patterns (``fnmatch``, case-insensitive) to profiles,
tried in file order::

    db-*: database
    "web-??.prod.*": web_api
    "*": generic

It is read when the service starts and again whenever its modification time changes; a pattern that
maps to an unknown profile stops the start (or the reload keeps the previous mapping and logs why).
The source is stored per server and shown in ``GET /predictions`` (``profile_source``) and the
dashboard: ``record``, ``label:<name>``, ``attribute:<name>``, ``mapping:<pattern>`` or ``default``.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from models import schema

logger = logging.getLogger(__name__)

SOURCE_RECORD = "record"
SOURCE_DEFAULT = "default"


class ProfilesFileError(ValueError):
    """The mapping file is unreadable or names an unknown profile (the message names the file and entry)."""


@dataclass(frozen=True)
class Rule:
    pattern: str
    profile: str
    regex: re.Pattern[str]


def parse_mapping(text: str, where: str = "profiles file") -> list[Rule]:
    """YAML text -> rules in file order; :class:`ProfilesFileError` naming the bad entry."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfilesFileError(f"{where}: not valid YAML ({exc})") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ProfilesFileError(f"{where}: must be a mapping of name patterns to profiles, e.g. 'db-*: database'")
    rules = []
    for pattern, profile in data.items():
        if not isinstance(pattern, str) or not pattern:
            raise ProfilesFileError(f"{where}: pattern {pattern!r} must be a non-empty string")
        if not isinstance(profile, str) or profile.strip().lower() not in schema.PROFILES:
            raise ProfilesFileError(f"{where}: pattern {pattern!r} maps to unknown profile {profile!r}; "
                                    f"one of {', '.join(schema.PROFILES)}")
        rules.append(Rule(pattern, profile.strip().lower(),
                          re.compile(fnmatch.translate(pattern.lower()))))
    return rules


class ProfileMap:
    """The mapping file's rules, reloaded when the file changes; thread-safe."""

    def __init__(self, path: Path | None = None, rules: list[Rule] | None = None) -> None:
        self.path = Path(path) if path else None
        self._rules: list[Rule] = list(rules or [])
        self._mtime: float | None = None
        self._lock = threading.Lock()
        if self.path is not None:
            self._load(strict=True)

    def _load(self, strict: bool) -> None:
        assert self.path is not None
        try:
            mtime = self.path.stat().st_mtime
            rules = parse_mapping(self.path.read_text(encoding="utf-8"), f"FLEETCAST_PROFILES_FILE {self.path}")
        except (OSError, ProfilesFileError) as exc:
            if strict:
                if isinstance(exc, OSError):
                    raise ProfilesFileError(f"FLEETCAST_PROFILES_FILE {self.path}: cannot read it "
                                            f"({type(exc).__name__})") from None
                raise
            logger.error("profiles file not reloaded, the previous mapping stays: %s", exc)
            return
        self._rules, self._mtime = rules, mtime

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return
        if mtime != self._mtime:
            with self._lock:
                if mtime != self._mtime:
                    self._load(strict=False)

    def match(self, server_name: str) -> Rule | None:
        """The first rule whose pattern matches ``server_name`` (case-insensitive), or None."""
        self._maybe_reload()
        name = server_name.lower()
        for rule in self._rules:
            if rule.regex.match(name):
                return rule
        return None

    def resolve(self, server_name: str, sent: str | None, sent_source: str = SOURCE_RECORD) -> tuple[str, str, bool]:
        """``(profile, source, sent_was_unknown)`` by the order in the module doc."""
        if sent is not None:
            profile, known = schema.normalize_profile(sent.strip().lower())
            if known:
                return profile, sent_source, False
        rule = self.match(server_name)
        if rule is not None:
            return rule.profile, f"mapping:{rule.pattern}", False
        return schema.DEFAULT_PROFILE, SOURCE_DEFAULT, sent is not None


def from_settings() -> ProfileMap:
    from serving.settings import get_settings

    return ProfileMap(get_settings().profiles_file)
