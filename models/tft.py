"""Temporal Fusion Transformer: construction, the Lightning training loop, and batched inference.

- :func:`build_model` makes the TFT from a training ``TimeSeriesDataSet`` (4 targets, quantile loss
  P10/P50/P90 for each).
- :func:`train_tft` runs Lightning on it and records per-epoch train/val loss.
- :class:`Forecaster` serves a trained model: the input tensors of all servers built at once from
  the aligned history by :mod:`models.inference` (no ``TimeSeriesDataSet`` per call), CPU-sized
  batches through :class:`models.fused.FusedTFT` (the library's forward without its interpretation
  outputs, same predictions) under ``torch.inference_mode`` (no Trainer, no per-call ``predict()``).
  BentoML and the MLflow pyfunc go through it; the evaluation uses the library's ``model(x)``.

A checkpoint is a ``torch.save`` dict (:data:`CHECKPOINT_FORMAT`): the model's hyper-parameters
(which include ``dataset_parameters``: the fitted encoders and scalers), its ``state_dict``, the
training servers and free-form metadata. It loads on CPU without any training objects.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.metrics import MultiLoss, QuantileLoss

from models import batches, features, fused, grid, inference, schema
from models.settings import get_settings

log = logging.getLogger(__name__)

QUANTILES: tuple[float, float, float] = (0.1, 0.5, 0.9)
CHECKPOINT_FORMAT = "fleetcast-tft/1"
# series per forward pass on CPU: larger batches spill the caches (fused forward, hidden 32, 1,000 servers,
# wall seconds on one worker / two workers: 16 -> 1.41-1.62 / 0.67, 32 -> 1.42-1.59 / 0.62-0.68,
# 64 -> 1.71 / 0.72-0.89, 128 -> 1.83-2.07 / 1.03-1.06; docs/performance.md "Serving")
INFERENCE_CHUNK = 32
# torch intra-op threads while forecasting (restored afterwards; None: torch's default). One thread: on a
# small shared CPU two OpenMP threads spin-wait whenever the other core is busy.
INFERENCE_THREADS: int | None = 1
# batches forwarded concurrently, each on its own Python thread with one intra-op thread (torch releases
# the GIL inside ops): the cores are used without OpenMP barriers, so a busy core slows, never stalls, it
# (1,000 servers, 2 cores, fused forward: 1.42-1.59 s on one worker, 0.62-0.68 s on two, identical results)
INFERENCE_WORKERS = max(1, min(4, os.cpu_count() or 1))
# a batch of network inputs -> the model's "prediction" (one tensor per target, in metric units)
Network = Callable[[dict[str, Any]], Any]
_BOUNDS: dict[str, tuple[float, float]] = {
    f.name: (f.ge if f.ge is not None else -np.inf, f.le if f.le is not None else np.inf)
    for f in schema.FIELDS if f.name in schema.METRICS
}


# --- construction ------------------------------------------------------------------------------------
@dataclass
class ModelSettings:
    """Network size. Defaults give ~86K parameters (hidden 32, 10 real inputs embedded at width 8)."""

    hidden_size: int = 32
    hidden_continuous_size: int = 8
    lstm_layers: int = 2
    attention_head_size: int = 4
    dropout: float = 0.1
    learning_rate: float = 1e-3


def build_model(dataset: TimeSeriesDataSet, settings: ModelSettings | None = None) -> TemporalFusionTransformer:
    """A TFT for the dataset's four targets with a P10/P50/P90 quantile loss on each."""
    s = settings or ModelSettings()
    n_targets = len(features.TARGETS)
    return TemporalFusionTransformer.from_dataset(
        dataset,
        hidden_size=s.hidden_size,
        hidden_continuous_size=s.hidden_continuous_size,
        lstm_layers=s.lstm_layers,
        attention_head_size=s.attention_head_size,
        dropout=s.dropout,
        learning_rate=s.learning_rate,
        output_size=[len(QUANTILES)] * n_targets,
        loss=MultiLoss([QuantileLoss(quantiles=list(QUANTILES)) for _ in range(n_targets)]),
        log_interval=-1,
        reduce_on_plateau_patience=1000,
    )


