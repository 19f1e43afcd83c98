"""Summaries of a simulated fleet for people: a table per profile and a plot of one server per profile.

What the Dagster asset ``fleet_dataset`` shows as metadata (``orchestration/assets/data.py``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from models import schema


def profile_summary(records: pd.DataFrame) -> pd.DataFrame:
    """Per profile: servers, records, mean/std of each metric and the share of non-healthy records."""
    grouped = records.groupby(schema.PROFILE, sort=True)
    out = pd.DataFrame(
        {
            "servers": grouped[schema.SERVER].nunique(),
            "records": grouped.size(),
        }
    )
    for metric in schema.METRICS:
        out[f"{metric}_mean"] = grouped[metric].mean()
        out[f"{metric}_std"] = grouped[metric].std()
    out["not_healthy_share"] = grouped[schema.STATUS].apply(lambda s: float((s != schema.STATUSES[0]).mean()))
    return out.reset_index()


def plot_fleet_sample(
    records: pd.DataFrame,
    path: Any,
    days: float = 3.0,
    metrics: tuple[str, ...] = ("cpu_percent", "memory_percent"),
) -> Any:
    """Save a PNG of the last ``days`` of one server per profile (a panel per metric); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = records[schema.TIMESTAMP].max()
    recent = records[records[schema.TIMESTAMP] > end - pd.Timedelta(days=days)]
    first = recent.groupby(schema.PROFILE, sort=True)[schema.SERVER].min()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(10, 2.6 * len(metrics)), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        for profile, server in first.items():
            s = recent[recent[schema.SERVER] == server]
            ax.plot(s[schema.TIMESTAMP], s[metric], lw=0.8, label=f"{server} ({profile})")
        ax.set_ylabel(schema.METRIC_LABELS.get(metric, metric))
        if metric in schema.PERCENT_METRICS:
            ax.set_ylim(0, 100)
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path
