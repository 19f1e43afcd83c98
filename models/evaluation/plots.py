"""Forecast-vs-actual figures of an evaluation (logged to MLflow under ``plots/``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models import schema
from models.evaluation.metrics import Evaluation
from models.evaluation.windows import TARGETS, SeriesArrays


def plot_forecasts(evaluation: Evaluation, frame: pd.DataFrame, n_servers: int = 4) -> dict[str, Any]:
    """Forecast-vs-actual figures (P50 with P10-P90 band, 24 h of history) for a few servers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = evaluation.windows.reset_index(drop=True)
    picks: list[int] = []
    for flag in (True, False):  # unseen servers first, then one per profile
        sub = w[w["unseen"] == flag]
        for _, g in sub.groupby(schema.PROFILE if not flag else schema.SERVER, sort=True):
            picks.append(int(g.index[len(g) // 2]))
    picks = picks[:n_servers]
    arrays = SeriesArrays.from_frame(frame)
    figures: dict[str, Any] = {}
    for i in picks:
        row = w.iloc[[i]]
        hist = arrays.slab(row, schema.ENCODER_STEPS, 0)[0]
        fig, axes = plt.subplots(len(TARGETS), 1, figsize=(10, 9), sharex=True)
        x_hist = np.arange(-schema.ENCODER_STEPS, 0)
        x_fut = np.arange(schema.HORIZON_STEPS)
        for j, m in enumerate(TARGETS):
            ax = axes[j]
            ax.plot(x_hist, hist[:, j], color="0.4", lw=0.8, label="history")
            ax.plot(x_fut, evaluation.actuals[i, :, j], color="k", lw=0.9, label="actual")
            q = evaluation.forecasts[i, :, j, :]
            ax.fill_between(x_fut, q[:, 0], q[:, -1], alpha=0.3, color="tab:blue", label="P10-P90")
            ax.plot(x_fut, q[:, 1], color="tab:blue", lw=1.2, label="P50")
            ax.set_ylabel(schema.METRIC_LABELS[m])
        axes[0].legend(loc="upper left", fontsize=7, ncol=4)
        axes[-1].set_xlabel("steps from origin (5 min)")
        server = str(row[schema.SERVER].iloc[0])
        tag = "unseen" if bool(row["unseen"].iloc[0]) else "seen"
        fig.suptitle(f"{server} ({row[schema.PROFILE].iloc[0]}, {tag}) origin {row['origin'].iloc[0]}")
        fig.tight_layout()
        figures[f"forecast_{server}.png"] = fig
    return figures