def n_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# --- training ----------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    """Lightning loop settings; ``limit_*_batches`` accept an int (batches) or a float (fraction)."""

    max_epochs: int = 5
    batch_size: int = 64
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    gradient_clip_val: float = 0.1
    accelerator: str = "cpu"
    seed: int = 42
    num_workers: int = 0
    # torch intra-op threads while training (restored afterwards); None: chosen at start from the idle
    # cores (:func:`training_threads`; FLEETCAST_TRAIN_THREADS overrides both). On a shared CPU more
    # threads than idle cores is much slower: OpenMP threads spin-wait when oversubscribed.
    num_threads: int | None = None
    # "onecycle": the learning rate warms up from lr / 10 to the model's learning rate over the first
    # ``warmup_fraction`` of the steps, then anneals (cosine) to lr / 1,000 at the last step; "constant": lr
    lr_schedule: str = "onecycle"
    warmup_fraction: float = 0.25
    # stopping rule: stop when the validation loss has not improved for this many epochs (0: run every
    # epoch); either way the weights of the epoch with the lowest validation loss are the result
    patience: int = 0
    # batches built as tensors by models.batches (False: the library's per-sample dataloader)
    fast_batches: bool = True
@dataclass(frozen=True)
class Preset:
    model: ModelSettings
    train: TrainSettings


PRESETS: dict[str, Preset] = {
    # tests: seconds on one core
    "tiny": Preset(
        ModelSettings(hidden_size=8, hidden_continuous_size=4, lstm_layers=1, attention_head_size=1),
        TrainSettings(max_epochs=1, batch_size=32, limit_train_batches=20, limit_val_batches=2,
                      lr_schedule="constant"),
    ),
    # about 10 minutes end to end on 2 CPU cores (data, training, evaluation, logging)
    "demo": Preset(
        ModelSettings(learning_rate=3e-3),
        TrainSettings(max_epochs=8, batch_size=64, limit_train_batches=75, limit_val_batches=2),
    ),
    # whole epochs; GPU if there is one
    "full": Preset(
        ModelSettings(),
        TrainSettings(max_epochs=20, batch_size=128, limit_train_batches=1.0, limit_val_batches=1.0,
                      accelerator="auto", num_threads=None),
    ),
}


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float | None
    val_loss: float | None
    seconds: float


class EpochHistory(pl.Callback):
    """Collects per-epoch train/val loss and forwards each epoch to ``on_epoch`` (e.g. a Dagster log)."""

    def __init__(self, on_epoch: Callable[[EpochRecord], None] | None = None) -> None:
        self.records: list[EpochRecord] = []
        self.on_epoch = on_epoch
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics

        def value(*names: str) -> float | None:
            for name in names:
                if name in metrics:
                    return float(metrics[name])
            return None

        record = EpochRecord(
            epoch=trainer.current_epoch,
            train_loss=value("train_loss_epoch", "train_loss"),
            val_loss=value("val_loss"),
            seconds=time.perf_counter() - self._start,
        )
        self.records.append(record)
        if self.on_epoch is not None:
            self.on_epoch(record)


@dataclass
class TrainResult:
    model: TemporalFusionTransformer
    history: list[EpochRecord]
    training_servers: frozenset[str]
    seconds: float
    n_train_samples: int
    threads: int = 1
    best_epoch: int | None = None  # epoch of the weights kept (lowest validation loss); None: the last
    n_parameters: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_parameters = n_parameters(self.model)


