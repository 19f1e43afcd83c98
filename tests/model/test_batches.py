"""models.batches builds exactly the batches of the library's TimeSeriesDataSet dataloader; the training loop's
threads, schedule and best-weights rule; evaluation on the fast path equals the library's."""

from __future__ import annotations

import os
from copy import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import pytorch_forecasting.data.timeseries._timeseries as library_timeseries
import torch
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.data.encoders import EncoderNormalizer, MultiNormalizer

from models import batches, evaluation, features, tft


def assert_same(mine: Any, theirs: Any, path: str = "batch") -> None:
    """Same structure, and every tensor equal in shape, dtype and value (bit for bit)."""
    if isinstance(theirs, list | tuple):
        assert isinstance(mine, list | tuple) and len(mine) == len(theirs), path
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(theirs, dict):
        assert set(mine) == set(theirs), path
        for key in theirs:
            assert_same(mine[key], theirs[key], f"{path}.{key}")
    elif theirs is None:
        assert mine is None, path
    else:
        assert mine.shape == theirs.shape, (path, mine.shape, theirs.shape)
        assert mine.dtype == theirs.dtype, (path, mine.dtype, theirs.dtype)
        assert torch.equal(mine, theirs), (path, (mine.double() - theirs.double()).abs().max())


@pytest.fixture(scope="module")
def training_dataset(tiny_experiment: evaluation.Experiment) -> TimeSeriesDataSet:
    return features.build_training_dataset(tiny_experiment.train_frame)


def sample_ids(dataset: TimeSeriesDataSet, n: int = 24) -> list[int]:
    """Windows spread over every series, first and last included."""
    return np.unique(np.linspace(0, len(dataset) - 1, n).astype(int)).tolist()


def test_full_windows_equal_the_library_batches(training_dataset: TimeSeriesDataSet) -> None:
    fixed = copy(training_dataset)
    fixed.randomize_length = None
    ids = sample_ids(fixed)
    mine = batches.WindowBatches(fixed).__getitems__(ids)
    theirs = fixed._collate_fn([fixed[i] for i in ids])
    assert_same(mine, theirs)
    # windows at the start of a series have shorter encoders in the library's index too
    lengths = mine[0]["encoder_lengths"]
    assert int(lengths.max()) == fixed.max_encoder_length and int(lengths.min()) < fixed.max_encoder_length


def test_random_encoder_lengths_equal_the_library_for_the_same_draws(
        training_dataset: TimeSeriesDataSet, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = sample_ids(training_dataset)
    a, b = training_dataset.randomize_length
    # draws that reach both ends (the minimum encoder, 12 steps) and the middle
    draws = torch.distributions.Beta(torch.tensor(a), torch.tensor(b)).sample((len(ids),))
    draws[:3] = torch.tensor([0.0, 0.5, 1.0])
    replay = iter(draws.tolist())
    monkeypatch.setattr(library_timeseries.Beta, "sample", lambda self, *args: torch.tensor(next(replay)))
    theirs = training_dataset._collate_fn([training_dataset[i] for i in ids])
    monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self, shape=(): draws)
    mine = batches.WindowBatches(training_dataset).__getitems__(ids)
    assert_same(mine, theirs)
    lengths = mine[0]["encoder_lengths"]
    assert int(lengths.min()) == training_dataset.min_encoder_length
    assert int(lengths.max()) == training_dataset.max_encoder_length


def test_validation_windows_dataset_equal_the_library(tiny_experiment: evaluation.Experiment,
                                                      training_dataset: TimeSeriesDataSet) -> None:
    val = tiny_experiment.val_dataset_builder(training_dataset.get_parameters())
    loader = batches.WindowBatches(val, randomize=False).dataloader(train=False, batch_size=16)
    for mine, theirs in zip(loader, val.to_dataloader(train=False, batch_size=16, num_workers=0), strict=True):
        assert_same(mine, theirs)


