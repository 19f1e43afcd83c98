"""Data assets: the simulated fleet dataset and its incident labels (thin glue over models.simulator)."""

import base64
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from models import config as settings
from models import schema
from models.simulator import generate_fleet, plot_fleet_sample, profile_summary
from orchestration.resources import PARQUET_IO_MANAGER

GROUP = "data"


class FleetDatasetConfig(dg.Config):
    """Size and seed of the simulated fleet (defaults: the contract's 20 servers x 17,280 steps)."""

    n_servers: int = schema.DEFAULT_SERVERS
    steps: int = schema.DEFAULT_STEPS
    seed: int = 42
    start: str = "2025-01-01"
    incident_rate: float = 1.0


@dg.multi_asset(
    outs={
        "fleet_dataset": dg.AssetOut(
            io_manager_key=PARQUET_IO_MANAGER,
            group_name=GROUP,
            description="Simulated fleet records (schema.COLUMNS), one per server per 5-minute step.",
            kinds={"pandas", "parquet"},
        ),
        "incident_labels": dg.AssetOut(
            io_manager_key=PARQUET_IO_MANAGER,
            group_name=GROUP,
            description="Ground-truth incidents injected by the simulator: server, type, start, end.",
            kinds={"pandas", "parquet"},
        ),
    },
)
def fleet_data(context: dg.AssetExecutionContext, config: FleetDatasetConfig) -> Iterator[dg.Output]:
    fleet = generate_fleet(
        n_servers=config.n_servers,
        steps=config.steps,
        seed=config.seed,
        start=config.start,
        incident_rate=config.incident_rate,
    )
    records = fleet.records
    ts = records[schema.TIMESTAMP]
    summary = profile_summary(records).round(2)
    yield dg.Output(
        records,
        output_name="fleet_dataset",
        metadata={
            "rows": dg.MetadataValue.int(len(records)),
            "servers": dg.MetadataValue.int(int(records[schema.SERVER].nunique())),
            "profiles": dg.MetadataValue.text(", ".join(sorted(records[schema.PROFILE].unique()))),
            "date_range": dg.MetadataValue.text(f"{ts.min().isoformat()} .. {ts.max().isoformat()}"),
            "seed": dg.MetadataValue.int(config.seed),
            "per_profile": dg.MetadataValue.md(summary.to_markdown(index=False)),
            "preview": _preview(records),
        },
    )
    incidents = fleet.incidents
    counts = incidents["incident_type"].value_counts().sort_index()
    yield dg.Output(
        incidents,
        output_name="incident_labels",
        metadata={
            "incidents": dg.MetadataValue.int(len(incidents)),
            "by_type": dg.MetadataValue.md(counts.rename("incidents").to_frame().to_markdown()),
        },
    )
    context.log.info("fleet dataset: %d records, %d incidents", len(records), len(incidents))


def _preview(records: pd.DataFrame) -> dg.MetadataValue:
    path = plot_fleet_sample(records, settings.datasets_dir() / "fleet_dataset_preview.png")
    encoded = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![fleet preview](data:image/png;base64,{encoded})\n\n`{path}`")
