"""Per-window target scaling (``features.RobustWindowNormalizer``): flat and spiky real shapes stay sane."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pytorch_forecasting.data.encoders import EncoderNormalizer

from models import features, schema, tft

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def forecaster(tiny_checkpoint: Path) -> tft.Forecaster:
    return tft.Forecaster.from_checkpoint(tiny_checkpoint)


def _normalizer(floor: float = 0.5) -> features.RobustWindowNormalizer:
    return features.RobustWindowNormalizer(max_length=[features.CENTER_STEPS, schema.ENCODER_STEPS], floor=floor)


def _server(cpu: np.ndarray, name: str = "flat-01", end: str = "2025-03-03 10:00") -> pd.DataFrame:
    n = len(cpu)
    return pd.DataFrame({
        schema.TIMESTAMP: pd.date_range(end=pd.Timestamp(end), periods=n, freq=schema.STEP_FREQ),
        schema.SERVER: name,
        "cpu_percent": cpu, "memory_percent": 40.0, "disk_percent": 50.0, "load_average": 1.0,
        schema.STATUS: "healthy", schema.PROFILE: "generic",
    })


def test_every_target_is_scaled_robustly_with_its_floor() -> None:
    normalizers = features.target_normalizer().normalizers
    assert [type(n) for n in normalizers] == [features.RobustWindowNormalizer] * len(features.TARGETS)
    assert [n.floor for n in normalizers] == [features.SCALE_FLOORS[t] for t in features.TARGETS]
    assert all(isinstance(n, EncoderNormalizer) for n in normalizers)  # fitted per window by the library


def test_flat_window_is_centred_on_its_level_with_the_floor_as_scale() -> None:
    window = torch.full((288,), 3.0)
    params = _normalizer().fit(window).get_parameters()
    assert params.tolist() == pytest.approx([3.0, 0.5])
    standard = EncoderNormalizer(method="standard").fit(window).get_parameters()
    assert standard[1] < 1e-5  # what the standard scaling divided a flat window by


def test_one_spike_moves_neither_centre_nor_scale_and_its_input_is_clipped() -> None:
    rng = np.random.default_rng(0)
    quiet = torch.tensor(3.0 + rng.normal(0.0, 0.05, 288), dtype=torch.float32)
    spiky = quiet.clone()
    spiky[200] = 97.0
    a, b = _normalizer().fit(quiet), _normalizer().fit(spiky)
    assert b.get_parameters().tolist() == pytest.approx(a.get_parameters().tolist(), abs=1e-3)
    scaled = b.transform(spiky)
    assert float(scaled.max()) == pytest.approx(features.INPUT_CLIP)  # (97 - 3) / 0.5 = 188 before clipping
    assert float(scaled.abs().median()) < 0.5
    # the standard scale of the same window is ~11x the floor: every forecast band widens by as much
    assert float(EncoderNormalizer(method="standard").fit(spiky).get_parameters()[1]) > 5.0


def test_a_batch_of_windows_is_fitted_row_by_row() -> None:
    """``TensorBuilder`` fits one row per server in one call: the same as the library's per-sample fit."""
    rng = np.random.default_rng(1)
    batch = torch.tensor(rng.gamma(2.0, 5.0, (6, 288)), dtype=torch.float32)
    together = _normalizer().fit(batch).get_parameters()
    one_by_one = torch.stack([_normalizer().fit(row).get_parameters() for row in batch])
    torch.testing.assert_close(together, one_by_one)
    numpy_fit = _normalizer().fit(batch.numpy().astype(np.float64))
    np.testing.assert_allclose(numpy_fit.center_, together[:, 0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(numpy_fit.scale_, together[:, 1].numpy(), rtol=1e-5)


def test_inverse_transform_is_not_clipped() -> None:
    n = _normalizer().fit(torch.full((288,), 3.0))
    out = n(dict(prediction=torch.tensor([[30.0]]), target_scale=n.get_parameters()[None, :]))
    assert float(out.reshape(-1)[0]) == pytest.approx(3.0 + 30.0 * 0.5)


def test_flat_history_is_forecast_at_its_level_in_the_first_hour(forecaster: tft.Forecaster) -> None:
    """An idle server (cpu 3 % +- a few hundredths for 24 h, constant companions) is forecast within 1 point
    of where it is."""
    idle = 3.0 + np.random.default_rng(3).normal(0.0, 0.03, schema.ENCODER_STEPS)
    out = forecaster.forecast(_server(idle))["flat-01"]
    first_hour = slice(0, schema.STEPS_PER_HOUR)
    for metric, level in (("cpu_percent", 3.0), ("memory_percent", 40.0), ("disk_percent", 50.0)):
        p50 = out.quantiles[metric][first_hour, 1]
        assert np.abs(p50 - level).max() < 1.0, (metric, p50)
    assert np.abs(out.quantiles["load_average"][first_hour, 1] - 1.0).max() < 0.1


def test_one_spike_does_not_make_the_band_explode(forecaster: tft.Forecaster) -> None:
    rng = np.random.default_rng(2)
    quiet = np.clip(3.0 + rng.normal(0.0, 0.05, schema.ENCODER_STEPS), 0, 100)
    spiky = quiet.copy()
    spiky[150] = 97.0
    out = forecaster.forecast(pd.concat([_server(quiet, "quiet-01"), _server(spiky, "spiky-01")],
                                        ignore_index=True))
    band = {name: out[name].quantiles["cpu_percent"][:, 2] - out[name].quantiles["cpu_percent"][:, 0]
            for name in ("quiet-01", "spiky-01")}
    assert band["spiky-01"].max() < 5.0  # points: the standard scale (~5.5) alone made it ~11x wider
    assert band["spiky-01"].mean() < 2.0 * band["quiet-01"].mean() + 0.5
    p50 = out["spiky-01"].quantiles["cpu_percent"][:, 1]
    assert np.abs(p50[: schema.STEPS_PER_HOUR] - 3.0).max() < 1.0
