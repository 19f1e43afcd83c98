"""The TFT's variable importance (static / encoder / decoder) over some validation windows, and its figures."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pytorch_forecasting import TemporalFusionTransformer

from models import schema
from models.evaluation.windows import windows_dataset


def variable_importance(model: TemporalFusionTransformer, frame: pd.DataFrame, windows: pd.DataFrame,
                        max_windows: int = 512) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """TFT variable importance (static / encoder / decoder) over some windows, and its figures."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    sample = windows.iloc[np.linspace(0, len(windows) - 1, min(max_windows, len(windows))).astype(int)]
    ds = windows_dataset(model.dataset_parameters, frame, sample.drop_duplicates([schema.SERVER, "origin_idx"]))
    x, _ = next(iter(ds.to_dataloader(train=False, batch_size=max_windows, num_workers=0)))
    model.eval()
    with torch.inference_mode():
        out = model(x)
        interp = model.interpret_output(out, reduction="sum")
    figures = model.plot_interpretation(interp)

    def named(values: Any, names: list[str]) -> dict[str, float]:
        v = values.detach().cpu().numpy()
        v = v / v.sum() if v.sum() > 0 else v
        return {n: float(x) for n, x in zip(names, v, strict=True)}

    importance = {
        "static": named(interp["static_variables"], list(model.static_variables)),
        "encoder": named(interp["encoder_variables"], list(model.encoder_variables)),
        "decoder": named(interp["decoder_variables"], list(model.decoder_variables)),
    }
    return importance, {f"importance_{k}.png": f for k, f in figures.items()}

