"""The Dagster code location: `dg dev -w workspace.yaml` loads `defs` from here."""

import dagster as dg

from orchestration import checks, jobs, resources
from orchestration.assets import data
from orchestration.assets import packaging as packaging_assets
from orchestration.assets import training as training_assets

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data, training_assets, packaging_assets]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=jobs.JOBS,
    resources=resources.RESOURCES,
)
