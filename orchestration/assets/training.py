"""Training assets (group "training"): the split, built once per run, and the trained TFT.

Thin glue: the protocol lives in models.evaluation, the loop in models.tft, MLflow in models.registry
(through the ``mlflow`` resource). ``experiment_split`` is read by tft_model, model_evaluation
(assets/evaluation.py) and champion_model (assets/promotion.py); one MLflow run spans the four model
assets (its id travels in their values).
"""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from models import config, evaluation, production, tft
from orchestration.mlflow_resource import MlflowResource
from orchestration.resources import dataset_path

GROUP = "training"


class TrainConfig(dg.Config):
    """Training run. ``preset`` fills every default; any field set here overrides the preset.

    - ``demo``: about 7-11 minutes end to end on 2 CPU cores (8 x 75 batches of 64, lr 3e-3);
    - ``full``: whole epochs (20, batch 128), ``accelerator="auto"`` (GPU if present);
    - ``tiny``: seconds, for smoke tests only.
    """

    preset: str = Field(default="demo", description="demo | full | tiny: fills every default below")
    max_epochs: int | None = Field(default=None, description="epochs (empty: preset)")
    batch_size: int | None = Field(default=None, description="samples per batch (empty: preset)")
    learning_rate: float | None = Field(default=None, description="Adam learning rate (empty: preset)")
    hidden_size: int | None = Field(
        default=None, description="TFT hidden size; hidden_continuous_size = half (empty: preset, 32)")
    limit_train_batches: float | None = Field(
        default=None, description=">= 1: batches per epoch; < 1: fraction of an epoch (empty: preset)")
    init_from_champion: bool = Field(
        default=False, description="fine-tune: start from the current champion's weights and encoders "
                                   "(no champion: train from scratch)")
    seed: int = Field(default=42, description="seed for weights and sampling")
    accelerator: str | None = Field(default=None, description="cpu | gpu | auto (empty: preset)")


class SplitConfig(dg.Config):
    """What the run learns from and is scored on (models.production)."""

    source: str = Field(default="simulated", description=(
        "simulated: fleet_dataset (80/20 split, two unseen servers); feed: production_dataset (first 80 % of "
        "feed time trains, the last 20 % is scored); mixed: both train, scored on the held-out feed windows"))


