"""MLflow as a Dagster resource: only where the tracking server/registry is; models.registry does the work."""

from __future__ import annotations

import dagster as dg

from models import config, registry


class MlflowResource(dg.ConfigurableResource):
    """Tracking + registry URI. Empty: ``MLFLOW_TRACKING_URI`` if set, else sqlite in the data dir."""

    tracking_uri: str = ""

    def uri(self) -> str:
        return self.tracking_uri or config.mlflow_tracking_uri()

    def configure(self) -> str:
        """Point the mlflow client at this URI; returns the fleetcast experiment id."""
        return registry.configure(self.uri())
