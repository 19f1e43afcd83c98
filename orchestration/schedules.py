"""Schedules: ``weekly_feed_retrain`` runs the ``feed_retrain`` job every Monday at 03:00 UTC.

Off until switched on (Dagster UI: Automation -> toggle; CLI: ``dagster schedule start weekly_feed_retrain``).
Schedules run only under the Dagster daemon (``dg dev -w workspace.yaml`` starts it); tested with
``dg.build_schedule_context``. The run's tags say why it ran (``fleetcast/trigger``, ``fleetcast/reason``).
"""

from __future__ import annotations

import dagster as dg

from models.settings import get_settings
from orchestration import jobs

WEEKLY_CRON = "0 3 * * 1"  # Mondays 03:00 UTC


@dg.schedule(
    job=jobs.feed_retrain,
    cron_schedule=WEEKLY_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Weekly production retraining (fine-tune the champion on the feed, gate on held-out feed windows).",
)
def weekly_feed_retrain(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    when = context.scheduled_execution_time
    stamp = when.isoformat() if when is not None else "now"
    return dg.RunRequest(
        run_key=f"weekly-feed-retrain-{stamp}",
        run_config=jobs.feed_run_config(get_settings().retrain_preset),
        tags={"fleetcast/trigger": "schedule:weekly",
              "fleetcast/reason": f"weekly schedule ({WEEKLY_CRON} UTC) at {stamp}"},
    )


SCHEDULES: list[dg.ScheduleDefinition] = [weekly_feed_retrain]
