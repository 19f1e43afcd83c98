"""Split, windows, baselines and metrics: known answers on data whose right result is obvious."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import baselines, evaluation, features, schema, simulator, tft

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _daily_cycle_fleet(days: int = 6) -> pd.DataFrame:
    """Three servers whose metrics are a pure function of the time of day (no noise, no trend)."""
    ts = pd.date_range("2025-03-01", periods=days * schema.STEPS_PER_DAY, freq=schema.STEP_FREQ)
    phase = 2 * np.pi * (ts.hour * 60 + ts.minute).to_numpy() / 1440
    frames = []
    for i, (name, profile) in enumerate([("web-01", "web_api"), ("db-01", "database"), ("ml-01", "ml_compute")]):
        frames.append(pd.DataFrame({
            schema.TIMESTAMP: ts,
            schema.SERVER: name,
            "cpu_percent": 40 + 25 * np.sin(phase + i),
            "memory_percent": 55 + 10 * np.cos(phase),
            "disk_percent": 30 + 5 * np.sin(2 * phase),
            "load_average": 2 + np.sin(phase) ** 2,
            schema.STATUS: "healthy",
            schema.PROFILE: profile,
        }))
    return pd.concat(frames, ignore_index=True)


def test_baselines_on_small_arrays() -> None:
    history = np.arange(2 * 288, dtype=float).reshape(1, -1, 1).repeat(2, axis=2)
    np.testing.assert_array_equal(baselines.last_value(history, 3)[0, :, 0], [575, 575, 575])
    np.testing.assert_array_equal(baselines.seasonal_naive(history, 3)[0, :, 0], [288, 289, 290])
    assert baselines.mean_last_day(history, 2)[0, 0, 0] == pytest.approx(np.arange(288, 576).mean())
    with pytest.raises(ValueError, match="288 steps"):
        baselines.seasonal_naive(history[:, :100], 3)


def test_baselines_and_mae_equal_statsforecast_and_utilsforecast(tiny_experiment: evaluation.Experiment) -> None:
    """The numpy baselines are statsforecast's Naive, SeasonalNaive(288) and WindowAverage(288) on each
    window's 288-step history, and the evaluation's MAE is utilsforecast's, on the evaluation's own windows.

    The numpy versions stay in the evaluation because they run on the [windows, steps, targets] slab it
    already has, ~10-30x faster (tests/benchmarks/bench_baselines.py); this test keeps them honest.
    """
    from statsforecast import StatsForecast
    from statsforecast.models import Naive, SeasonalNaive, WindowAverage
    from utilsforecast.losses import mae

    exp = tiny_experiment
    windows = exp.windows
    n, k, h = len(windows), len(evaluation.TARGETS), schema.HORIZON_STEPS
    actuals, base = evaluation.baseline_table(exp.frame, windows)
    history = evaluation.SeriesArrays.from_frame(exp.frame).slab(windows, schema.ENCODER_STEPS, 0)
    long = pd.DataFrame({
        "unique_id": np.repeat(np.arange(n * k), schema.ENCODER_STEPS),
        "ds": np.tile(np.arange(schema.ENCODER_STEPS), n * k),
        "y": history.transpose(0, 2, 1).reshape(-1),
    })
    sf = StatsForecast(models=[Naive(), SeasonalNaive(season_length=schema.STEPS_PER_DAY),
                               WindowAverage(window_size=schema.STEPS_PER_DAY)], freq=1, n_jobs=1)
    out = sf.forecast(df=long, h=h)
    names = {"Naive": "last_value", "SeasonalNaive": "seasonal_naive", "WindowAverage": "mean_24h"}
    assert set(names.values()) == set(baselines.BASELINES)
    for column, name in names.items():
        theirs = out[column].to_numpy().reshape(n, k, h).transpose(0, 2, 1)
        np.testing.assert_allclose(base[name], theirs, rtol=0, atol=1e-9, err_msg=name)

    # MAE per baseline, target and horizon bucket on the seen servers' windows, as utilsforecast computes it
    unseen = windows["unseen"].to_numpy(dtype=bool)
    metrics, _, _ = evaluation.compute_metrics(np.repeat(actuals[..., None], 3, axis=3), actuals, base, unseen)
    seen = np.flatnonzero(~unseen)
    buckets = {"": slice(0, h), **{f"_{b}": sl for b, sl in evaluation.BUCKETS.items()}}
    for i, target in enumerate(evaluation.TARGETS):
        for suffix, sl in buckets.items():
            steps = np.arange(h)[sl]
            frame = pd.DataFrame({
                "unique_id": np.repeat(seen, len(steps)),
                "y": actuals[seen][:, sl, i].reshape(-1),
                **{name: base[name][seen][:, sl, i].reshape(-1) for name in baselines.BASELINES},
            })
            per_window = mae(frame, models=list(baselines.BASELINES))  # one row per window (equal lengths)
            for name in baselines.BASELINES:
                key = f"baseline_{name}_mae_{target}{suffix}"
                assert metrics[key] == pytest.approx(per_window[name].mean(), rel=1e-12), key


def test_seasonal_naive_is_exact_on_a_pure_daily_cycle() -> None:
    records = _daily_cycle_fleet()
    exp = evaluation.prepare_experiment(records, holdout=["ml-01"])
    actuals, base = evaluation.baseline_table(exp.frame, exp.windows)
    assert actuals.shape == (len(exp.windows), schema.HORIZON_STEPS, len(schema.METRICS))
    assert np.abs(base["seasonal_naive"] - actuals).max() < 1e-9
    assert np.abs(base["last_value"] - actuals).mean() > 1.0
    assert np.abs(base["mean_24h"] - actuals).mean() > 1.0
    metrics, _, _ = evaluation.compute_metrics(
        np.repeat(actuals[..., None], 3, axis=3), actuals, base, exp.windows["unseen"].to_numpy()
    )
    assert metrics["baseline_seasonal_naive_mae_cpu_percent_8h"] < 1e-9
    assert metrics["val_mae_cpu_percent"] == 0.0  # a perfect forecast
    assert metrics["val_score"] == 0.0
    assert metrics["coverage_p10_p90_memory_percent"] == 1.0


def test_windows_every_two_hours_over_the_validation_period() -> None:
    records = _daily_cycle_fleet(days=10)
    exp = evaluation.prepare_experiment(records, holdout=["db-01"])
    w = exp.windows
    cutoff_idx = int(features.time_index(pd.DatetimeIndex([exp.split.cutoff]))[0])
    last_idx = int(exp.frame[features.TIME_IDX].max())
    for _, g in w.groupby(schema.SERVER):
        origins = g["origin_idx"].to_numpy()
        assert origins[0] == cutoff_idx
        assert set(np.diff(origins)) == {evaluation.WINDOW_EVERY}
        assert origins[-1] + schema.HORIZON_STEPS - 1 <= last_idx < origins[-1] + evaluation.WINDOW_EVERY + 96
    assert set(w[w["unseen"]][schema.SERVER]) == {"db-01"}
    # the validation period is the last 20 % of the timeline
    span = records[schema.TIMESTAMP].max() - records[schema.TIMESTAMP].min()
    assert exp.split.cutoff - records[schema.TIMESTAMP].min() == pytest.approx(0.8 * span, abs=pd.Timedelta("10min"))
    assert (exp.train_frame[schema.TIMESTAMP] < exp.split.cutoff).all()
    assert "db-01" not in set(exp.train_frame[schema.SERVER])


def test_holdout_is_two_servers_of_different_profiles_still_in_training() -> None:
    servers = pd.DataFrame(simulator.default_servers(20), columns=[schema.SERVER, schema.PROFILE])
    held = evaluation.choose_holdout(servers)
    assert len(held) == 2
    profiles = servers.set_index(schema.SERVER).loc[held, schema.PROFILE]
    assert profiles.nunique() == 2
    remaining = servers[~servers[schema.SERVER].isin(held)]
    assert set(profiles) <= set(remaining[schema.PROFILE])
    assert evaluation.choose_holdout(servers) == held  # deterministic


def test_model_and_baselines_are_scored_on_the_same_windows(
    tiny_checkpoint: Path, tiny_experiment: evaluation.Experiment
) -> None:
    model = tft.Forecaster.from_checkpoint(tiny_checkpoint).model
    exp = tiny_experiment
    result = evaluation.evaluate(model, exp.frame, exp.windows)
    n = len(exp.windows)
    assert result.forecasts.shape == (n, schema.HORIZON_STEPS, 4, 3)
    assert all(f.shape == (n, schema.HORIZON_STEPS, 4) for f in result.baseline_forecasts.values())
    # the library's own decoder targets for those windows are exactly the actuals the baselines are scored on
    ds = evaluation.windows_dataset(model.dataset_parameters, exp.frame, exp.windows)
    assert len(ds) == n
    x, y = next(iter(ds.to_dataloader(train=False, batch_size=n)))
    index = ds.x_to_index(x)
    order = {(s, int(t)): i for i, (s, t) in enumerate(zip(exp.windows[schema.SERVER], exp.windows["origin_idx"],
                                                           strict=True))}
    rows = [order[(str(s), int(t))] for s, t in zip(index[schema.SERVER], index[features.TIME_IDX], strict=True)]
    lib_actuals = np.stack([t.numpy() for t in y[0]], axis=2)
    np.testing.assert_allclose(lib_actuals, result.actuals[rows], rtol=1e-5, atol=1e-4)
    m = result.metrics
    for name in ("val_mae_cpu_percent_1h", "val_mae_cpu_percent_4h", "val_mae_cpu_percent_8h",
                 "baseline_seasonal_naive_mae_cpu_percent_8h", "baseline_last_value_mae_memory_percent",
                 "baseline_mean_24h_mae_load_average_1h", "coverage_p10_p90_cpu_percent",
                 "unseen_mae_cpu_percent", "seen_mae_disk_percent", "val_score", "best_baseline_score"):
        assert np.isfinite(m[name]), name
    assert m["n_windows"] + m["n_unseen_windows"] == n
    assert m["best_baseline_score"] == min(m[f"baseline_score_{b}"] for b in baselines.BASELINES)


def test_experiment_rescore_and_summary(tiny_checkpoint: Path, tiny_experiment: evaluation.Experiment,
                                        tiny_fleet: simulator.FleetData) -> None:
    """What the experiment_split asset hands the promotion gate: the same val_score evaluate() gives."""
    forecaster = tft.Forecaster.from_checkpoint(tiny_checkpoint)
    exp = tiny_experiment
    expected = evaluation.evaluate(forecaster.model, exp.frame, exp.windows).metrics["val_score"]
    assert np.isfinite(expected)
    assert exp.rescore(forecaster) == expected
    s = exp.summary()
    assert s["fingerprint"] == exp.split.fingerprint == evaluation.dataset_fingerprint(tiny_fleet.records)
    assert s["cutoff"] == exp.split.cutoff.isoformat()
    assert s["unseen_servers"] == exp.split.unseen and set(s["seen_servers"]) == set(exp.split.seen)
    assert s["n_windows"] + s["n_unseen_windows"] == len(exp.windows) and s["n_unseen_windows"] > 0
    assert s["n_records"] == len(tiny_fleet.records) and s["n_train_rows"] == len(exp.train_frame)


def test_plots_and_variable_importance(tiny_checkpoint: Path, tiny_experiment: evaluation.Experiment) -> None:
    import matplotlib.pyplot as plt

    model = tft.Forecaster.from_checkpoint(tiny_checkpoint).model
    exp = tiny_experiment
    result = evaluation.evaluate(model, exp.frame, exp.windows)
    figs = evaluation.plot_forecasts(result, exp.frame, n_servers=3)
    assert len(figs) == 3
    assert any(name.removeprefix("forecast_").removesuffix(".png") in exp.split.unseen for name in figs)
    importance, imp_figs = evaluation.variable_importance(model, exp.frame, exp.windows, max_windows=64)
    assert set(importance) == {"static", "encoder", "decoder"}
    assert schema.PROFILE in importance["static"]
    assert "cpu_percent" in importance["encoder"]
    assert sum(importance["encoder"].values()) == pytest.approx(1.0, abs=1e-4)
    assert {"importance_static_variables.png", "importance_encoder_variables.png",
            "importance_decoder_variables.png"} <= set(imp_figs)
    plt.close("all")
