"""Jobs: named selections of assets (their checks run with them)."""

from __future__ import annotations

import dagster as dg

build_dataset = dg.define_asset_job(
    "build_dataset",
    selection=dg.AssetSelection.assets("fleet_dataset", "incident_labels"),
    description="Simulate the fleet dataset and its incident labels, then validate it (blocking check).",
)

# training: preset "demo" by default (Launchpad: ops.tft_model.config.preset); the _full job
# pre-fills preset "full" (whole epochs, accelerator auto). Both end by packaging whatever is then
# champion into BentoML's model store, so the next `bentoml serve` start runs it.
_TRAIN_PATH = dg.AssetSelection.groups("training", "serving")
train_and_promote = dg.define_asset_job(
    "train_and_promote",
    selection=_TRAIN_PATH,
    description="Train the TFT, evaluate vs baselines, register, promote if better, package the champion.",
)
train_and_promote_full = dg.define_asset_job(
    "train_and_promote_full",
    selection=_TRAIN_PATH,
    config={"ops": {"tft_model": {"config": {"preset": "full"}}}},
    description="train_and_promote with the full preset (whole epochs; GPU if present).",
)



def feed_run_config(preset: str = "demo", source: str = "feed", init_from_champion: bool = True) -> dict:
    """Run config of a feed retraining run: production data, fine-tuned from the champion by default."""
    return {"ops": {
        "experiment_split": {"config": {"source": source}},
        "tft_model": {"config": {"preset": preset, "init_from_champion": init_from_champion}},
    }}


# the closed loop: read the feed store, validate, fine-tune the champion on it, gate on the held-out
# production windows, package. What the feed sensor and the weekly schedule launch.
feed_retrain = dg.define_asset_job(
    "feed_retrain",
    selection=dg.AssetSelection.assets("production_dataset") | _TRAIN_PATH,
    config=feed_run_config(),
    description="Production retraining: production_dataset from the feed store (+ its check), fine-tune the "
                "champion on the first 80 % of feed time, evaluate and gate on the last 20 %, package the champion.",
)

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("feed"),
    description="Everything, in order: dataset and its check, training, promotion, packaging (what `make demo` runs).",
)

package_champion = dg.define_asset_job(
    "package_champion",
    selection=dg.AssetSelection.groups("serving"),
    description="Import the MLflow champion into BentoML's model store (what `bentoml serve` loads).",
)

JOBS = [full_pipeline, build_dataset, train_and_promote, train_and_promote_full, feed_retrain, package_champion]
