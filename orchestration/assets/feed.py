"""Feed assets (group "feed"): the production dataset read from the feed store (thin glue over
models.production).

``production_dataset`` is every record the service acknowledged, on the 5-minute grid by the one
alignment policy (``models.grid``), long outages kept as gaps. Its blocking check
(``production_dataset_valid`` in checks.py) applies the same Pandera model as the simulated dataset
with production rules. ``experiment_split`` reads it when the run's ``source`` is ``feed`` or ``mixed``.
"""

import dagster as dg
import pandas as pd
from pydantic import Field

from models import production, schema
from orchestration.resources import PARQUET_IO_MANAGER
from serving.store import FeedStore

GROUP = "feed"


class ProductionDatasetConfig(dg.Config):
    """Where the feed store is (empty: FLEETCAST_STORE_URL, else the data dir's SQLite store)."""

    store_url: str = Field(default="", description="SQLAlchemy URL of the feed store (empty: the configured one)")


def read_feed(store_url: str | None = None) -> pd.DataFrame:
    """Every record of the feed store, raw (what the service acknowledged)."""
    store = FeedStore(store_url or None)
    try:
        return store.export_frame()
    finally:
        store.dispose()


def _per_day(dataset: pd.DataFrame, days: int = 14) -> str:
    if dataset.empty:
        return "no records"
    day = pd.to_datetime(dataset[schema.TIMESTAMP]).dt.strftime("%Y-%m-%d")
    table = dataset.assign(day=day).groupby("day").agg(servers=(schema.SERVER, "nunique"),
                                                       rows=(schema.SERVER, "size"))
    return table.tail(days).reset_index().to_markdown(index=False)


@dg.asset(
    io_manager_key=PARQUET_IO_MANAGER,
    group_name=GROUP,
    description="Production records from the feed store on the 5-minute grid (models.grid: buckets averaged, "
                "gaps <= 15 min interpolated, longer outages left as gaps); what feed / mixed training reads.",
    kinds={"pandas", "parquet", "sqlite"},
)
def production_dataset(context: dg.AssetExecutionContext, config: ProductionDatasetConfig) -> dg.Output[pd.DataFrame]:
    raw = read_feed(config.store_url)
    dataset = production.production_dataset(raw)
    ts = dataset[schema.TIMESTAMP]
    context.log.info(f"production dataset: {len(raw)} feed records -> {len(dataset)} grid rows, "
                     f"{production.server_days(dataset)} server-days")
    return dg.Output(dataset, metadata={
        "feed_records": dg.MetadataValue.int(len(raw)),
        "rows": dg.MetadataValue.int(len(dataset)),
        "servers": dg.MetadataValue.int(int(dataset[schema.SERVER].nunique())),
        "server_days": dg.MetadataValue.int(production.server_days(dataset)),
        "date_range": dg.MetadataValue.text(f"{ts.min()} .. {ts.max()}" if len(ts) else "empty"),
        "per_day": dg.MetadataValue.md(_per_day(dataset)),
    })