def train_tft(
    train_frame: pd.DataFrame,
    val_dataset_builder: Callable[[dict[str, Any]], TimeSeriesDataSet] | None = None,
    model_settings: ModelSettings | None = None,
    train_settings: TrainSettings | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    init: Forecaster | None = None,
) -> TrainResult:
    """Train a TFT on ``train_frame`` (a :func:`models.features.prepare_frame` output).

    ``val_dataset_builder`` gets the fitted dataset parameters and returns the validation dataset
    (see :func:`models.evaluation.validation_dataset`); without it no validation loss is computed.

    ``init``: fine-tune, starting from that forecaster's weights and with its dataset parameters
    (encoders, normalizers; its network size wins over ``model_settings``, whose learning rate is
    used). The forecaster itself is not changed. Its training servers stay "seen".
    """
    ts = train_settings or TrainSettings()
    pl.seed_everything(ts.seed, workers=True, verbose=False)
    started = time.perf_counter()
    if init is None:
        train_ds = features.build_training_dataset(train_frame)
        model = build_model(train_ds, model_settings)
    else:
        # the champion's own encoders and normalizers, any time range (a trace from 2014 trains too)
        train_ds = TimeSeriesDataSet.from_parameters(init.inference_parameters, train_frame, predict=False)
        model = deepcopy(init.model).train()
        model.hparams.learning_rate = (model_settings or ModelSettings()).learning_rate
    train_loader, val_loader = _loaders(train_ds, val_dataset_builder, ts)
    history = EpochHistory(on_epoch)
    best = BestWeights()
    callbacks: list[pl.Callback] = [history, best]
    if ts.lr_schedule == "onecycle":
        callbacks.append(OneCycle(ts.warmup_fraction))
    elif ts.lr_schedule != "constant":
        raise ValueError(f"unknown lr_schedule {ts.lr_schedule!r}; choose onecycle or constant")
    if ts.patience > 0 and val_loader is not None:
        callbacks.append(pl.callbacks.EarlyStopping(monitor="val_loss", patience=ts.patience, mode="min"))
    trainer = pl.Trainer(
        max_epochs=ts.max_epochs,
        accelerator=ts.accelerator,
        devices=1,
        gradient_clip_val=ts.gradient_clip_val,
        limit_train_batches=ts.limit_train_batches,
        limit_val_batches=ts.limit_val_batches if val_loader is not None else 0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=False,
    )
    threads, why = training_threads(ts.num_threads)
    log.info("training with %d torch thread(s) (%s), %s batches", threads, why,
             "models.batches" if isinstance(train_loader.dataset, batches.WindowBatches) else "library")
    with torch_threads(threads):
        trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)
    best.restore(model)
    model = model.cpu().eval()
    servers = frozenset(train_frame[schema.SERVER].unique().tolist())
    if init is not None:
        servers |= init.training_servers
    return TrainResult(model=model, history=history.records, training_servers=servers,
                       seconds=time.perf_counter() - started, n_train_samples=len(train_ds), threads=threads,
                       best_epoch=best.epoch)


# validation windows scored per check: a fixed random sample of them (all servers), not the first ones
VAL_SAMPLE_SEED = 0


def _loaders(train_ds: TimeSeriesDataSet, val_dataset_builder: Callable[[dict[str, Any]], TimeSeriesDataSet] | None,
             ts: TrainSettings) -> tuple[Any, Any]:
    """Training and validation batches: built as tensors (:mod:`models.batches`) where the dataset allows,
    else the library's dataloaders."""
    val_ds = val_dataset_builder(train_ds.get_parameters()) if val_dataset_builder is not None else None
    val_batch = ts.batch_size * 4
    if ts.fast_batches:
        try:
            train_loader = batches.WindowBatches(train_ds).dataloader(True, ts.batch_size, ts.num_workers)
            val_loader = None if val_ds is None else batches.WindowBatches(val_ds, randomize=False).dataloader(
                False, val_batch, ts.num_workers, seed=VAL_SAMPLE_SEED)
            return train_loader, val_loader
        except batches.Unsupported as exc:
            log.warning("training batches through the library's dataloader (slower): %s", exc)
    train_loader = train_ds.to_dataloader(train=True, batch_size=ts.batch_size, num_workers=ts.num_workers)
    val_loader = None if val_ds is None else val_ds.to_dataloader(train=False, batch_size=val_batch,
                                                                  num_workers=ts.num_workers)
    return train_loader, val_loader


