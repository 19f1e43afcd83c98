"""The TFT trains, round-trips through its checkpoint, and forecasts what serving will ask of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models import evaluation, features, schema, simulator, tft

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def forecaster(tiny_checkpoint: Path) -> tft.Forecaster:
    return tft.Forecaster.from_checkpoint(tiny_checkpoint)


def _val_loss(model: tft.TemporalFusionTransformer, exp: evaluation.Experiment) -> float:
    ds = exp.val_dataset_builder(model.dataset_parameters)
    x, y = next(iter(ds.to_dataloader(train=False, batch_size=256)))
    model.eval()
    with torch.no_grad():
        return float(model.loss(model(x)["prediction"], y))


@pytest.mark.slow
def test_training_lowers_the_loss(tiny_experiment: evaluation.Experiment) -> None:
    preset = tft.resolve_preset("tiny", max_epochs=2, limit_train_batches=15, learning_rate=1e-2)
    ds = features.build_training_dataset(tiny_experiment.train_frame)
    torch.manual_seed(preset.train.seed)
    untrained = tft.build_model(ds, preset.model)
    before = _val_loss(untrained, tiny_experiment)
    result = tft.train_tft(tiny_experiment.train_frame, tiny_experiment.val_dataset_builder,
                           preset.model, preset.train)
    after = _val_loss(result.model, tiny_experiment)
    assert [r.epoch for r in result.history] == [0, 1]
    assert all(r.train_loss is not None and r.val_loss is not None for r in result.history)
    assert after < 0.8 * before
    assert result.training_servers == frozenset(tiny_experiment.split.seen)


def test_default_size_is_about_87k_parameters(tiny_experiment: evaluation.Experiment) -> None:
    model = tft.build_model(features.build_training_dataset(tiny_experiment.train_frame))
    assert 80_000 <= tft.n_parameters(model) <= 92_000  # 85,700 with hidden 32 / continuous 8 / 2 LSTM layers
    assert model.hparams.max_encoder_length == schema.ENCODER_STEPS
    assert model.dataset_parameters["max_prediction_length"] == schema.HORIZON_STEPS
    assert model.dataset_parameters["min_encoder_length"] == schema.MIN_ENCODER_STEPS
    # server identity is a group id only, never an input
    assert schema.SERVER not in model.hparams.static_categoricals
    assert schema.SERVER not in model.hparams.x_categoricals


def test_checkpoint_round_trip_gives_identical_forecasts(
    forecaster: tft.Forecaster, tiny_fleet: simulator.FleetData, tmp_path: Path
) -> None:
    path = tmp_path / "copy.pt"
    forecaster.save(path)
    again = tft.Forecaster.from_checkpoint(path)
    a, b = forecaster.forecast(tiny_fleet.records), again.forecast(tiny_fleet.records)
    assert a.keys() == b.keys()
    for name in a:
        for metric in schema.METRICS:
            np.testing.assert_allclose(a[name].quantiles[metric], b[name].quantiles[metric], rtol=1e-6)
    assert again.training_servers == forecaster.training_servers
    assert again.n_parameters == forecaster.n_parameters


def test_forecast_shape_and_contract(forecaster: tft.Forecaster, tiny_fleet: simulator.FleetData) -> None:
    records = tiny_fleet.records
    out = forecaster.forecast(records)
    assert set(out) == set(records[schema.SERVER])
    fc = out[sorted(out)[0]]
    last = records[records[schema.SERVER] == fc.server_name][schema.TIMESTAMP].max()
    assert fc.origin == last
    assert len(fc.timestamps) == schema.HORIZON_STEPS
    assert fc.timestamps[0] == last + schema.STEP and fc.timestamps[-1] == last + schema.HORIZON_STEPS * schema.STEP
    assert fc.history_steps == schema.ENCODER_STEPS
    for metric in schema.METRICS:
        q = fc.quantiles[metric]
        assert q.shape == (schema.HORIZON_STEPS, 3)
        assert np.isfinite(q).all()
        assert (np.diff(q, axis=1) >= 0).all()  # P10 <= P50 <= P90
    for metric in schema.PERCENT_METRICS:
        assert ((fc.quantiles[metric] >= 0) & (fc.quantiles[metric] <= 100)).all()


def test_unseen_server_and_one_hour_of_history(forecaster: tft.Forecaster,
                                               tiny_fleet: simulator.FleetData) -> None:
    records = tiny_fleet.records
    src = records[records[schema.SERVER] == records[schema.SERVER].iloc[0]]
    newcomer = src.tail(schema.MIN_ENCODER_STEPS).assign(server_name="brand-new-host-01")
    too_short = src.tail(schema.MIN_ENCODER_STEPS - 1).assign(server_name="too-short-01")
    odd_profile = src.tail(48).assign(server_name="odd-profile-01", profile="quantum_mainframe")
    out = forecaster.forecast(pd.concat([newcomer, too_short, odd_profile], ignore_index=True))
    assert set(out) == {"brand-new-host-01", "odd-profile-01"}
    new = out["brand-new-host-01"]
    assert new.history_steps == schema.MIN_ENCODER_STEPS
    assert not new.seen_in_training
    assert new.quantiles["cpu_percent"].shape == (schema.HORIZON_STEPS, 3)
    assert out["odd-profile-01"].profile == schema.DEFAULT_PROFILE
    assert forecaster.forecast(too_short) == {}


def test_held_out_servers_are_flagged_unseen(forecaster: tft.Forecaster,
                                             tiny_experiment: evaluation.Experiment,
                                             tiny_fleet: simulator.FleetData) -> None:
    out = forecaster.forecast(tiny_fleet.records)
    for name in tiny_experiment.split.unseen:
        assert not out[name].seen_in_training
    for name in tiny_experiment.split.seen:
        assert out[name].seen_in_training


def test_gaps_and_duplicates_are_tolerated(forecaster: tft.Forecaster, tiny_fleet: simulator.FleetData) -> None:
    records = tiny_fleet.records
    one = records[records[schema.SERVER] == records[schema.SERVER].iloc[0]].tail(100)
    gappy = pd.concat([one.iloc[:40], one.iloc[43:], one.iloc[[60]]], ignore_index=True)  # hole + duplicate
    fc = forecaster.forecast(gappy)[one[schema.SERVER].iloc[0]]
    assert fc.history_steps == 100  # the 3-step (15 min) hole is interpolated on the 5-minute grid
    assert np.isfinite(fc.quantiles["memory_percent"]).all()
    # a longer outage cuts the history (models/grid.py): nothing is invented across it
    outage = pd.concat([one.iloc[:40], one.iloc[50:]], ignore_index=True)
    assert forecaster.forecast(outage)[one[schema.SERVER].iloc[0]].history_steps == 50


# --- behavioural (STYLE.md) --------------------------------------------------------------------------
def test_invariance_renaming_a_server_keeps_its_forecast(forecaster: tft.Forecaster,
                                                         tiny_fleet: simulator.FleetData) -> None:
    records = tiny_fleet.records
    name = sorted(records[schema.SERVER].unique())[1]
    one = records[records[schema.SERVER] == name]
    original = forecaster.forecast(one)[name]
    renamed = forecaster.forecast(one.assign(server_name="totally-different-name"))["totally-different-name"]
    for metric in schema.METRICS:
        np.testing.assert_allclose(original.quantiles[metric], renamed.quantiles[metric], rtol=1e-5, atol=1e-5)


def test_invariance_batch_composition_does_not_change_a_forecast(
    forecaster: tft.Forecaster, tiny_fleet: simulator.FleetData
) -> None:
    records = tiny_fleet.records
    name = sorted(records[schema.SERVER].unique())[0]
    alone = forecaster.forecast(records[records[schema.SERVER] == name])[name]
    together = forecaster.forecast(records)[name]
    np.testing.assert_allclose(alone.quantiles["cpu_percent"], together.quantiles["cpu_percent"],
                               rtol=1e-5, atol=1e-4)


def test_minimum_functionality_forecast_follows_the_level(forecaster: tft.Forecaster,
                                                          tiny_fleet: simulator.FleetData) -> None:
    """Even a tiny model puts a server running hot above the same server running cold."""
    records = tiny_fleet.records
    name = sorted(records[schema.SERVER].unique())[0]
    one = records[records[schema.SERVER] == name].tail(schema.ENCODER_STEPS).copy()
    cold = one.assign(memory_percent=15.0, server_name="cold-01")
    hot = one.assign(memory_percent=90.0, server_name="hot-01")
    out = forecaster.forecast(pd.concat([cold, hot], ignore_index=True))
    hot_p50 = out["hot-01"].quantiles["memory_percent"][:, 1]
    cold_p50 = out["cold-01"].quantiles["memory_percent"][:, 1]
    assert hot_p50.mean() > cold_p50.mean()


def test_equivariance_a_level_shift_moves_the_forecast_by_the_same_amount(
    forecaster: tft.Forecaster, tiny_fleet: simulator.FleetData
) -> None:
    """Targets are scaled per window (EncoderNormalizer): the forecast is anchored on the server's own
    level, so adding 7 points to a server's memory history adds 7 points to its memory forecast and
    leaves the other metrics' forecasts alone (up to clipping at 0 and 100)."""
    records = tiny_fleet.records
    name = sorted(records[schema.SERVER].unique())[2]
    one = records[records[schema.SERVER] == name].tail(schema.ENCODER_STEPS).copy()
    one["memory_percent"] = one["memory_percent"].clip(5.0, 80.0)
    base = forecaster.forecast(one)[name]
    shifted = forecaster.forecast(one.assign(memory_percent=one["memory_percent"] + 7.0))[name]
    a, b = base.quantiles["memory_percent"], shifted.quantiles["memory_percent"]
    inside = (a > 0.5) & (a < 92.5)  # away from the clipping bounds
    assert inside.mean() > 0.5
    np.testing.assert_allclose(b[inside], a[inside] + 7.0, atol=1e-2)
    np.testing.assert_allclose(base.quantiles["cpu_percent"], shifted.quantiles["cpu_percent"], atol=1e-4)


def test_timestamp_resolution_does_not_matter(forecaster: tft.Forecaster, tiny_fleet: simulator.FleetData) -> None:
    """Parquet/Arrow round trips may return microsecond timestamps: same time index, same forecast."""
    records = tiny_fleet.records.groupby(schema.SERVER).tail(schema.ENCODER_STEPS)
    micro = records.assign(timestamp=records[schema.TIMESTAMP].astype("datetime64[us]"))
    a, b = forecaster.forecast(records), forecaster.forecast(micro)
    name = sorted(a)[0]
    assert b[name].origin == a[name].origin
    np.testing.assert_allclose(a[name].quantiles["cpu_percent"], b[name].quantiles["cpu_percent"], rtol=1e-6)
