"""One settings layer: every environment variable fleetcast reads is a field of a settings class, and
the one settings table in docs/operations.md lists exactly those fields with their defaults."""

from __future__ import annotations

import re

import pytest
from pydantic import TypeAdapter
from pydantic_settings import BaseSettings

from dashboard.settings import DashboardSettings
from dashboard.settings import get_settings as dashboard_settings
from models.config import PROJECT_ROOT
from models.settings import Settings
from serving.settings import ServiceSettings
from serving.settings import get_settings as service_settings

CLASSES: dict[str, type[BaseSettings]] = {"models": Settings, "serving": ServiceSettings,
                                          "dashboard": DashboardSettings}
DOC = PROJECT_ROOT / "docs" / "operations.md"
SECTION = "## Settings (environment)"
PRODUCT = ("models", "serving", "orchestration", "dashboard")


def documented_rows() -> dict[tuple[str, str], tuple[str, str]]:
    """(variable, component) -> (default cell, what cell) from the settings table."""
    text = DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"{DOC} has no '{SECTION}' section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], tuple[str, str]] = {}
    for line in section.splitlines():
        match = re.match(r"^\|\s*`([A-Z0-9_]+)`\s*\|\s*([a-z]+)\s*\|(.*)\|(.*)\|\s*$", line)
        if match:
            key = (match[1], match[2])
            assert key not in rows, f"{key} documented twice"
            rows[key] = (match[3].strip(), match[4].strip())
    return rows


def test_every_setting_is_documented_once_and_nothing_else() -> None:
    rows = documented_rows()
    fields = {(f.validation_alias, component): f for component, cls in CLASSES.items()
              for f in cls.model_fields.values()}
    assert set(rows) == set(fields), (
        f"missing from the table: {sorted(set(fields) - set(rows))}; "
        f"documented but not a setting: {sorted(set(rows) - set(fields))}")
    for key, field in fields.items():
        default_cell, what = rows[key]
        assert what == field.description, f"{key}: table says {what!r}, the settings class {field.description!r}"
        doc_default = (field.json_schema_extra or {}).get("doc_default")
        if doc_default is not None:
            assert default_cell == f"`{doc_default}`", key
        elif field.default is None:
            assert default_cell == "unset", key
        else:
            shown = re.match(r"^`([^`]*)`", default_cell)
            assert shown, f"{key}: default cell {default_cell!r} does not start with a `value`"
            assert TypeAdapter(field.annotation).validate_python(shown[1]) == field.default, key


@pytest.mark.parametrize("component", PRODUCT)
def test_no_module_reads_the_environment_by_hand(component: str) -> None:
    for path in sorted((PROJECT_ROOT / component).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"os\.environ\.get|os\.getenv|os\.environ\[", text), path


def test_settings_are_read_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_MAX_RECORDS", "7")
    monkeypatch.setenv("FLEETCAST_DEMO_FLEET", "on")
    monkeypatch.setenv("FLEETCAST_API_TOKEN", "")  # empty counts as unset
    s = service_settings()
    assert (s.max_records, s.demo_fleet, s.api_token) == (7, True, None)
    monkeypatch.setenv("FLEETCAST_MAX_RECORDS", "8")
    assert service_settings().max_records == 8


def test_a_malformed_service_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_MAX_RECORDS", "lots")
    with pytest.raises(ValueError, match="FLEETCAST_MAX_RECORDS"):
        service_settings()


def test_dashboard_ignores_a_bad_period_and_keeps_its_default(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FLEETCAST_DASHBOARD_REFRESH_SECONDS", "soon")
    monkeypatch.setenv("FLEETCAST_API_TIMEOUT", "-3")
    monkeypatch.setenv("FLEETCAST_API_URL", "http://svc:9000/")
    s = dashboard_settings()
    assert (s.refresh_seconds, s.api_timeout, s.api_url) == (30.0, 30.0, "http://svc:9000")
    assert "FLEETCAST_DASHBOARD_REFRESH_SECONDS" in caplog.text and "FLEETCAST_API_TIMEOUT" in caplog.text
    monkeypatch.setenv("FLEETCAST_DASHBOARD_REFRESH_SECONDS", "5")
    assert dashboard_settings().refresh_seconds == 5.0


def test_docs_table_is_the_only_settings_table() -> None:
    assert "docs/operations.md" in (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    for path in [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]:
        if path == DOC:
            continue
        text = path.read_text(encoding="utf-8")
        restated = re.findall(r"^\|\s*`((?:FLEETCAST|BENTOML|MLFLOW|DAGSTER)_[A-Z_]+)`", text, re.MULTILINE)
        assert not restated, f"{path.name} restates settings in a table: {restated}"
