"""models.windows builds exactly the batches of the library's TimeSeriesDataSet dataloader."""

from __future__ import annotations

from copy import copy
from typing import Any

import numpy as np
import pytest
import pytorch_forecasting.data.timeseries._timeseries as library_timeseries
import torch
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.data.encoders import EncoderNormalizer, MultiNormalizer

from models import evaluation, features, windows


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
    mine = windows.WindowBatches(fixed).__getitems__(ids)
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
    mine = windows.WindowBatches(training_dataset).__getitems__(ids)
    assert_same(mine, theirs)
    lengths = mine[0]["encoder_lengths"]
    assert int(lengths.min()) == training_dataset.min_encoder_length
    assert int(lengths.max()) == training_dataset.max_encoder_length


def test_validation_windows_dataset_equal_the_library(tiny_experiment: evaluation.Experiment,
                                                      training_dataset: TimeSeriesDataSet) -> None:
    val = tiny_experiment.val_dataset_builder(training_dataset.get_parameters())
    batches = windows.WindowBatches(val, randomize=False).dataloader(train=False, batch_size=16)
    for mine, theirs in zip(batches, val.to_dataloader(train=False, batch_size=16, num_workers=0), strict=True):
        assert_same(mine, theirs)


def test_dataloader_shuffles_and_drops_the_last_partial_batch(training_dataset: TimeSeriesDataSet) -> None:
    batches = windows.WindowBatches(training_dataset, randomize=False)
    loader = batches.dataloader(train=True, batch_size=64)
    assert len(loader) == len(training_dataset) // 64
    torch.manual_seed(0)
    x, (y, weight) = next(iter(loader))
    assert x["encoder_cont"].shape[0] == 64 and weight is None and len(y) == len(features.TARGETS)
    in_order, _ = next(iter(batches.dataloader(train=False, batch_size=64)))
    assert not torch.equal(x["decoder_time_idx"], in_order["decoder_time_idx"])


def test_other_normalizers_are_refused(tiny_experiment: evaluation.Experiment) -> None:
    kwargs = features.dataset_kwargs()
    kwargs["target_normalizer"] = MultiNormalizer([EncoderNormalizer() for _ in features.TARGETS])
    dataset = TimeSeriesDataSet(tiny_experiment.train_frame, **kwargs)
    with pytest.raises(windows.Unsupported, match="target normalizer"):
        windows.WindowBatches(dataset)