def training_threads(requested: int | None = None) -> tuple[int, str]:
    """(torch threads to train with, why): ``FLEETCAST_TRAIN_THREADS`` if set, else ``requested``, else
    the idle cores at start (CPU count minus the 1-minute load average, rounded, at least 1)."""
    configured = get_settings().train_threads
    if configured is not None:
        if configured < 1:
            raise ValueError(f"FLEETCAST_TRAIN_THREADS must be at least 1, got {configured}")
        return configured, "FLEETCAST_TRAIN_THREADS"
    if requested is not None:
        return requested, "preset"
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    return max(1, min(cpus, int(cpus - load + 0.5))), f"auto: {cpus} CPUs, load average {load:.2f}"


class OneCycle(pl.Callback):
    """One-cycle learning rate (:class:`torch.optim.lr_scheduler.OneCycleLR`, no momentum cycling) over the
    run's optimizer steps: up from lr / 10 for ``warmup_fraction`` of them, then cosine down to lr / 1,000."""

    def __init__(self, warmup_fraction: float = 0.25) -> None:
        self.warmup_fraction = warmup_fraction
        self.scheduler: torch.optim.lr_scheduler.OneCycleLR | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        total = max(2, int(trainer.estimated_stepping_batches))
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=self.warmup_fraction, div_factor=10.0, final_div_factor=100.0, cycle_momentum=False)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.scheduler is not None and self.scheduler.last_epoch < self.scheduler.total_steps - 1:
            self.scheduler.step()


