"""Dagster resources: where datasets live on disk.

``parquet_io_manager`` stores DataFrame assets as ``<datasets dir>/<asset name>.parquet``
(``models.config.datasets_dir()``, i.e. ``$FLEETCAST_DATA_DIR/datasets``) and loads them back for
downstream assets and checks; :func:`dataset_path` gives the same path to code outside Dagster.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from models import config

PARQUET_IO_MANAGER = "parquet_io_manager"


def dataset_path(asset_name: str, base_dir: str | Path | None = None) -> Path:
    """``<base_dir or datasets dir>/<asset_name>.parquet``."""
    base = Path(base_dir) if base_dir else config.datasets_dir()
    base.mkdir(parents=True, exist_ok=True)
    return base / f"{asset_name}.parquet"


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores DataFrame assets as Parquet files named after the asset in the datasets dir."""

    base_dir: str | None = None  # default: models.config.datasets_dir(), read at run time

    def _path(self, key: dg.AssetKey) -> Path:
        return dataset_path("__".join(key.path), self.base_dir)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{PARQUET_IO_MANAGER} stores DataFrames, got {type(obj).__name__}")
        path = self._path(context.asset_key)
        tmp = path.with_suffix(".parquet.tmp")
        obj.to_parquet(tmp, index=False)
        tmp.replace(path)  # readers never see a half-written file
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        path = self._path(context.asset_key)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: materialize {context.asset_key.to_user_string()} first"
            )
        return pd.read_parquet(path)


RESOURCES: dict[str, object] = {PARQUET_IO_MANAGER: ParquetIOManager()}
