"""MLflow registry: gated promotion with real models on real windows, and loading the champion back."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from models import config, evaluation, registry, schema, simulator, tft

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow]


def test_decide_rules() -> None:
    better = {"val_score": 0.7, "best_baseline_score": 0.9}
    worse_than_baselines = {"val_score": 0.95, "best_baseline_score": 0.9}
    assert registry.decide("1", better).decision == "champion"
    d = registry.decide("1", worse_than_baselines)
    assert d.decision == "rejected" and "baseline" in d.reason
    d = registry.decide("2", better, champion_version="1", champion_val_score=0.6)
    assert d.decision == "challenger" and "champion v1" in d.reason
    assert registry.decide("2", better, champion_version="1", champion_val_score=0.8).promoted
    # a tie does not replace the champion
    assert not registry.decide("2", better, champion_version="1", champion_val_score=0.7).promoted
    tags = registry.decide("2", better, champion_version="1", champion_val_score=0.8).as_tags()
    assert tags["decision"] == "champion" and tags["decision_champion_val_score"] == "0.8"


def _corrupted(forecaster: tft.Forecaster, noise: float, seed: int) -> tft.Forecaster:
    """A deliberately worse model: the same network with noise added to its output layer."""
    model = tft.TemporalFusionTransformer(loss=forecaster.model.loss, **dict(forecaster.model.hparams))
    model.load_state_dict(forecaster.model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.output_layer.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * noise)
    return tft.Forecaster(model, forecaster.training_servers, {"corrupted": noise})


@contextlib.contextmanager
def _registry_at(root: Path) -> Iterator[str]:
    """An MLflow tracking store and artifact root of their own under ``root``; yields the tracking URI."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEETCAST_DATA_DIR", str(root))
        uri = f"sqlite:///{root / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("FLEETCAST_MLFLOW_ARTIFACTS", str(root / "artifacts"))
        yield uri


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _registry_at(tmp_path_factory.mktemp("registry")) as uri:
        yield uri


@pytest.fixture(scope="module")
def champion_registry(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
                      tiny_experiment: evaluation.Experiment) -> Iterator[str]:
    """A registry of its own in which the tiny model is registered and promoted to ``champion``.

    Independent of the promotion test (and of test order): the baseline gate is opened, as in
    that test, because a few-second model is not meant to beat the baselines.
    """
    root = tmp_path_factory.mktemp("champion_registry")
    with _registry_at(root) as uri:
        trained = tft.Forecaster.from_checkpoint(tiny_checkpoint)
        version, metrics = _register(trained, tiny_experiment, root, "champion", uri)
        decision = registry.promote(version, {**metrics, "best_baseline_score": float("inf")},
                                    lambda _champion: float("inf"), uri)
        assert decision.promoted, decision.reason
        yield uri


def _register(forecaster: tft.Forecaster, exp: evaluation.Experiment, tmp: Path, name: str,
              uri: str) -> tuple[str, dict[str, float]]:
    metrics = evaluation.evaluate(forecaster.model, exp.frame, exp.windows).metrics
    path = tmp / name / "tft.pt"
    forecaster.save(path)
    run_id = registry.start_run({**exp.split.as_params(), "candidate": name}, tracking_uri=uri, run_name=name)
    registry.log_evaluation(run_id, metrics, _table(metrics), tracking_uri=uri)
    mv = registry.log_and_register(run_id, path, uri)
    return str(mv.version), metrics


def _table(metrics: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"metric": k, "value": v} for k, v in metrics.items()])


