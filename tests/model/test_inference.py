"""The fast tensor builder (models/inference.py) against pytorch-forecasting's own dataset + dataloader."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from pytorch_forecasting.data.encoders import EncoderNormalizer, MultiNormalizer, TorchNormalizer
from sklearn.preprocessing import StandardScaler

from models import features, inference, schema, simulator, tft

BATCH = 3  # smaller than the fleet, so several batches with different encoder widths are compared
pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")  # the library path


@pytest.fixture(scope="module")
def forecaster(tiny_checkpoint: Path) -> tft.Forecaster:
    return tft.Forecaster.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def mixed_history(tiny_fleet: simulator.FleetData, forecaster: tft.Forecaster) -> pd.DataFrame:
    """Servers with 288, 100 and 12 steps, one never seen in training, one with an unknown profile."""
    records = tiny_fleet.records
    names = sorted(records[schema.SERVER].unique())
    keep = {names[0]: 288, names[1]: 100, names[2]: 12, names[3]: 288, names[4]: 150}
    parts = [records[records[schema.SERVER] == n].tail(k) for n, k in keep.items()]
    unseen = records[records[schema.SERVER] == names[5]].tail(200).copy()
    unseen[schema.SERVER] = "never-seen-host"
    parts.append(unseen)
    out = pd.concat(parts, ignore_index=True)
    out.loc[out[schema.SERVER] == names[4], schema.PROFILE] = "quantum-mainframe"  # not a known profile
    out.loc[out.index[::7], schema.STATUS] = "warning"  # a time-varying categorical with several values
    assert "never-seen-host" not in forecaster.training_servers
    too_short = records[records[schema.SERVER] == names[6]].tail(5).copy()  # dropped by both paths
    return pd.concat([out, too_short], ignore_index=True).sample(frac=1.0, random_state=3)  # unsorted


def library_batches(parameters: dict[str, Any], history: pd.DataFrame, batch_size: int
                    ) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    frame, info = features.inference_frame(history, int(parameters["max_encoder_length"]),
                                           int(parameters["min_encoder_length"]),
                                           int(parameters["max_prediction_length"]))
    dataset = features.dataset_from_parameters(parameters, frame, predict=True)
    loader = dataset.to_dataloader(train=False, batch_size=batch_size, num_workers=0)
    return [x for x, _ in loader], info


def fast_batches(parameters: dict[str, Any], history: pd.DataFrame, batch_size: int, forecaster: tft.Forecaster,
                 model_reals: list[str] | None | str = "model"
                 ) -> tuple[list[dict[str, Any]], inference.AlignedHistory]:
    aligned = inference.align_history(history, int(parameters["max_encoder_length"]),
                                      int(parameters["min_encoder_length"]))
    hparams = forecaster.model.hparams
    reals = hparams["x_reals"] if model_reals == "model" else model_reals
    builder = inference.TensorBuilder(parameters, reals, hparams["x_categoricals"])
    fleet = builder.encode(aligned)
    order = fleet.dataset_order()  # the library orders samples by encoded group id, not by name
    return [fleet.batch(order[i:i + batch_size]) for i in range(0, len(fleet), batch_size)], aligned


def assert_same(key: str, ours: Any, theirs: Any) -> None:
    if isinstance(theirs, list | tuple):
        assert isinstance(ours, list) and len(ours) == len(theirs), key
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(f"{key}[{i}]", a, b)
        return
    assert isinstance(ours, torch.Tensor), key
    assert ours.dtype == theirs.dtype, f"{key}: {ours.dtype} != {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{key}: {tuple(ours.shape)} != {tuple(theirs.shape)}"
    if theirs.dtype.is_floating_point:
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5, msg=lambda m: f"{key}: {m}")
    else:
        assert torch.equal(ours, theirs), key


def compare(parameters: dict[str, Any], history: pd.DataFrame, forecaster: tft.Forecaster) -> None:
    theirs, info = library_batches(parameters, history, BATCH)
    ours, aligned = fast_batches(parameters, history, BATCH, forecaster)
    assert len(ours) == len(theirs) >= 2
    for x_ours, x_theirs in zip(ours, theirs, strict=True):
        assert set(x_ours) == set(x_theirs)
        for key in x_theirs:
            assert_same(key, x_ours[key], x_theirs[key])
    pd.testing.assert_frame_equal(aligned.info, info, check_names=False, check_dtype=False)
    # the network gives the same forecasts from both
    model = forecaster.model.eval()
    with torch.inference_mode():
        for x_ours, x_theirs in zip(ours, theirs, strict=True):
            a = model.to_quantiles(model(x_ours))
            b = model.to_quantiles(model(x_theirs))
            for qa, qb in zip(a, b, strict=True):
                torch.testing.assert_close(qa, qb, rtol=1e-4, atol=1e-4)


def test_history_alignment_matches_inference_frame(mixed_history: pd.DataFrame, forecaster: tft.Forecaster) -> None:
    aligned = inference.align_history(mixed_history, forecaster.max_encoder_length, forecaster.min_encoder_length)
    assert sorted(aligned.info["history_steps"].tolist()) == [12, 100, 150, 200, 288, 288]
    odd = mixed_history.loc[mixed_history[schema.PROFILE] == "quantum-mainframe", schema.SERVER].iloc[0]
    assert aligned.info.loc[odd, schema.PROFILE] == schema.DEFAULT_PROFILE  # unknown -> generic


def test_tensors_equal_library_with_the_checkpoints_parameters(mixed_history: pd.DataFrame,
                                                                 forecaster: tft.Forecaster) -> None:
    """Whatever models/features.py fits today (encoders, scalers, target normalizers, target scales)."""
    params = forecaster.dataset_parameters
    assert isinstance(params["target_normalizer"], MultiNormalizer)
    compare(params, mixed_history, forecaster)


def fitted_global(history: pd.DataFrame) -> MultiNormalizer:
    normalizer = MultiNormalizer([TorchNormalizer(method="standard") for _ in features.TARGETS])
    return normalizer.fit(history[features.TARGETS].astype(np.float32))


@pytest.mark.parametrize("make_normalizer", [
    lambda history: MultiNormalizer([EncoderNormalizer() for _ in features.TARGETS]),
    lambda history: MultiNormalizer([EncoderNormalizer(method="robust", max_length=50, transformation="relu")
                                     for _ in features.TARGETS]),
    lambda history: MultiNormalizer([EncoderNormalizer(max_length=[12, 288]) for _ in features.TARGETS]),
    fitted_global,
], ids=["encoder-standard", "encoder-robust-relu", "encoder-recent-centre", "global-standard"])
@pytest.mark.parametrize("target_scales", [True, False])
def test_tensors_equal_library_with_other_normalizers(mixed_history: pd.DataFrame, forecaster: tft.Forecaster,
                                                      make_normalizer: Any, target_scales: bool) -> None:
    params = deepcopy(forecaster.dataset_parameters)
    params["target_normalizer"] = make_normalizer(mixed_history)
    params["add_target_scales"] = target_scales
    for target in features.TARGETS:  # scalers of the scale features, fitted on plausible values
        for what, values in (("center", [10.0, 50.0, 90.0]), ("scale", [1.0, 5.0, 20.0])):
            params["scalers"][f"{target}_{what}"] = StandardScaler().fit(
                pd.DataFrame({f"{target}_{what}": np.array(values, dtype=np.float32)}))
    model_reals = None  # the tiny model was trained on the checkpoint's inputs only
    ours, aligned = fast_batches(params, mixed_history, BATCH, forecaster, model_reals)
    theirs, info = library_batches(params, mixed_history, BATCH)
    assert len(ours) == len(theirs) >= 2
    for x_ours, x_theirs in zip(ours, theirs, strict=True):
        for key in x_theirs:
            assert_same(key, x_ours[key], x_theirs[key])


def test_gaps_and_duplicates_go_through_the_shared_regulariser(mixed_history: pd.DataFrame,
                                                               forecaster: tft.Forecaster) -> None:
    history = mixed_history.sort_values([schema.SERVER, schema.TIMESTAMP]).reset_index(drop=True)
    history = history.drop(index=history.index[10:14])  # a 20-minute gap in the first server
    history = pd.concat([history, history.iloc[[50]].assign(cpu_percent=99.0)], ignore_index=True)  # duplicate
    history.loc[history.index[60], schema.METRICS[1]] = np.nan  # a missing value
    compare(forecaster.dataset_parameters, history, forecaster)


def test_unsupported_parameters_are_refused(forecaster: tft.Forecaster) -> None:
    params = deepcopy(forecaster.dataset_parameters)
    params["lags"] = {schema.METRICS[0]: [1]}
    with pytest.raises(inference.UnsupportedDataset, match="lags"):
        inference.TensorBuilder(params)


def test_forecast_matches_the_dataset_path(mixed_history: pd.DataFrame, forecaster: tft.Forecaster) -> None:
    fast = forecaster.forecast(mixed_history)
    frame, _ = features.inference_frame(mixed_history, forecaster.max_encoder_length,
                                        forecaster.min_encoder_length, forecaster.horizon)
    dataset = features.dataset_from_parameters(forecaster.dataset_parameters, frame, predict=True)
    values, index = tft.predict_dataset(forecaster.model, dataset)
    assert sorted(fast) == sorted(index[schema.SERVER])
    assert fast["never-seen-host"].seen_in_training is False
    for row, server in enumerate(index[schema.SERVER]):
        for i, metric in enumerate(features.TARGETS):
            np.testing.assert_allclose(fast[server].quantiles[metric], values[row, :, i, :], rtol=1e-4, atol=1e-4)


def test_history_older_than_the_training_data_is_forecast_alike(mixed_history: pd.DataFrame,
                                                               forecaster: tft.Forecaster) -> None:
    """Only the calendar and the relative position matter: the same windows 260 weeks earlier (before any
    training data, where the library's saved min_prediction_idx would drop them) forecast the same."""
    shift = pd.Timedelta(weeks=260)
    now = forecaster.forecast(mixed_history)
    earlier = mixed_history.assign(**{schema.TIMESTAMP: mixed_history[schema.TIMESTAMP] - shift})
    before = forecaster.forecast(earlier)
    assert sorted(before) == sorted(now) and len(now) == 6
    for server, fc in now.items():
        assert before[server].origin == fc.origin - shift
        for metric in features.TARGETS:
            np.testing.assert_allclose(before[server].quantiles[metric], fc.quantiles[metric], rtol=1e-5, atol=1e-4)
