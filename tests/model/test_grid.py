"""The one alignment policy (models/grid.py), and training vs serving vs the MLflow model building
identical model inputs from the same irregular records."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import features, grid, inference, registry, schema, simulator, tft
from serving.store import FeedStore

T0 = datetime(2025, 10, 12, 0, 0)


def rec(server: str, minutes: float, cpu: float, **kw: object) -> dict[str, object]:
    base = {"timestamp": T0 + timedelta(minutes=minutes), "server_name": server, "cpu_percent": cpu,
            "memory_percent": 50.0, "disk_percent": 40.0, "load_average": 1.0, "status": "healthy",
            "profile": "web_api"}
    base.update(kw)
    return base


def test_buckets_are_averaged_and_the_same_timestamp_twice_keeps_the_later() -> None:
    raw = pd.DataFrame([rec("a", 1, 10.0), rec("a", 3, 20.0), rec("a", 3, 30.0), rec("a", 6, 40.0)])
    out = grid.align(raw)
    assert out["cpu_percent"].tolist() == [20.0, 40.0]  # mean(10, 30): 20 was replaced by 30
    assert list(out["timestamp"]) == [pd.Timestamp(T0), pd.Timestamp(T0 + timedelta(minutes=5))]


def test_short_gaps_interpolate_long_gaps_cut_or_split() -> None:
    steps = [*range(0, 10), 12, *range(13, 20), *range(30, 40)]  # gap of 2 (filled), gap of 10 (cut)
    raw = pd.DataFrame([rec("a", 5 * i, float(i), status="warning" if i == 9 else "healthy") for i in steps])
    last = grid.align(raw)
    assert last["cpu_percent"].tolist() == [float(i) for i in range(30, 40)]
    every = grid.align(raw, segments="all")
    assert sorted(every["server_name"].unique()) == ["a", "a@20251012T0000"]
    first = every[every["server_name"] == "a@20251012T0000"]
    assert np.allclose(first["cpu_percent"], np.arange(20.0))  # steps 10 and 11 interpolated
    assert first["status"].iloc[10] == "warning"  # carried into the interpolated steps
    assert (every[every["server_name"] == "a"]["cpu_percent"] == last["cpu_percent"].to_numpy()).all()
    found = grid.gaps(raw)
    assert found[["steps", "cuts"]].values.tolist() == [[2, False], [10, True]]


def test_missing_values_are_interpolated_and_profile_is_the_newest() -> None:
    raw = pd.DataFrame([rec("a", 0, 0.0), rec("a", 5, np.nan), rec("a", 10, 20.0, profile="database")])
    out = grid.align(raw)
    assert out["cpu_percent"].tolist() == [0.0, 10.0, 20.0]
    assert set(out["profile"]) == {"database"}


def test_steps_keeps_each_servers_own_tail() -> None:
    raw = pd.DataFrame([rec("a", 5 * i, float(i)) for i in range(400)] + [rec("b", 5 * i + 2, 1.0) for i in range(50)])
    out = grid.align(raw, steps=288)
    assert out.groupby("server_name").size().to_dict() == {"a": 288, "b": 50}
    assert out[out.server_name == "a"]["cpu_percent"].iloc[0] == 112.0


@pytest.fixture(scope="module")
def irregular(tiny_fleet: simulator.FleetData) -> pd.DataFrame:
    """Two servers' last 2 days as a shipper sends them: jittered times, two samples in some buckets,
    a missing sample (short gap), a long outage and a retry of one record with a corrected value."""
    rng = np.random.default_rng(5)
    names = sorted(tiny_fleet.records[schema.SERVER].unique())[:2]
    parts = []
    for name in names:
        r = tiny_fleet.records[tiny_fleet.records[schema.SERVER] == name].tail(2 * 288).copy()
        r[schema.TIMESTAMP] = r[schema.TIMESTAMP] + pd.to_timedelta(rng.integers(0, 240, len(r)), unit="s")
        extra = r.iloc[::9].copy()
        extra[schema.TIMESTAMP] += pd.Timedelta(seconds=30)
        extra["cpu_percent"] = (extra["cpu_percent"] + 5).clip(upper=100)
        parts += [r.drop(r.index[100:103]).drop(r.index[200:240]), extra]
    retry = parts[0].iloc[[500]].assign(cpu_percent=77.0)
    return pd.concat([*parts, retry], ignore_index=True).sample(frac=1.0, random_state=1)


def test_training_serving_and_the_mlflow_model_build_identical_inputs(
        irregular: pd.DataFrame, tiny_checkpoint: Path, tmp_path: Path) -> None:
    forecaster = tft.Forecaster.from_checkpoint(tiny_checkpoint)
    enc, min_enc = forecaster.max_encoder_length, forecaster.min_encoder_length
    # serving: the records through the feed store, read back as the service reads them
    store = FeedStore(f"sqlite:///{tmp_path / 'feed.db'}")
    try:
        rows = irregular.to_dict(orient="records")
        for row in rows:
            row[schema.TIMESTAMP] = pd.Timestamp(row[schema.TIMESTAMP]).to_pydatetime()
        store.upsert(rows[:-1])
        store.upsert(rows[-1:])
        served = store.history(steps=enc)
    finally:
        store.dispose()
    # training: the model frame of the same records; a window's encoder is its last steps
    frame = features.prepare_frame(irregular)
    names = sorted(served[schema.SERVER].unique())
    segments = set(frame[schema.SERVER].unique())
    assert set(names) <= segments and len(segments) > len(names)  # the outage split each server
    assert all(s in names or s.split("@")[0] in names for s in segments)
    trained = frame[frame[schema.SERVER].isin(names)].groupby(schema.SERVER).tail(enc)
    assert len(trained) == len(served) and len(served) > 300
    cols = [schema.TIMESTAMP, schema.SERVER, schema.STATUS, schema.PROFILE]
    pd.testing.assert_frame_equal(trained[cols].reset_index(drop=True), served[cols].reset_index(drop=True))
    np.testing.assert_array_equal(trained[list(schema.METRICS)].to_numpy(),
                                  served[list(schema.METRICS)].to_numpy(dtype=np.float32))
    # the model's input tensors from both are the same
    builder = forecaster._tensor_builder
    assert builder is not None
    a = builder.encode(inference.align_history(served, enc, min_enc))
    b = builder.encode(inference.align_history(trained, enc, min_enc))
    for field in ("encoder_cont", "decoder_cont", "encoder_cat", "decoder_cat", "encoder_lengths"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    # the forecaster and the MLflow pyfunc, given the raw records, forecast what the service does
    served_fc = forecaster.forecast(served)
    raw_fc = forecaster.forecast(irregular)
    model = registry.FleetcastTFT()
    model.forecaster = forecaster
    pyfunc = model.predict(None, irregular)
    for name in names:
        np.testing.assert_allclose(raw_fc[name].quantiles["cpu_percent"], served_fc[name].quantiles["cpu_percent"],
                                   rtol=1e-5, atol=1e-5)
        p50 = pyfunc[(pyfunc[schema.SERVER] == name) & (pyfunc["metric"] == "cpu_percent")]["p50"].to_numpy()
        np.testing.assert_allclose(p50, served_fc[name].quantiles["cpu_percent"][:, 1], rtol=1e-5, atol=1e-5)
