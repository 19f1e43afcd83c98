"""The fused inference forward (models/fused.py) against pytorch-forecasting's own ``model(x)``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet

from models import evaluation, features, fused, inference, schema, simulator, tft


@pytest.fixture(scope="module")
def forecaster(tiny_checkpoint: Path) -> tft.Forecaster:
    return tft.Forecaster.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def training_dataset(tiny_experiment: evaluation.Experiment) -> TimeSeriesDataSet:
    return features.build_training_dataset(tiny_experiment.train_frame)


@pytest.fixture(scope="module")
def history(tiny_fleet: simulator.FleetData) -> pd.DataFrame:
    """Six servers with 288, 150, 60, 12, 288 and 200 steps (one renamed: never seen in training)."""
    records = tiny_fleet.records
    names = sorted(records[schema.SERVER].unique())
    lengths = dict(zip(names, (288, 150, 60, 12, 288, 200), strict=False))
    parts = [records[records[schema.SERVER] == n].tail(k).copy() for n, k in lengths.items()]
    parts[-1][schema.SERVER] = "never-seen-host"
    out = pd.concat(parts, ignore_index=True)
    out.loc[out.index[::5], schema.STATUS] = "warning"  # the time-varying categorical takes several values
    return out


def batches(model: TemporalFusionTransformer, history: pd.DataFrame, size: int) -> list[dict[str, Any]]:
    """Network inputs in batches of ``size`` mixing history lengths (so the shorter ones are padded)."""
    params = features.inference_parameters(model.dataset_parameters)
    aligned = inference.align_history(history, int(params["max_encoder_length"]), int(params["min_encoder_length"]))
    fleet = inference.TensorBuilder(params, model.hparams["x_reals"], model.hparams["x_categoricals"]).encode(aligned)
    order = np.arange(len(fleet))
    out = [fleet.batch(order[i:i + size]) for i in range(0, len(fleet), size)]
    assert any(int(x["encoder_lengths"].min()) < int(x["encoder_lengths"].max()) for x in out)
    return out


def assert_same_prediction(model: TemporalFusionTransformer, xs: list[dict[str, Any]]) -> None:
    network = fused.FusedTFT(model)
    model.eval()
    with torch.inference_mode():
        for x in xs:
            theirs = model(x)["prediction"]
            ours = network(x)
            assert isinstance(ours, list) and len(ours) == len(theirs) == len(features.TARGETS)
            for target, a, b in zip(features.TARGETS, ours, theirs, strict=True):
                assert a.shape == b.shape == (x["encoder_cont"].shape[0], 96, 3), target
                scale = float(b.abs().max()) + 1.0
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, t=target: f"{t}: {m}")


def randomised(model: TemporalFusionTransformer, seed: int) -> TemporalFusionTransformer:
    """Every parameter moved off its initial value: gates, norms and masks all take part."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return model.eval()


def test_trained_checkpoint_same_forecasts(forecaster: tft.Forecaster, history: pd.DataFrame) -> None:
    model = forecaster.model  # assert_same_prediction builds FusedTFT: Unsupported would fail here
    assert_same_prediction(model, batches(model, history, 4))
    assert_same_prediction(model, batches(model, history, 64))  # one batch with every length


@pytest.mark.parametrize(("hidden", "continuous", "heads", "layers"), [(32, 8, 4, 2), (16, 4, 1, 1), (24, 12, 2, 1)])
def test_randomised_networks_same_forecasts(training_dataset: TimeSeriesDataSet, history: pd.DataFrame,
                                           hidden: int, continuous: int, heads: int, layers: int) -> None:
    settings = tft.ModelSettings(hidden_size=hidden, hidden_continuous_size=continuous, attention_head_size=heads,
                                 lstm_layers=layers)
    model = randomised(tft.build_model(training_dataset, settings), seed=hidden)
    assert_same_prediction(model, batches(model, history, 3))


