"""Schedules: none yet. Add them here (``SCHEDULES``) and ``definitions.py`` picks them up.

Schedules run only under the Dagster daemon (``dg dev -w workspace.yaml`` starts it); test them with
``dg.build_schedule_context``.
"""

import dagster as dg

SCHEDULES: list[dg.ScheduleDefinition] = []
