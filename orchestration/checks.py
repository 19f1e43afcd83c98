"""Asset checks: the Pandera contract on the fleet dataset, blocking everything downstream."""

from __future__ import annotations

import dagster as dg
import pandas as pd

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