def test_gated_promotion_with_real_models(registry_env: str, tiny_checkpoint: Path,
                                          tiny_experiment: evaluation.Experiment,
                                          tmp_path: Path) -> None:
    uri = registry_env
    exp = tiny_experiment
    trained = tft.Forecaster.from_checkpoint(tiny_checkpoint)
    rescore = exp.rescore  # the champion re-scored on the candidate's windows, as the champion_model asset does

    # 1. a garbage model does not beat the baselines: rejected, even with no champion in place
    garbage = _corrupted(trained, noise=5.0, seed=0)
    v0, m0 = _register(garbage, exp, tmp_path, "garbage", uri)
    d0 = registry.promote(v0, m0, rescore, uri)
    assert m0["val_score"] > m0["best_baseline_score"]
    assert d0.decision == "rejected"
    assert registry.current_champion(uri) is None
    assert registry.client(uri).get_model_version(config.MODEL_NAME, v0).tags["decision"] == "rejected"

    # From here the baseline gate is opened (best_baseline_score = inf) so the test isolates the
    # champion comparison; every val_score is still a real evaluation on the same windows.
    def open_gate(m: dict[str, float]) -> dict[str, float]:
        return {**m, "best_baseline_score": float("inf")}

    # 2. a mildly corrupted model becomes the first champion
    mild = _corrupted(trained, noise=1.0, seed=1)
    v1, m1 = _register(mild, exp, tmp_path, "mild", uri)
    assert registry.promote(v1, open_gate(m1), rescore, uri).promoted
    assert str(registry.current_champion(uri).version) == v1

    # 3. a worse model (more noise) does not take the alias
    worse = _corrupted(trained, noise=4.0, seed=2)
    v2, m2 = _register(worse, exp, tmp_path, "worse", uri)
    d2 = registry.promote(v2, open_gate(m2), rescore, uri)
    assert m2["val_score"] > m1["val_score"]
    assert d2.decision == "challenger"
    assert d2.champion_version == v1
    assert d2.champion_val_score == pytest.approx(m1["val_score"], rel=1e-6)  # re-scored, same windows
    assert str(registry.current_champion(uri).version) == v1
    c = registry.client(uri)
    run_tags = c.get_run(c.get_model_version(config.MODEL_NAME, v2).run_id).data.tags
    assert run_tags["decision"] == "challenger" and "champion" in run_tags["decision_reason"]

    # 4. the trained model is better than the champion: it takes the alias
    v3, m3 = _register(trained, exp, tmp_path, "trained", uri)
    d3 = registry.promote(v3, open_gate(m3), rescore, uri)
    assert m3["val_score"] < m1["val_score"]
    assert d3.promoted, d3.reason
    assert str(registry.current_champion(uri).version) == v3

    forecaster, info = registry.load_champion(uri)
    assert info["version"] == v3 and info["name"] == config.MODEL_NAME
    assert info["metrics"]["val_score"] == pytest.approx(m3["val_score"])
    assert forecaster.training_servers == trained.training_servers
    path = registry.champion_checkpoint_path(uri, dst=tmp_path / "export")
    assert path.is_file() and path.name == "tft.pt"
    assert tft.Forecaster.from_checkpoint(path).n_parameters == trained.n_parameters


def test_champion_loads_in_a_fresh_process(champion_registry: str, tiny_fleet: simulator.FleetData,
                                           tmp_path: Path) -> None:
    """The pyfunc of the promoted champion predicts in a process with none of the test's state."""
    champion = registry.current_champion(champion_registry)
    assert champion is not None
    records = tiny_fleet.records.groupby(schema.SERVER).tail(schema.ENCODER_STEPS)
    records = records.assign(server_name=records[schema.SERVER] + "-renamed")  # never seen in training
    data = tmp_path / "records.parquet"
    records.to_parquet(data)
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model('models:/{config.MODEL_NAME}@{config.CHAMPION_ALIAS}')\n"
        "out = model.predict(pd.read_parquet(sys.argv[1]))\n"
        "print(json.dumps({'rows': len(out), 'columns': list(out.columns),\n"
        "  'servers': sorted(out['server_name'].unique()), 'metrics': sorted(out['metric'].unique()),\n"
        "  'steps': int(out['step'].max()), 'ordered': bool(((out.p10 <= out.p50) & (out.p50 <= out.p90)).all())}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion_registry}
    proc = subprocess.run([sys.executable, "-c", script, str(data)], capture_output=True, text=True,
                          env=env, cwd=config.PROJECT_ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    n_servers = records[schema.SERVER].nunique()
    assert result["servers"] == sorted(records[schema.SERVER].unique())
    assert result["metrics"] == sorted(schema.METRICS)
    assert result["steps"] == schema.HORIZON_STEPS
    assert result["rows"] == n_servers * len(schema.METRICS) * schema.HORIZON_STEPS
    assert {"p10", "p50", "p90", "timestamp"} <= set(result["columns"])
    assert result["ordered"]