def test_forecaster_serves_through_the_fused_network(forecaster: tft.Forecaster, history: pd.DataFrame) -> None:
    assert isinstance(forecaster._network, fused.FusedTFT)
    out = forecaster.forecast(history)
    assert len(out) == history[schema.SERVER].nunique()
    # and gives what the library's path gives on the same windows (the dataset + model(x) route)
    frame, _ = features.inference_frame(history, forecaster.max_encoder_length, forecaster.min_encoder_length,
                                        forecaster.horizon)
    dataset = features.dataset_from_parameters(forecaster.dataset_parameters, frame, predict=True)
    values, index = tft.predict_dataset(forecaster.model, dataset)
    for row, server in enumerate(index[schema.SERVER]):
        for i, metric in enumerate(features.TARGETS):
            np.testing.assert_allclose(out[server].quantiles[metric], values[row, :, i, :], rtol=1e-4, atol=1e-3)


def test_unsupported_structure_falls_back_to_the_library(training_dataset: TimeSeriesDataSet, history: pd.DataFrame,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    # inputs embedded at the hidden size: the per-variable GRNs have no resampled residual to fold
    settings = tft.ModelSettings(hidden_size=8, hidden_continuous_size=8, attention_head_size=1, lstm_layers=1)
    model = randomised(tft.build_model(training_dataset, settings), seed=3)
    with pytest.raises(fused.Unsupported, match="resampled residual"):
        fused.FusedTFT(model)
    forecaster = tft.Forecaster(model, [])
    with caplog.at_level(logging.WARNING, logger="models.tft"):
        out = forecaster.forecast(history)
    assert forecaster._network is None
    assert "library's forward pass" in caplog.text
    assert len(out) == history[schema.SERVER].nunique()
    assert all(np.isfinite(f.quantiles[m]).all() for f in out.values() for m in features.TARGETS)


def test_real_cloudwatch_traces_same_forecasts(forecaster: tft.Forecaster, nab_traces: list[Path],
                                               nab_records: Callable[..., pd.DataFrame]) -> None:
    """Data nobody here wrote: five AWS CPU traces (one off the 5-minute grid, with gaps) from 2014, before
    any training data: the last two days of three, the last 100 and 40 samples of two."""
    lengths = (576, 576, 576, 100, 40)
    history = pd.concat([nab_records(csv, profile).tail(n)
                         for csv, profile, n in zip(nab_traces, schema.PROFILES, lengths, strict=False)],
                        ignore_index=True)
    assert_same_prediction(forecaster.model, batches(forecaster.model, history, 2))


def test_forward_flops_count_every_product(forecaster: tft.Forecaster, history: pd.DataFrame) -> None:
    """FLOPs per series: matmuls as torch counts them, LSTMs and attention by formula (models.fused.forward_flops)."""
    network = fused.FusedTFT(forecaster.model)
    x = batches(forecaster.model, history, 64)[0]
    flops = fused.forward_flops(network, x)
    m = forecaster.model
    batch = x["encoder_lengths"].shape[0]
    steps = {"enc": float(x["encoder_lengths"].sum()), "dec": float(x["decoder_lengths"].sum())}
    lstm = sum(steps[k] * 2 * 4 * mod.hidden_size * ((mod.input_size if layer == 0 else mod.hidden_size)
                                                     + mod.hidden_size)
               for k, mod in (("enc", m.lstm_encoder), ("dec", m.lstm_decoder)) for layer in range(mod.num_layers))
    assert flops["lstm"] == pytest.approx(lstm / batch)
    lq, length = 96, int(x["encoder_lengths"].max()) + 96
    assert flops["attention"] == pytest.approx(4 * lq * length * network.attention.d_k * network.attention.n_head)
    assert flops["matmul"] > 0
    assert flops["total"] == pytest.approx(flops["matmul"] + flops["lstm"] + flops["attention"])
    assert fused.matmul_rate(1, size=128, seconds=0.05) > 1e6  # FLOP/s: any machine does a million
