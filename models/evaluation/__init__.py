"""Evaluation: the one place training, promotion and benchmarks evaluate.

Protocol
--------
- **Split by time**: the first 80 % of the timeline trains, the last 20 % validates
  (``cutoff`` = first validation timestamp).
- **Unseen servers**: two servers with different profiles are held out of training entirely
  (:func:`choose_holdout`); they are forecast only from their profile and their own history.
- **Windows**: one forecast origin every 2 h (24 steps) from ``cutoff`` to the last origin whose
  96-step horizon is still inside the data, for every server; the encoder is the full 288 steps
  before the origin (it may reach back into the training period: that is history, not target).
- **Metrics** (P50 for MAE), horizon buckets are *disjoint*: ``1h`` = steps 1-12, ``4h`` = steps
  13-48, ``8h`` = steps 49-96; the name without a bucket is the MAE over all 96 steps.

  ========================================  =====================================================
  ``val_mae_<metric>[_<bucket>]``           TFT on the seen servers' windows
  ``baseline_<name>_mae_<metric>[_<b>]``    baseline on exactly those windows
  ``coverage_p10_p90_<metric>``             share of actuals inside [P10, P90] (ideal 0.8)
  ``unseen_mae_<metric>``, ``seen_mae_<metric>``  TFT on unseen / seen servers' windows
  ``unseen_baseline_<name>_mae_<metric>``   baselines on the unseen servers' windows
  ``val_score``                             mean over targets of MAE / scale (lower is better)
  ``baseline_score_<name>``, ``best_baseline_score``  the same score for each baseline
  ========================================  =====================================================

  ``scale`` of a target is the mean of the three baselines' MAE on the same windows, so every
  score computed on one window set is comparable (the gated promotion relies on it).

Where each part lives:

==================================  ====================================================================
``models/evaluation/split.py``      the split by time and the held-out servers (:func:`make_split`)
``models/evaluation/windows.py``    validation windows (:func:`validation_windows`) and the model's
                                    forecasts on exactly those (:func:`model_window_forecasts`)
``models/evaluation/metrics.py``    MAE per target x bucket, coverage, baselines, score
                                    (:func:`evaluate`, :func:`compute_metrics`)
``models/evaluation/experiment.py``  split + frames + windows built once (:func:`prepare_experiment`)
``models/evaluation/plots.py``      forecast-vs-actual figures
``models/evaluation/importance.py``  the TFT's variable importance
==================================  ====================================================================

The names below are its public API (``from models import evaluation``; ``evaluation.evaluate(...)``).
"""

from models.evaluation.experiment import Experiment, prepare_experiment
from models.evaluation.importance import variable_importance
from models.evaluation.metrics import (
    BUCKETS,
    Evaluation,
    baseline_table,
    beats_baselines,
    compute_metrics,
    evaluate,
    score,
)
from models.evaluation.plots import plot_forecasts
from models.evaluation.split import N_HOLDOUT, TRAIN_FRACTION, Split, choose_holdout, dataset_fingerprint, make_split
from models.evaluation.windows import (
    TARGETS,
    WINDOW_EVERY,
    SeriesArrays,
    model_window_forecasts,
    validation_windows,
    windows_dataset,
)

__all__ = [
    "BUCKETS",
    "N_HOLDOUT",
    "TARGETS",
    "TRAIN_FRACTION",
    "WINDOW_EVERY",
    "Evaluation",
    "Experiment",
    "SeriesArrays",
    "Split",
    "baseline_table",
    "beats_baselines",
    "choose_holdout",
    "compute_metrics",
    "dataset_fingerprint",
    "evaluate",
    "make_split",
    "model_window_forecasts",
    "plot_forecasts",
    "prepare_experiment",
    "score",
    "validation_windows",
    "variable_importance",
    "windows_dataset",
]
