"""Jobs: named selections of assets (their checks run with them)."""

from __future__ import annotations

import dagster as dg

build_dataset = dg.define_asset_job(
    "build_dataset",
    selection=dg.AssetSelection.assets("fleet_dataset", "incident_labels"),
    description="Simulate the fleet dataset and its incident labels, then validate it (blocking check).",
)

JOBS = [build_dataset]
