"""Dagster resources: where datasets live on disk, and MLflow.

``parquet_io_manager`` stores DataFrame assets as ``<datasets dir>/<asset name>.parquet``
(``models.config.datasets_dir()``, i.e. ``$FLEETCAST_DATA_DIR/datasets``) and loads them back for
downstream assets and checks; :func:`dataset_path` gives the same path to code outside Dagster.
It is Dagster's :class:`~dagster.UPathIOManager` (paths, directories, the ``path`` metadata,
partitions should an asset ever get them) with Parquet as the format.

``mlflow`` (:class:`orchestration.mlflow_resource.MlflowResource`) is ``models.registry`` bound to one
tracking URI. Other values (model dicts, the experiment split) go to Dagster's default
``io_manager`` (pickles under ``$DAGSTER_HOME/storage``).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

from models import config
from orchestration.mlflow_resource import MlflowResource

PARQUET_IO_MANAGER = "parquet_io_manager"


def dataset_path(asset_name: str, base_dir: str | Path | None = None) -> Path:
    """``<base_dir or datasets dir>/<asset_name>.parquet``."""
    base = Path(base_dir) if base_dir else config.datasets_dir()
    base.mkdir(parents=True, exist_ok=True)
    return base / f"{asset_name}.parquet"


class ParquetFiles(dg.UPathIOManager):
    """DataFrames as ``<base_path>/<asset key>.parquet``; a write never leaves a half-written file."""

    extension = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{PARQUET_IO_MANAGER} stores DataFrames, got {type(obj).__name__}")
        tmp = path.with_suffix(".parquet.tmp")
        obj.to_parquet(tmp, index=False)
        tmp.replace(path)  # readers never see a half-written file

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: materialize {context.asset_key.to_user_string()} first")
        return pd.read_parquet(path)


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Stores DataFrame assets as Parquet files named after the asset in the datasets dir."""

    base_dir: str | None = Field(
        default=None, description="directory of the Parquet files (empty: $FLEETCAST_DATA_DIR/datasets)")

    def create_io_manager(self, context: dg.InitResourceContext) -> ParquetFiles:
        # read at run time, so a run sees the data dir of its environment
        return ParquetFiles(base_path=UPath(self.base_dir or config.datasets_dir()))


RESOURCES: dict[str, object] = {PARQUET_IO_MANAGER: ParquetIOManager(), "mlflow": MlflowResource()}
