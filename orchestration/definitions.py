"""The Dagster code location: `dg dev -w workspace.yaml` loads `defs` from here."""

import dagster as dg

from orchestration import checks, jobs, resources
from orchestration.assets import data

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=jobs.JOBS,
    resources=resources.RESOURCES,
)
