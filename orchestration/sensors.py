"""Sensors: none yet. Add them here (``SENSORS``) and ``definitions.py`` picks them up.

Sensors and schedules run only under the Dagster daemon (``dg dev -w workspace.yaml`` starts it);
test them with ``dg.build_sensor_context``.
"""

import dagster as dg

SENSORS: list[dg.SensorDefinition] = []
