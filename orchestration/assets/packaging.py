"""Serving assets: the registry's champion imported into BentoML's model store (thin glue).

The logic lives in ``serving.model_store.import_champion`` (tested on its own); this asset runs it
after ``champion_model`` and shows what the service will load.
"""

import dagster as dg

from orchestration.mlflow_resource import MlflowResource
from serving import model_store

GROUP = "serving"


@dg.asset(
    deps=[dg.AssetKey("champion_model")],
    group_name=GROUP,
    description="The MLflow champion (fleetcast-tft@champion) copied into BentoML's model store as "
                "fleetcast-tft, labelled with its registry version and run id: what `bentoml serve` loads.",
    kinds={"bentoml"},
)
def bento_model(context: dg.AssetExecutionContext, mlflow: MlflowResource) -> dg.MaterializeResult:
    model = model_store.import_champion(tracking_uri=mlflow.uri())
    labels = dict(model.info.labels)
    metrics = dict(model.info.metadata.get("metrics") or {})
    context.log.info(f"BentoML model {model.tag} = registry version {labels.get('registry_version')}")
    return dg.MaterializeResult(metadata={
        "bento_tag": str(model.tag),
        "registry_version": labels.get("registry_version", ""),
        "run_id": labels.get("run_id", ""),
        "path": dg.MetadataValue.path(str(model.path)),
        **{f"metric/{k}": float(v) for k, v in sorted(metrics.items())[:20]},
    })
