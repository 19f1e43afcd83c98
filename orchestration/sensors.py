"""Sensors: ``feed_retrain_sensor`` launches the ``feed_retrain`` job (thin glue over
``models.production.retrain_decision``).

It launches when the feed store has grown by ``FLEETCAST_RETRAIN_SERVER_DAYS`` server-days since the
run it last launched, or when the service's /health (``FLEETCAST_RETRAIN_HEALTH_URL``) reports a fleet
rolling skill below 1.0 (the model loses to the best naive baseline; at most one such run per
``FLEETCAST_RETRAIN_MIN_HOURS``). A /health without the skill, or no service, is "unknown": only growth
triggers then. Its reason is in the run's tags (``fleetcast/trigger``, ``fleetcast/reason``) and, when it
skips, in the tick's skip reason (Dagster UI, Automation tab).

Sensors and schedules run only under the Dagster daemon (``dg dev -w workspace.yaml`` starts it); they are
off until switched on (UI: Automation -> toggle; CLI: ``dagster sensor start feed_retrain_sensor``).
Tested with ``dg.build_sensor_context``.
"""

from __future__ import annotations

import json
import time

import dagster as dg

from models import production
from models.settings import get_settings
from orchestration import jobs
from serving.store import FeedStore


def _store_server_days() -> int:
    store = FeedStore()
    try:
        return store.server_days()
    finally:
        store.dispose()


@dg.sensor(
    job=jobs.feed_retrain,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Feed retraining when the feed grew by FLEETCAST_RETRAIN_SERVER_DAYS server-days since the last "
                "launched run, or when the service's fleet rolling skill (/health) is below 1.0.",
)
def feed_retrain_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    settings = get_settings()
    cursor = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    days = _store_server_days()
    skill = production.read_fleet_skill(settings.retrain_health_url)
    launched_at = cursor.get("launched_at")
    hours = (now - float(launched_at)) / 3600 if launched_at is not None else None
    decision = production.retrain_decision(days, int(cursor.get("server_days", 0)), settings.retrain_server_days,
                                           skill, hours, settings.retrain_min_hours)
    if not decision.launch:
        return dg.SkipReason(decision.reason)
    context.update_cursor(json.dumps({"server_days": days, "launched_at": now}))
    return dg.RunRequest(
        run_key=f"feed-retrain-{days}-{int(now)}",
        run_config=jobs.feed_run_config(settings.retrain_preset),
        tags={
            "fleetcast/trigger": f"sensor:{decision.trigger}",
            "fleetcast/reason": decision.reason,
            "fleetcast/server_days": str(days),
            "fleetcast/fleet_skill": "unknown" if skill is None else f"{skill:.4f}",
        },
    )


SENSORS: list[dg.SensorDefinition] = [feed_retrain_sensor]