class BestWeights(pl.Callback):
    """Keeps the weights of the validation with the lowest ``val_loss``; :meth:`restore` puts them back."""

    def __init__(self) -> None:
        self.best = float("inf")
        self.epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_loss")
        if trainer.sanity_checking or value is None or not float(value) < self.best:
            return
        self.best, self.epoch = float(value), int(trainer.current_epoch)
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def restore(self, model: torch.nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, then restore the previous setting."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- batched inference -------------------------------------------------------------------------------
@dataclass
class ServerForecast:
    server_name: str
    profile: str
    origin: pd.Timestamp  # timestamp of the last observed step
    timestamps: pd.DatetimeIndex  # the 96 future 5-minute steps
    quantiles: dict[str, np.ndarray]  # metric -> (96, 3): P10, P50, P90 in metric units
    history_steps: int  # encoder length used (12..288)
    seen_in_training: bool  # server_name was in the training set


@torch.inference_mode()
def predict_dataset(
    model: TemporalFusionTransformer, dataset: TimeSeriesDataSet, batch_size: int = INFERENCE_CHUNK
) -> tuple[np.ndarray, pd.DataFrame]:
    """Quantile forecasts for every sample of ``dataset`` with the model's own tensors.

    Returns (array [n, horizon, n_targets, n_quantiles] in metric units, clipped to the contract's
    ranges and sorted so P10 <= P50 <= P90; index frame with ``server_name`` and ``time_idx`` of the
    first predicted step, one row per sample in the same order).
    """
    model.eval()
    loader = dataset.to_dataloader(train=False, batch_size=batch_size, num_workers=0)
    outputs: list[np.ndarray] = []
    indices: list[pd.DataFrame] = []
    device = next(model.parameters()).device
    for x, _ in loader:
        x = {k: _to(v, device) for k, v in x.items()}
        outputs.append(_quantiles(model, x))
        indices.append(dataset.x_to_index(x))
    if not outputs:
        n_targets = len(features.TARGETS)
        return np.zeros((0, dataset.max_prediction_length, n_targets, len(QUANTILES))), pd.DataFrame(
            columns=[features.TIME_IDX, schema.SERVER])
    index = pd.concat(indices, ignore_index=True)
    index[schema.SERVER] = index[schema.SERVER].astype(str)
    return _finish(outputs), index


def predict_windows(
    model: TemporalFusionTransformer, dataset: TimeSeriesDataSet, batch_size: int = INFERENCE_CHUNK,
    workers: int = INFERENCE_WORKERS,
) -> tuple[np.ndarray, pd.DataFrame]:
    """:func:`predict_dataset` on the fast path: the dataset's windows built as tensors
    (:class:`models.batches.WindowBatches`, equal to its dataloader's) through the fused forward
    (:class:`models.fused.FusedTFT`, equal to the library's to float32 rounding), ``workers`` batches at a
    time on one intra-op thread each. Same array and index; the library path where either is unsupported."""
    try:
        built = batches.WindowBatches(dataset, randomize=False)
    except batches.Unsupported as exc:
        log.warning("evaluating through the library's dataloader (slower): %s", exc)
        return predict_dataset(model, dataset, batch_size)
    model.eval()
    try:
        network: Network | None = fused.FusedTFT(model)
    except fused.Unsupported as exc:
        log.warning("evaluating with the library's forward pass (slower): %s", exc)
        network = None
    starts = list(range(0, len(built), batch_size))
    if not starts:
        return predict_dataset(model, dataset, batch_size)

    def run(start: int) -> tuple[np.ndarray, pd.DataFrame]:
        with torch.inference_mode():
            x, _ = built.__getitems__(list(range(start, min(start + batch_size, len(built)))))
            return _quantiles(model, x, network), dataset.x_to_index(x)

    with torch_threads(INFERENCE_THREADS):
        if workers > 1 and len(starts) > 1:
            with ThreadPoolExecutor(max_workers=min(workers, len(starts)), thread_name_prefix="tft-eval") as pool:
                parts = list(pool.map(run, starts))
        else:
            parts = [run(start) for start in starts]
    index = pd.concat([p[1] for p in parts], ignore_index=True)
    index[schema.SERVER] = index[schema.SERVER].astype(str)
    return _finish([p[0] for p in parts]), index


def predict_encoded(
    model: TemporalFusionTransformer, fleet: inference.EncodedFleet, batch_size: int = INFERENCE_CHUNK,
    workers: int = 1, network: Network | None = None,
) -> np.ndarray:
    """:func:`predict_dataset` for tensors from :class:`models.inference.TensorBuilder`.

    Returns the same array, one row per server of ``fleet`` in its order. Batches group servers of
    similar history length, so little of each batch is padding; ``workers`` threads forward them
    concurrently (the model is only read). ``network`` maps a batch to the model's ``prediction``
    (default: the library's ``model(x)``; :class:`Forecaster` passes :class:`models.fused.FusedTFT`).
    """
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort(-fleet.encoder_lengths, kind="stable")

    def run(start: int) -> np.ndarray:
        with torch.inference_mode():  # thread-local: entered in each worker
            x = fleet.batch(order[start:start + batch_size])
            return _quantiles(model, {k: _to(v, device) for k, v in x.items()}, network)

    starts = range(0, len(order), batch_size)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(starts)), thread_name_prefix="tft-forward") as pool:
            outputs = list(pool.map(run, starts))
    else:
        outputs = [run(start) for start in starts]
    stacked = np.concatenate(outputs, axis=0)
    values = np.empty_like(stacked)
    values[order] = stacked  # back to the fleet's (name) order
    return _finish([values])


def _quantiles(model: TemporalFusionTransformer, x: dict[str, Any], network: Network | None = None) -> np.ndarray:
    """[batch, horizon, n_targets, n_quantiles] in metric units for one collated batch."""
    prediction = network(x) if network is not None else model(x)["prediction"]
    q = model.to_quantiles({"prediction": prediction})  # list per target: [batch, horizon, n_quantiles]
    if isinstance(q, torch.Tensor):
        q = [q]
    return torch.stack([t.float().cpu() for t in q], dim=2).numpy()


def _finish(outputs: list[np.ndarray]) -> np.ndarray:
    """Concatenate, sort the quantiles (P10 <= P50 <= P90) and clip to the contract's ranges."""
    values = np.sort(np.concatenate(outputs, axis=0), axis=-1)
    for i, metric in enumerate(features.TARGETS):
        lo, hi = _BOUNDS[metric]
        values[:, :, i, :] = np.clip(values[:, :, i, :], lo, hi)
    return values


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value


