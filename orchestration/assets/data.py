"""Data assets: the simulated fleet dataset and its incident labels (thin glue over models.simulator.dataset).

One generator run yields both, so they are one multi-asset; its op is named after the dataset, so the
Launchpad's config key (``ops.fleet_dataset.config``) is the name the UI shows.
"""

import base64
import warnings
from collections.abc import Iterator

import dagster as dg
import pandas as pd
from dagster_pandera import pandera_schema_to_dagster_type

from models import config as settings
from models import schema
from models.simulator.dataset import generate_fleet
from models.simulator.summary import plot_fleet_sample, profile_summary
from models.validation import FleetDatasetModel
from orchestration.resources import PARQUET_IO_MANAGER

GROUP = "data"


def _column_schema() -> dg.TableSchema:
    """The Pandera contract as Dagster's table schema (columns, dtypes, ranges, dataset rules) for the UI.

    dagster-pandera's DagsterType is used for its schema only, not as the output's type check: a
    failing type check fails the step itself, so the blocking asset check (every failure case in
    its metadata, downstream stopped, the file kept to inspect) would never run.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return pandera_schema_to_dagster_type(FleetDatasetModel).metadata["schema"].schema


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
            metadata={"dagster/column_schema": _column_schema()},
        ),
        "incident_labels": dg.AssetOut(
            io_manager_key=PARQUET_IO_MANAGER,
            group_name=GROUP,
            description="Ground-truth incidents injected by the simulator: server, type, start, end.",
            kinds={"pandas", "parquet"},
        ),
    },
    name="fleet_dataset",
)
def fleet_dataset(context: dg.AssetExecutionContext, config: FleetDatasetConfig) -> Iterator[dg.Output]:
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
