"""Paging and filtering of GET /predictions and GET /alerts (serving/pages.py), unit and through the service."""

from __future__ import annotations

from typing import Any

import pytest

from serving import pages


def _items(n: int) -> list[dict[str, Any]]:
    levels = ["critical", "high", "medium", "low"]
    return [{"server_name": f"{'db' if i % 2 else 'web'}-{i:03d}", "profile": "database" if i % 2 else "web_api",
             "risk_level": levels[min(i // 5, 3)]} for i in range(n)]


def test_no_parameter_means_the_whole_document() -> None:
    assert not pages.Query.parse().paged
    assert pages.Query.parse(limit=10).paged and pages.Query.parse(server="db-").paged


def test_pages_walk_every_matching_item_once_in_order() -> None:
    items = _items(23)
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = pages.select(items, pages.Query.parse(limit=5, offset=offset), lambda x: x, "risk_level")
        assert page.total == 23 and len(page.items) <= 5
        seen += [x["server_name"] for x in page.items]
        offset = page.next_offset
    assert seen == [x["server_name"] for x in items]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"server": "db-"}, lambda x: x["server_name"].startswith("db-")),
    ({"profiles": "web_api"}, lambda x: x["profile"] == "web_api"),
    ({"levels": "critical,high"}, lambda x: x["risk_level"] in ("critical", "high")),
    ({"levels": "low", "server": "web-"}, lambda x: x["risk_level"] == "low" and x["server_name"][:4] == "web-"),
])
def test_filters_keep_exactly_the_matching_items(kwargs: dict[str, str], expected: Any) -> None:
    items = _items(30)
    page = pages.select(items, pages.Query.parse(**kwargs), lambda x: x, "risk_level")
    assert page.items == [x for x in items if expected(x)] and page.total == len(page.items) > 0
    assert page.next_offset is None


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"limit": 0}, "limit"), ({"limit": pages.MAX_LIMIT + 1}, "limit"), ({"offset": -1}, "offset"),
    ({"levels": "urgent"}, "risk_level"), ({"levels": ","}, "risk_level"), ({"server": ""}, "server"),
    ({"profiles": " "}, "profile"),
])
def test_bad_parameters_are_named(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        pages.Query.parse(**kwargs)


def test_service_pages_and_filters(client: Any, h: Any) -> None:
    hot = h.series_items("hot-db-01", "database", {
        "cpu_percent": 30.0, "memory_percent": lambda i: 90.0 + 7.0 * i / 287, "disk_percent": 50.0,
        "load_average": 4.0})
    assert client.post("/feed/data", json={"records": hot + h.fleet_items(n_servers=4)}).status_code == 200
    whole = client.get("/predictions").json()
    assert "total" not in whole and len(whole["predictions"]) == 5  # the contract's answer, unchanged
    order = [p["server_name"] for p in whole["predictions"]]

    first = client.get("/predictions", params={"limit": 2}).json()
    second = client.get("/predictions", params={"limit": 2, "offset": first["next_offset"]}).json()
    last = client.get("/predictions", params={"limit": 2, "offset": second["next_offset"]}).json()
    assert first["total"] == 5 and first["next_offset"] == 2 and last["next_offset"] is None
    assert [p["server_name"] for p in first["predictions"] + second["predictions"] + last["predictions"]] == order
    assert first["timestamp"] == whole["timestamp"] and "history" not in first["predictions"][0]
    with_history = client.get("/predictions", params={"limit": 1, "include_history": "true"}).json()
    assert with_history["predictions"][0]["server_name"] == order[0] and with_history["predictions"][0]["history"]

    critical = client.get("/predictions", params={"risk_level": "critical"}).json()
    assert [p["server_name"] for p in critical["predictions"]] == ["hot-db-01"] and critical["total"] == 1
    prefixed = client.get("/predictions", params={"server": "hot-"}).json()
    assert [p["server_name"] for p in prefixed["predictions"]] == ["hot-db-01"]
    assert client.get("/predictions", params={"profile": "no_such"}).json()["predictions"] == []

    alerts = client.get("/alerts", params={"severity": "critical", "server": "hot-db"}).json()
    assert alerts["total"] >= 1 and {a["server_name"] for a in alerts["alerts"]} == {"hot-db-01"}
    assert all(a["severity"] == "critical" for a in alerts["alerts"])

    bad = client.get("/predictions", params={"risk_level": "urgent"})
    assert bad.status_code == 400 and "risk_level" in bad.json()["detail"]
    assert client.get("/alerts", params={"limit": 0}).status_code == 400
    assert client.get("/predictions", params={"limit": "many"}).status_code == 422