class Forecaster:
    """A trained TFT ready to forecast any number of servers in one batched pass."""

    def __init__(self, model: TemporalFusionTransformer, training_servers: Sequence[str] | frozenset[str],
                 metadata: dict[str, Any] | None = None) -> None:
        self.model = model.cpu().eval()
        self._training_servers = frozenset(training_servers)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.n_parameters: int = n_parameters(self.model)

    @property
    def dataset_parameters(self) -> dict[str, Any]:
        return self.model.dataset_parameters

    @cached_property
    def inference_parameters(self) -> dict[str, Any]:
        """:attr:`dataset_parameters` for forecasting (:func:`models.features.inference_parameters`)."""
        return features.inference_parameters(self.dataset_parameters)

    @property
    def training_servers(self) -> frozenset[str]:
        return self._training_servers

    @property
    def max_encoder_length(self) -> int:
        return int(self.dataset_parameters["max_encoder_length"])

    @property
    def min_encoder_length(self) -> int:
        return int(self.dataset_parameters["min_encoder_length"])

    @property
    def horizon(self) -> int:
        return int(self.dataset_parameters["max_prediction_length"])

    # persistence
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "hparams": dict(self.model.hparams),
            "loss": self.model.loss,  # not part of hparams (Lightning keeps modules out)
            "state_dict": self.model.state_dict(),
            "training_servers": sorted(self._training_servers),
            "metadata": self.metadata,
        }
        torch.save(payload, path)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Forecaster:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no TFT checkpoint at {path}")
        # the checkpoint pickles encoders/scalers (dataset_parameters): needs weights_only=False
        payload = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
        model = TemporalFusionTransformer(loss=payload["loss"], **payload["hparams"])
        model.load_state_dict(payload["state_dict"])
        return cls(model, payload["training_servers"], payload.get("metadata"))

    # inference
    @cached_property
    def _network(self) -> Network | None:
        """The fused inference-only forward (:mod:`models.fused`); None: the library's, which the model needs."""
        try:
            return fused.FusedTFT(self.model)
        except fused.Unsupported as exc:
            log.warning("forecasting with the library's forward pass (slower): %s", exc)
            return None

    @cached_property
    def _tensor_builder(self) -> inference.TensorBuilder | None:
        """The fast tensor builder for this model's dataset parameters; None if they need the dataset path."""
        try:
            return inference.TensorBuilder(self.inference_parameters, self.model.hparams.get("x_reals"),
                                           self.model.hparams.get("x_categoricals"))
        except inference.UnsupportedDataset as exc:
            log.warning("forecasting through TimeSeriesDataSet (slower): %s", exc)
            return None

    def forecast(self, history: pd.DataFrame) -> dict[str, ServerForecast]:
        """Forecast every server in ``history`` (long-format records) with >= 12 steps of history.

        One batched pass on the model's own tensors, built straight from the aligned history by
        :mod:`models.inference` (the ``TimeSeriesDataSet`` path when the parameters need it).
        """
        with torch_threads(INFERENCE_THREADS):
            values, servers, info = self._predict(history)
        steps = pd.to_timedelta(np.arange(1, self.horizon + 1) * schema.STEP_MINUTES, unit="min")
        out: dict[str, ServerForecast] = {}
        profiles, origins = info[schema.PROFILE].to_dict(), info["origin"].to_dict()
        history_steps = info["history_steps"].to_dict()
        horizons: dict[pd.Timestamp, pd.DatetimeIndex] = {}  # one (immutable) index per distinct origin
        for row, server in enumerate(servers):
            origin = pd.Timestamp(origins[server])
            if origin not in horizons:
                horizons[origin] = pd.DatetimeIndex(origin + steps)
            out[server] = ServerForecast(
                server_name=server,
                profile=str(profiles[server]),
                origin=origin,
                timestamps=horizons[origin],
                quantiles={m: values[row, :, i, :] for i, m in enumerate(features.TARGETS)},
                history_steps=int(history_steps[server]),
                seen_in_training=server in self._training_servers,
            )
        return out

    def _predict(self, history: pd.DataFrame) -> tuple[np.ndarray, list[str], pd.DataFrame]:
        """(quantile array, server of each row, per-server info indexed by server_name)."""
        history = on_grid(history, self.max_encoder_length)
        builder = self._tensor_builder
        if builder is not None:
            aligned = inference.align_history(history, self.max_encoder_length, self.min_encoder_length)
            if aligned.info.empty:
                return np.zeros((0, self.horizon, len(features.TARGETS), len(QUANTILES))), [], aligned.info
            try:
                fleet = builder.encode(aligned)
            except inference.UnsupportedDataset as exc:
                log.warning("forecasting through TimeSeriesDataSet (slower): %s", exc)
            else:
                values = predict_encoded(self.model, fleet, INFERENCE_CHUNK, INFERENCE_WORKERS, self._network)
                return values, [str(s) for s in fleet.servers], aligned.info
        frame, info = features.inference_frame(
            history, self.max_encoder_length, self.min_encoder_length, self.horizon
        )
        if info.empty:
            return np.zeros((0, self.horizon, len(features.TARGETS), len(QUANTILES))), [], info
        dataset = features.dataset_from_parameters(self.inference_parameters, frame, predict=True)
        values, index = predict_dataset(self.model, dataset)
        return values, index[schema.SERVER].tolist(), info


