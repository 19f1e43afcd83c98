"""The Dagster code location: `dg dev -w workspace.yaml` loads `defs` from here.

One module per kind: assets/ (one module per domain: data, training, evaluation, promotion,
packaging), checks.py, resources.py (+ mlflow_resource.py), jobs.py, schedules.py, sensors.py.
"""

import dagster as dg

from orchestration import assets, checks, jobs, resources, schedules, sensors

defs = dg.Definitions(
    assets=dg.load_assets_from_package_module(assets),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=jobs.JOBS,
    schedules=schedules.SCHEDULES,
    sensors=sensors.SENSORS,
    resources=resources.RESOURCES,
)
