"""The split: which time trains and which validates, which servers are never trained on.

- **Split by time**: the first 80 % of the timeline trains, the last 20 % validates
  (``cutoff`` = first validation timestamp).
- **Unseen servers**: two servers with different profiles are held out of training entirely
  (:func:`choose_holdout`); they are forecast only from their profile and their own history.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models import schema

TRAIN_FRACTION = 0.8
N_HOLDOUT = 2


def dataset_fingerprint(records: pd.DataFrame) -> str:
    """A stable hash of the records' contract columns (order-independent of row order)."""
    cols = [c for c in schema.COLUMNS if c in records.columns]
    data = records[cols].sort_values([schema.SERVER, schema.TIMESTAMP]).reset_index(drop=True)
    hashed = pd.util.hash_pandas_object(data, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def choose_holdout(servers: pd.DataFrame, n: int = N_HOLDOUT) -> list[str]:
    """Pick ``n`` servers with different profiles to keep out of training, deterministically.

    ``servers`` has columns server_name and profile. Profiles with several servers are preferred, so
    the held-out servers' profiles are still represented in training.
    """
    table = servers[[schema.SERVER, schema.PROFILE]].drop_duplicates(schema.SERVER)
    table = table.sort_values([schema.PROFILE, schema.SERVER])
    counts = table[schema.PROFILE].value_counts()
    if len(table) <= n:
        raise ValueError(f"need more than {n} servers to hold {n} out")
    chosen: list[str] = []
    for need_several in (True, False):
        for profile in sorted(counts.index):
            if len(chosen) == n:
                break
            if need_several and counts[profile] < 2:
                continue
            if any(table.set_index(schema.SERVER).loc[c, schema.PROFILE] == profile for c in chosen):
                continue
            chosen.append(str(table[table[schema.PROFILE] == profile][schema.SERVER].iloc[-1]))
    return chosen


@dataclass
class Split:
    cutoff: pd.Timestamp  # first timestamp of the validation period
    seen: list[str]
    unseen: list[str]
    fingerprint: str

    def train_records(self, records: pd.DataFrame) -> pd.DataFrame:
        mask = records[schema.SERVER].isin(self.seen) & (records[schema.TIMESTAMP] < self.cutoff)
        return records[mask].reset_index(drop=True)

    def as_params(self) -> dict[str, Any]:
        return {
            "split_cutoff": str(self.cutoff),
            "unseen_servers": ",".join(self.unseen),
            "n_seen_servers": len(self.seen),
            "dataset_fingerprint": self.fingerprint,
        }


def make_split(
    records: pd.DataFrame, train_fraction: float = TRAIN_FRACTION, holdout: Sequence[str] | None = None
) -> Split:
    times = np.sort(records[schema.TIMESTAMP].unique())
    if len(times) < 2:
        raise ValueError("records span fewer than two timestamps")
    cutoff = pd.Timestamp(times[int(len(times) * train_fraction)])
    servers = records[[schema.SERVER, schema.PROFILE]].drop_duplicates(schema.SERVER)
    unseen = list(holdout) if holdout is not None else choose_holdout(servers)
    seen = sorted(set(servers[schema.SERVER]) - set(unseen))
    return Split(cutoff=cutoff, seen=seen, unseen=sorted(unseen), fingerprint=dataset_fingerprint(records))

