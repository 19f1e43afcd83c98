"""The fleet simulator: realistic per-profile server metrics with labelled incidents.

One model of a server, three ways to use it, a module each:

=============================  =====================================================================
``models/simulator/server.py``  one server: how each profile behaves (blocks of numpy steps with
                               carried state), what an incident or scenario does to it
                               (:func:`overlay`), ``status`` from the metrics, the default fleet's
                               server names (:func:`default_servers`)
``models/simulator/shapes.py``  real shapes over the profiles (idle plateaus, rare spikes, level
                               shifts, drifts, quiet periods, constant companion metrics)
``models/simulator/dataset.py``  the batch generator: :func:`generate_fleet` (the training data) and
                               its labelled incidents (:class:`FleetData`)
``models/simulator/live.py``    :class:`LiveFleet`: step by step for the service's demo fleet, with
                               scenarios switched on without a restart
``models/simulator/summary.py``  a table per profile and a sample plot (the Dagster asset's metadata)
=============================  =====================================================================

The names below are the simulator's public API (``from models import simulator``;
``simulator.generate_fleet(...)``); the modules above are where each lives.
"""

from models.simulator.dataset import INCIDENT_COLUMNS, INCIDENT_TYPES, FleetData, generate_fleet
from models.simulator.live import LiveFleet
from models.simulator.server import (
    CRITICAL_PERCENT,
    SCENARIOS,
    WARNING_PERCENT,
    default_servers,
    status_from_metrics,
)
from models.simulator.shapes import REAL_SHAPES
from models.simulator.summary import plot_fleet_sample, profile_summary

__all__ = [
    "CRITICAL_PERCENT",
    "INCIDENT_COLUMNS",
    "INCIDENT_TYPES",
    "REAL_SHAPES",
    "SCENARIOS",
    "WARNING_PERCENT",
    "FleetData",
    "LiveFleet",
    "default_servers",
    "generate_fleet",
    "plot_fleet_sample",
    "profile_summary",
    "status_from_metrics",
]
