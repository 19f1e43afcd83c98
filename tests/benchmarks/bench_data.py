"""Benchmark: generate and validate the full default fleet dataset (345,600 records).

Run with ``make bench-data`` (``.venv/bin/python tests/benchmarks/bench_data.py``). Prints the best
of ``--repeat`` runs for each stage; the target is under 10 s for both together on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

from models import schema
from models.simulator import generate_fleet
from models.validation import validate_fleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    gen_times, val_times = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fleet = generate_fleet()
        t1 = time.perf_counter()
        report = validate_fleet(fleet.records)
        t2 = time.perf_counter()
        if not report.ok:
            raise SystemExit(f"the default dataset failed validation:\n{report.summary()}")
        gen_times.append(t1 - t0)
        val_times.append(t2 - t1)

    rows = len(fleet.records)
    assert rows == schema.DEFAULT_ROWS
    gen, val = min(gen_times), min(val_times)
    servers = fleet.records[schema.SERVER].nunique()
    print(f"records:            {rows:,} ({servers} servers, {len(fleet.incidents)} incidents)")
    print(f"generate_fleet:     {gen:.2f} s  (best of {args.repeat}; {rows / gen:,.0f} records/s)")
    print(f"validate_fleet:     {val:.2f} s  (best of {args.repeat}; {rows / val:,.0f} records/s)")
    print(f"total:              {gen + val:.2f} s  (target < 10 s)")


if __name__ == "__main__":
    main()
