"""One experiment: the split, the prepared frames and the validation windows, built once per run.

What training, evaluation and the gated promotion share (the Dagster asset ``experiment_split``);
:mod:`models.production` builds the same object from the feed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet

from models import features, schema
from models.evaluation.metrics import Evaluation, evaluate
from models.evaluation.split import TRAIN_FRACTION, Split, make_split
from models.evaluation.windows import validation_windows, windows_dataset
from models.tft import Forecaster


@dataclass
class Experiment:
    """Everything training, evaluation and promotion need from one dataset, built once
    (the Dagster asset ``experiment_split``)."""

    split: Split
    frame: pd.DataFrame  # all servers, whole timeline, prepared (features.prepare_frame)
    train_frame: pd.DataFrame  # seen servers before the cutoff
    windows: pd.DataFrame  # validation windows, seen and unseen servers
    n_records: int  # rows of the records it was built from

    def val_dataset_builder(self, parameters: dict[str, Any]) -> TimeSeriesDataSet:
        """Validation-loss dataset for the Lightning loop: the seen servers' validation windows."""
        seen = self.windows[~self.windows["unseen"]]
        return windows_dataset(parameters, self.frame, seen)

    def evaluate(self, model: TemporalFusionTransformer) -> Evaluation:
        """:func:`evaluate` on this experiment's frame and windows."""
        return evaluate(model, self.frame, self.windows)

    def rescore(self, forecaster: Forecaster) -> float:
        """``val_score`` of ``forecaster`` on these windows: how the gated promotion re-scores the champion."""
        return self.evaluate(forecaster.model).metrics["val_score"]

    def check_same_split(self, upstream: str, fingerprint: str) -> None:
        """ValueError when ``upstream`` (e.g. an evaluation) was computed on another dataset than this split's."""
        if fingerprint != self.split.fingerprint:
            raise ValueError(f"{upstream} was computed on dataset {fingerprint}, this split is on "
                             f"{self.split.fingerprint}: compute {upstream} again on this split")

    def summary(self) -> dict[str, Any]:
        """What the split is, in plain values (Dagster metadata, logs)."""
        unseen = self.windows["unseen"].to_numpy(dtype=bool)
        return {
            "cutoff": self.split.cutoff.isoformat(),
            "seen_servers": list(self.split.seen),
            "unseen_servers": list(self.split.unseen),
            "n_records": self.n_records,
            "n_train_rows": len(self.train_frame),
            "n_windows": int((~unseen).sum()),
            "n_unseen_windows": int(unseen.sum()),
            "fingerprint": self.split.fingerprint,
        }


def prepare_experiment(
    records: pd.DataFrame, train_fraction: float = TRAIN_FRACTION, holdout: Sequence[str] | None = None
) -> Experiment:
    split = make_split(records, train_fraction, holdout)
    frame = features.prepare_frame(records)
    train_frame = frame[frame[schema.SERVER].isin(split.seen)
                        & (frame[schema.TIMESTAMP] < split.cutoff)].reset_index(drop=True)
    windows = validation_windows(frame, split.cutoff, unseen=split.unseen)
    return Experiment(split=split, frame=frame, train_frame=train_frame, windows=windows, n_records=len(records))
