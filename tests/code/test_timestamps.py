"""One timestamp format on the wire: ``schema.iso`` / ``schema.iso_many`` write what ``to_utc_naive`` reads."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from models import schema


def test_iso_writes_utc_without_offset_to_the_second() -> None:
    assert schema.iso(pd.Timestamp("2025-10-12 21:40:05.9")) == "2025-10-12T21:40:05"
    assert schema.iso(datetime(2025, 10, 12, 21, 40)) == "2025-10-12T21:40:00"
    assert schema.iso(np.datetime64("2025-10-12T21:40:00")) == "2025-10-12T21:40:00"


def test_iso_many_matches_iso_and_round_trips() -> None:
    stamps = pd.Series(pd.date_range("2025-10-12 21:40", periods=300, freq="5min"))
    written = schema.iso_many(stamps)
    assert written == [schema.iso(ts) for ts in stamps]
    assert [schema.to_utc_naive(text) for text in written] == list(stamps.dt.to_pydatetime())
    assert schema.iso_many(pd.DatetimeIndex([])) == []