def test_dataloader_shuffles_and_drops_the_last_partial_batch(training_dataset: TimeSeriesDataSet) -> None:
    built = batches.WindowBatches(training_dataset, randomize=False)
    loader = built.dataloader(train=True, batch_size=64)
    assert len(loader) == len(training_dataset) // 64
    torch.manual_seed(0)
    x, (y, weight) = next(iter(loader))
    assert x["encoder_cont"].shape[0] == 64 and weight is None and len(y) == len(features.TARGETS)
    in_order, _ = next(iter(built.dataloader(train=False, batch_size=64)))
    assert not torch.equal(x["decoder_time_idx"], in_order["decoder_time_idx"])


def test_other_normalizers_are_refused(tiny_experiment: evaluation.Experiment) -> None:
    kwargs = features.dataset_kwargs()
    kwargs["target_normalizer"] = MultiNormalizer([EncoderNormalizer() for _ in features.TARGETS])
    dataset = TimeSeriesDataSet(tiny_experiment.train_frame, **kwargs)
    with pytest.raises(batches.Unsupported, match="target normalizer"):
        batches.WindowBatches(dataset)


def test_fast_evaluation_path_equals_the_library(tiny_checkpoint: Path, tiny_experiment: evaluation.Experiment) -> None:
    model = tft.Forecaster.from_checkpoint(tiny_checkpoint).model
    ds = evaluation.windows_dataset(model.dataset_parameters, tiny_experiment.frame, tiny_experiment.windows)
    fast, fast_index = tft.predict_windows(model, ds, batch_size=16, workers=2)
    slow, slow_index = tft.predict_dataset(model, ds, batch_size=16)
    assert len(fast) == len(tiny_experiment.windows) > 16
    pd.testing.assert_frame_equal(fast_index, slow_index)
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-3)


def test_training_threads_follow_the_setting_then_the_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETCAST_TRAIN_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert tft.training_threads() == (5, "auto: 8 CPUs, load average 2.60")
    assert tft.training_threads(3)[0] == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (11.0, 0.0, 0.0))
    assert tft.training_threads()[0] == 1
    monkeypatch.setenv("FLEETCAST_TRAIN_THREADS", "2")
    assert tft.training_threads(3) == (2, "FLEETCAST_TRAIN_THREADS")
    monkeypatch.setenv("FLEETCAST_TRAIN_THREADS", "0")
    with pytest.raises(ValueError, match="FLEETCAST_TRAIN_THREADS"):
        tft.training_threads()


def test_one_cycle_warms_up_then_anneals() -> None:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=1e-2)
    trainer = SimpleNamespace(optimizers=[optimizer], estimated_stepping_batches=20)
    schedule = tft.OneCycle(warmup_fraction=0.25)
    schedule.on_train_start(trainer, None)  # type: ignore[arg-type]
    lrs = [optimizer.param_groups[0]["lr"]]
    for step in range(20):
        optimizer.step()
        schedule.on_train_batch_end(trainer, None, None, None, step)  # type: ignore[arg-type]
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-2) and int(np.argmax(lrs)) == 4  # 25 % of 20 steps, then down
    # lrs[k]: the rate of step k; the 20th (last) step runs at lr / 1,000, and it stays there
    assert lrs[19] == pytest.approx(1e-5) and lrs[18] > lrs[19] and lrs[20] == lrs[19]


def test_best_weights_keep_the_lowest_validation_loss() -> None:
    net = torch.nn.Linear(2, 1)
    best = tft.BestWeights()
    for epoch, (loss, fill) in enumerate([(3.0, 1.0), (1.0, 2.0), (2.0, 3.0)]):
        torch.nn.init.constant_(net.weight, fill)
        trainer = SimpleNamespace(callback_metrics={"val_loss": torch.tensor(loss)}, sanity_checking=False,
                                  current_epoch=epoch)
        best.on_validation_end(trainer, net)  # type: ignore[arg-type]
    best.restore(net)
    assert best.epoch == 1 and torch.equal(net.weight, torch.full((1, 2), 2.0))
