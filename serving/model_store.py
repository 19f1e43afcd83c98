"""The champion in BentoML's model store: import (packaging) and load (service start), through
BentoML's public API (``bentoml.models``) only.

The packaging step copies the MLflow registry's champion checkpoint into BentoML's model store as
``fleetcast-tft`` with the registry's version, run id and metrics as labels and metadata, so the
service (and a Bento built from it) runs exactly what the registry calls champion.

Which store: BentoML's own, at ``BENTOML_HOME``, which BentoML reads once, the first time it touches
a store. Importing this module sets ``BENTOML_HOME`` to fleetcast's default (``<data dir>/bentoml``,
``models.config.bentoml_home()``) when it is unset, so a process that gets here first (the Dagster
asset, a script) uses the same store as ``make demo``. ``bentoml serve`` and ``bentoml build`` read it
before any fleetcast code runs: export it for them (the ``fleetcast`` CLI does). Inside a built Bento,
BentoML's store is the Bento's own models.

Where the service finds its model, first hit wins:
1. ``FLEETCAST_MODEL_PATH``: a checkpoint file (``Forecaster.save``), pinned (see docs/operations.md);
2. ``FLEETCAST_MODEL_TAG`` (default ``fleetcast-tft:latest``) in the model store.

A service that loaded its model from the store keeps watching the tag (:func:`current_tag`, see
``serving/runtime.py``): when packaging imports a new champion, the service switches to it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

from models import config
from models.tft import Forecaster
from serving.settings import get_settings

logger = logging.getLogger(__name__)

BENTO_MODEL_NAME = config.MODEL_NAME  # "fleetcast-tft"
CHECKPOINT_FILE = "forecaster.pt"


def use_fleetcast_bentoml_home() -> str:
    """Give BentoML fleetcast's default store (``<data dir>/bentoml``) unless ``BENTOML_HOME`` is set;
    returns the value. Effective only before BentoML's first store access in this process."""
    return os.environ.setdefault("BENTOML_HOME", str(config.bentoml_home()))


use_fleetcast_bentoml_home()


def _label(value: Any) -> str:
    return "" if value is None else str(value)


def import_checkpoint(checkpoint: str | Path, info: dict[str, Any] | None = None,
                      name: str = BENTO_MODEL_NAME) -> bentoml.Model:
    """Copy ``checkpoint`` into the model store as ``name`` with registry ``info`` as labels/metadata.

    ``info``: ``{"name", "version", "run_id", "metrics": {...}}`` (as ``models.registry.load_champion``
    returns it). Idempotent: when the latest ``name`` already holds this registry version and run,
    that model is returned instead of a copy.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    info = dict(info or {})
    labels = {
        "registry_name": _label(info.get("name", BENTO_MODEL_NAME)),
        "registry_version": _label(info.get("version")),
        "run_id": _label(info.get("run_id")),
        "source": "mlflow-registry" if info.get("version") is not None else "checkpoint",
    }
    try:
        latest = bentoml.models.get(f"{name}:latest")
        if labels["run_id"] and {k: latest.info.labels.get(k) for k in labels} == labels:
            logger.info("model store already holds %s for run %s", latest.tag, labels["run_id"])
            return latest
    except NotFound:
        pass
    metrics = {str(k): float(v) for k, v in (info.get("metrics") or {}).items()
               if isinstance(v, int | float)}
    metadata = {"metrics": metrics, "checkpoint": CHECKPOINT_FILE,
                "registry_version": labels["registry_version"], "run_id": labels["run_id"]}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        shutil.copyfile(checkpoint, model.path_of(CHECKPOINT_FILE))
    logger.info("imported %s (registry version %s, run %s)", model.tag, labels["registry_version"],
                labels["run_id"])
    return model


def pinned_path() -> Path | None:
    """``FLEETCAST_MODEL_PATH`` when set: a checkpoint file the service loads instead of the store's tag."""
    return get_settings().model_path


def model_tag() -> str:
    """The tag the service serves: ``FLEETCAST_MODEL_TAG``, default ``fleetcast-tft:latest``."""
    return get_settings().model_tag


def current_tag(tag: str | None = None) -> str | None:
    """The concrete ``name:version`` that ``tag`` (default :func:`model_tag`) resolves to now; None if absent."""
    try:
        return str(bentoml.models.get(tag or model_tag()).tag)
    except NotFound:
        return None


def load_forecaster(tag: str | None = None, path: str | Path | None = None) -> tuple[Forecaster, dict[str, Any]]:
    """The service's model and what it is: ``(forecaster, {"name", "version", "run_id", "source", ...})``."""
    path = path or pinned_path()
    if path:
        forecaster = Forecaster.from_checkpoint(path)
        meta = forecaster.metadata
        return forecaster, {"name": BENTO_MODEL_NAME, "version": _label(meta.get("version")) or "checkpoint",
                            "run_id": _label(meta.get("run_id")) or None, "source": f"file:{Path(path).name}",
                            "tag": None}
    model = bentoml.models.get(tag or model_tag())
    forecaster = Forecaster.from_checkpoint(model.path_of(CHECKPOINT_FILE))
    labels = model.info.labels
    return forecaster, {
        "name": labels.get("registry_name") or model.tag.name,
        "version": labels.get("registry_version") or str(model.tag.version),
        "run_id": labels.get("run_id") or None,
        "source": f"bentoml:{model.tag}",
        "tag": str(model.tag),
        "metrics": dict(model.info.metadata.get("metrics") or {}),
    }


def import_champion(tracking_uri: str | None = None) -> bentoml.Model:
    """Import the MLflow registry's ``fleetcast-tft@champion`` into BentoML's model store.

    LookupError when the registry has no champion. Returns the BentoML model (tag, labels, metadata).
    """
    import tempfile

    from models import registry  # MLflow: the pipeline's dependency, not the service's

    champion = registry.current_champion(tracking_uri)
    if champion is None:
        raise LookupError(f"no {config.MODEL_NAME}@{config.CHAMPION_ALIAS} in the MLflow registry")
    info = registry.version_info(champion, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = registry.champion_checkpoint_path(tracking_uri, dst=tmp)
        return import_checkpoint(checkpoint, info)


def has_model(tag: str | None = None) -> bool:
    """True when BentoML's model store holds ``tag`` (default: :func:`model_tag`)."""
    return current_tag(tag) is not None
