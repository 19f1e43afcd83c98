"""Asset checks: the Pandera contract on the fleet dataset and on the production dataset, blocking
everything downstream."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from models import production
from models.validation import validate_fleet


@dg.asset_check(
    asset="fleet_dataset",
    blocking=True,
    description="Pandera FleetDatasetModel: types, ranges, categories, unique keys, regular 5-min steps, "
    "all profiles present. A failure stops every downstream asset in the run.",
)
def fleet_dataset_valid(fleet_dataset: pd.DataFrame) -> dg.AssetCheckResult:
    report = validate_fleet(fleet_dataset)
    metadata: dict[str, dg.MetadataValue] = {
        "rows": dg.MetadataValue.int(len(fleet_dataset)),
        "failure_cases": dg.MetadataValue.int(report.n_failures),
    }
    if not report.ok:
        metadata["failed_columns"] = dg.MetadataValue.text(", ".join(sorted(report.columns())))
        metadata["first_failures"] = dg.MetadataValue.md(report.summary(max_rows=20))
    return dg.AssetCheckResult(passed=report.ok, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)


@dg.asset_check(
    asset="production_dataset",
    blocking=True,
    description="The same Pandera FleetDatasetModel with production rules: types, ranges, categories and "
    "unique keys are fatal; gaps (outages longer than 15 min) and profiles the fleet does not run are reported "
    "in the metadata, not fatal. An empty feed store fails.",
)
def production_dataset_valid(production_dataset: pd.DataFrame) -> dg.AssetCheckResult:
    r = production.validate_production(production_dataset)
    gaps = r.gaps.sort_values("steps", ascending=False).head(20)
    metadata: dict[str, dg.MetadataValue] = {
        "rows": dg.MetadataValue.int(r.rows),
        "servers": dg.MetadataValue.int(r.servers),
        "server_days": dg.MetadataValue.int(r.server_days),
        "fatal_failures": dg.MetadataValue.int(len(r.fatal)),
        "gaps": dg.MetadataValue.int(len(r.gaps)),
        "gap_steps": dg.MetadataValue.int(int(r.gaps["steps"].sum()) if len(r.gaps) else 0),
        "longest_gaps": dg.MetadataValue.md(gaps.astype(str).to_markdown(index=False) if len(gaps) else "none"),
        "missing_profiles": dg.MetadataValue.text(", ".join(r.missing_profiles) or "none"),
    }
    if not r.ok:
        metadata["first_failures"] = dg.MetadataValue.md(r.summary(max_rows=20))
    return dg.AssetCheckResult(passed=r.ok, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)