def _preset(cfg: TrainConfig) -> tft.Preset:
    limit: int | float | None = cfg.limit_train_batches
    if limit is not None and limit >= 1:
        limit = int(limit)
    overrides: dict[str, Any] = dict(
        max_epochs=cfg.max_epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        limit_train_batches=limit, seed=cfg.seed, accelerator=cfg.accelerator,
    )
    if cfg.hidden_size is not None:
        overrides["hidden_size"] = cfg.hidden_size
        # same ratio as the presets (hidden 32 -> continuous 8, ~86K parameters)
        overrides["hidden_continuous_size"] = max(1, cfg.hidden_size // 4)
    return tft.resolve_preset(cfg.preset, **overrides)


def experiment_split_source(context: dg.AssetExecutionContext) -> str:
    """The ``source`` the run's experiment_split was configured with (simulated when not in this run)."""
    ops = (context.run.run_config or {}).get("ops", {})
    return str(ops.get("experiment_split", {}).get("config", {}).get("source", "simulated"))


def _checkpoint_path(run_id: str) -> Path:
    return config.data_dir() / "models" / run_id / "tft.pt"


def load_dataset(name: str) -> pd.DataFrame:
    """The last materialized ``fleet_dataset`` / ``production_dataset`` (its Parquet file, as the IO
    manager wrote it). Read only when the run's source needs it: a feed-only run never needs the
    simulated dataset, a simulated run never reads the feed."""
    path = dataset_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: materialize {name} first")
    return pd.read_parquet(path)


@dg.asset(
    group_name=GROUP,
    deps=[dg.AssetKey("fleet_dataset"), dg.AssetKey("production_dataset")],
    description="The evaluation protocol, once per run. source=simulated: fleet_dataset, 80/20 split by "
                "time, two held-out (unseen) servers (models.evaluation.prepare_experiment); source=feed or "
                "mixed: production_dataset, first 80 % of feed time trains (+ the simulated training part "
                "for mixed), scored on the held-out production windows (models.production). Windows: origin "
                "every 2 h. tft_model, model_evaluation and champion_model all use this one split.",
    kinds={"pandas"},
)
def experiment_split(context: dg.AssetExecutionContext, config: SplitConfig) -> dg.Output[evaluation.Experiment]:
    if config.source not in production.SOURCES:
        raise ValueError(f"unknown source {config.source!r}; choose one of {', '.join(production.SOURCES)}")
    if config.source == "simulated":
        exp = evaluation.prepare_experiment(load_dataset("fleet_dataset"))
    else:
        exp = production.prepare_production_experiment(
            load_dataset("production_dataset"),
            simulated=load_dataset("fleet_dataset") if config.source == "mixed" else None)
    s = exp.summary()
    context.log.info(f"split at {s['cutoff']}: {len(s['seen_servers'])} seen, unseen {s['unseen_servers']}, "
                     f"{s['n_windows']} + {s['n_unseen_windows']} validation windows, dataset {s['fingerprint']}")
    return dg.Output(exp, metadata={
        "cutoff": s["cutoff"],
        "seen_servers": dg.MetadataValue.text(", ".join(s["seen_servers"])),
        "unseen_servers": dg.MetadataValue.text(", ".join(s["unseen_servers"])),
        "n_records": s["n_records"],
        "n_train_rows": s["n_train_rows"],
        "n_windows": s["n_windows"],
        "n_unseen_windows": s["n_unseen_windows"],
        "dataset_fingerprint": s["fingerprint"],
        "source": config.source,
        "scored_on": "held-out production windows (last 20 % of feed time)" if config.source != "simulated"
        else "simulated validation windows (last 20 %)",
    })


@dg.asset(
    group_name=GROUP,
    description="Trains the TFT (models.tft.train_tft) on experiment_split's training part (first 80 %, "
                "two held-out servers left out); logs params and per-epoch loss to a new MLflow run.",
    kinds={"pytorch", "mlflow"},
)
def tft_model(
    context: dg.AssetExecutionContext, config: TrainConfig, mlflow: MlflowResource,
    experiment_split: evaluation.Experiment,
) -> dg.Output[dict[str, Any]]:
    preset = _preset(config)
    exp = experiment_split
    init = None
    if config.init_from_champion:
        try:
            init = tft.Forecaster.from_checkpoint(mlflow.champion_checkpoint())
        except LookupError:
            context.log.warning("init_from_champion: there is no champion yet, training from scratch")
    source = experiment_split_source(context)
    params = {"preset": config.preset, **tft.settings_params(preset), **exp.split.as_params(),
              "n_records": exp.n_records, "n_train_rows": len(exp.train_frame), "source": source,
              "init_from_champion": init is not None,
              "init_run_id": (init.metadata.get("run_id", "") if init is not None else "")}
    tags = {"preset": config.preset, "dagster_run_id": context.run_id, "source": source,
            **{f"dagster/{k}": v for k, v in context.run.tags.items() if k.startswith("fleetcast/")}}
    run_id = mlflow.start_run(params, tags=tags, run_name=f"tft-{config.preset}-{source}"
                              + ("-finetune" if init is not None else ""))
    context.log.info(f"MLflow run {run_id}; preset {config.preset}: {tft.settings_params(preset)}")

    def on_epoch(r: tft.EpochRecord) -> None:
        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        context.log.info(f"epoch {r.epoch + 1}/{preset.train.max_epochs}: train_loss={fmt(r.train_loss)} "
                         f"val_loss={fmt(r.val_loss)} ({r.seconds:.0f}s)")
        mlflow.log_epoch(run_id, r)  # live in the MLflow UI while the loop runs

    result = tft.train_tft(exp.train_frame, exp.val_dataset_builder, preset.model, preset.train, on_epoch,
                           init=init)
    path = _checkpoint_path(run_id)
    meta = {**params, "run_id": run_id, "n_parameters": result.n_parameters}
    tft.Forecaster(result.model, result.training_servers, meta).save(path)
    c = mlflow.client()
    c.log_param(run_id, "n_parameters", result.n_parameters)
    c.log_param(run_id, "n_train_samples", result.n_train_samples)
    c.log_param(run_id, "train_threads", result.threads)
    context.log.info(f"trained in {result.seconds:.0f}s on {result.threads} torch thread(s); weights of epoch "
                     f"{'last' if result.best_epoch is None else result.best_epoch + 1} (lowest validation loss)")
    c.log_metric(run_id, "train_seconds", result.seconds)
    value = {"run_id": run_id, "checkpoint": str(path), "preset": config.preset,
             "n_parameters": result.n_parameters, "fingerprint": exp.split.fingerprint,
             "train_seconds": round(result.seconds, 1), "train_threads": result.threads}
    last = result.history[-1] if result.history else None
    return dg.Output(value, metadata={
        "mlflow_run_id": run_id,
        "checkpoint": dg.MetadataValue.path(str(path)),
        "n_parameters": result.n_parameters,
        "train_seconds": round(result.seconds, 1),
        "train_threads": result.threads,
        "epochs": len(result.history),
        "final_train_loss": float(last.train_loss) if last and last.train_loss is not None else float("nan"),
        "final_val_loss": float(last.val_loss) if last and last.val_loss is not None else float("nan"),
    })
