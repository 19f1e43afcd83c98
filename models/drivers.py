"""Which inputs drove a forecast: the TFT's variable-selection weights, for the alert explanation.

The Temporal Fusion Transformer picks its inputs through variable-selection networks: at every encoder
step a softmax over the history's inputs (the four metrics, their scales, the calendar, ...), one over
the static inputs (server, profile) and one over the known-future inputs. pytorch-forecasting's
``TemporalFusionTransformer.interpret_output`` averages the encoder's weights over the window's valid
steps; they sum to 1 per forecast. These are the weights of *that* forecast, not the model's average.

The service forecasts through the fused forward (:mod:`models.fused`), which computes the prediction only.
So the weights are computed apart, with the library's full forward, and only for the few servers whose
alert just opened (:func:`variable_weights`); the tensors are the service's own
(:class:`models.inference.TensorBuilder` with the model's fitted parameters), so the forecast explained
is the one served. The TFT selects its inputs once for all its targets: the weights explain the server's
forecast as a whole, the same for each of its metrics' alerts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from models import inference, schema, tft

log = logging.getLogger(__name__)

TOP_INPUTS = 4  # inputs named in an explanation
BATCH = 64


def variable_weights(forecaster: Any, history: pd.DataFrame,
                     servers: Iterable[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """The variable-selection weights of each server's forecast from ``history`` (long-format records, as
    :meth:`models.tft.Forecaster.forecast` takes them): ``{server: {"encoder": {input: weight},
    "static": {...}, "decoder": {...}}}``, each mapping summing to 1. ``servers``: only these (default all).

    Empty when the model needs the ``TimeSeriesDataSet`` path (the fast tensor builder does not support
    its dataset parameters): an explanation then names the trend or the forecast band only."""
    wanted = None if servers is None else {str(s) for s in servers}
    if wanted is not None:
        history = history[history[schema.SERVER].astype(str).isin(wanted)]
    if history.empty:
        return {}
    model = forecaster.model
    try:
        builder = inference.TensorBuilder(forecaster.inference_parameters, model.hparams.get("x_reals"),
                                          model.hparams.get("x_categoricals"))
        aligned = inference.align_history(tft.on_grid(history, forecaster.max_encoder_length),
                                          forecaster.max_encoder_length, forecaster.min_encoder_length)
        if aligned.info.empty:
            return {}
        fleet = builder.encode(aligned)
    except inference.UnsupportedDataset as exc:
        log.warning("no variable weights for this model: %s", exc)
        return {}
    names = {"encoder": list(model.encoder_variables), "static": list(model.static_variables),
             "decoder": list(model.decoder_variables)}
    out: dict[str, dict[str, dict[str, float]]] = {}
    servers_in_order = [str(s) for s in fleet.servers]
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(servers_in_order), BATCH):
            rows = np.arange(start, min(start + BATCH, len(servers_in_order)))
            raw = model(fleet.batch(rows))
            interpretation = model.interpret_output(raw, reduction="none")
            weights = {part: interpretation[f"{part}_variables"].float().cpu().numpy() for part in names}
            for j, row in enumerate(rows):
                out[servers_in_order[row]] = {
                    part: {name: float(w) for name, w in zip(names[part], weights[part][j], strict=True)}
                    for part in names}
    return out


def top_inputs(weights: Mapping[str, float], k: int = TOP_INPUTS) -> list[dict[str, Any]]:
    """The ``k`` inputs of largest weight, largest first: ``[{"input": name, "weight": w}, ...]``."""
    ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [{"input": name, "weight": round(float(w), 3)} for name, w in ranked]


def explain(weights: Mapping[str, Mapping[str, float]], k: int = TOP_INPUTS) -> dict[str, Any]:
    """The ``drivers`` part of an alert's explanation from one server's :func:`variable_weights`: the
    history inputs the TFT weighted most for this forecast, its strongest static and known-future input,
    and a one-line ``text``."""
    encoder = top_inputs(weights.get("encoder", {}), k)
    static = top_inputs(weights.get("static", {}), 1)
    decoder = top_inputs(weights.get("decoder", {}), 1)
    text = "TFT inputs weighted most: " + ", ".join(f"{d['input']} {d['weight']:.2f}" for d in encoder)
    return {"method": "tft-variable-selection", "history": encoder, "static": static, "future": decoder,
            "text": text}