def on_grid(history: pd.DataFrame, steps: int) -> pd.DataFrame:
    """``history`` unchanged when every timestamp is on the 5-minute grid (the store's history, training
    frames); otherwise put on it by the one alignment policy (:func:`models.grid.align`, averaging the
    records of a bucket), so off-grid records give the same inputs as through the feed store."""
    if history.empty or schema.TIMESTAMP not in history.columns:
        return history
    ns = pd.DatetimeIndex(pd.to_datetime(history[schema.TIMESTAMP])).as_unit("ns").asi8
    if not (ns % int(schema.STEP.value)).any():
        return history
    return grid.align(history, steps=steps)


def forecasts_to_frame(forecasts: dict[str, ServerForecast]) -> pd.DataFrame:
    """Long format: one row per (server, timestamp, metric) with columns p10, p50, p90."""
    rows: list[pd.DataFrame] = []
    for fc in forecasts.values():
        for metric, q in fc.quantiles.items():
            rows.append(pd.DataFrame({
                schema.SERVER: fc.server_name,
                schema.PROFILE: fc.profile,
                "origin": fc.origin,
                schema.TIMESTAMP: fc.timestamps,
                "step": np.arange(1, len(fc.timestamps) + 1),
                "metric": metric,
                "p10": q[:, 0],
                "p50": q[:, 1],
                "p90": q[:, 2],
            }))
    if not rows:
        return pd.DataFrame(columns=[schema.SERVER, schema.PROFILE, "origin", schema.TIMESTAMP, "step",
                                     "metric", "p10", "p50", "p90"])
    return pd.concat(rows, ignore_index=True)


def resolve_preset(name: str, **overrides: Any) -> Preset:
    """A preset with some fields replaced; ``None`` overrides are ignored. Unknown names raise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    model_fields = set(ModelSettings.__dataclass_fields__)
    train_fields = set(TrainSettings.__dataclass_fields__)
    unknown = set(overrides) - model_fields - train_fields
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    m = {k: v for k, v in overrides.items() if k in model_fields and v is not None}
    t = {k: v for k, v in overrides.items() if k in train_fields and v is not None}
    return Preset(model=replace(base.model, **m), train=replace(base.train, **t))


def settings_params(preset: Preset) -> dict[str, Any]:
    """Flat ``model_*`` / ``train_*`` parameters for MLflow."""
    out = {f"model_{k}": v for k, v in asdict(preset.model).items()}
    out.update({f"train_{k}": v for k, v in asdict(preset.train).items()})
    return out
