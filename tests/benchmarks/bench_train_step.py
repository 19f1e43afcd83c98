"""Benchmark: one demo training step, the library's dataloader vs models.batches, interleaved.

Same model, optimizer and data (the contract dataset's training part, demo network, batch 64); each
round runs one step fed by ``TimeSeriesDataSet.to_dataloader`` and one fed by
``WindowBatches.dataloader``, so a change in the machine's load hits both alike. Prints the mean
seconds of building a batch and of forward + loss + backward + Adam for each, and the load average.

    .venv/bin/python tests/benchmarks/bench_train_step.py                 # 5 rounds, 1 thread
    .venv/bin/python tests/benchmarks/bench_train_step.py --threads 2 --rounds 10
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import lightning.pytorch as pl
    import torch

    from models import batches, evaluation, features, simulator, tft

    torch.set_num_threads(args.threads)
    pl.seed_everything(42, verbose=False)
    exp = evaluation.prepare_experiment(simulator.generate_fleet().records)
    dataset = features.build_training_dataset(exp.train_frame)
    model = tft.build_model(dataset, tft.PRESETS["demo"].model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    feeds: dict[str, Iterator[Any]] = {
        "library dataloader": iter(dataset.to_dataloader(train=True, batch_size=args.batch_size, num_workers=0)),
        "models.batches": iter(batches.WindowBatches(dataset).dataloader(True, args.batch_size)),
    }

    def step(feed: Iterator[Any]) -> tuple[float, float]:
        started = time.perf_counter()
        x, y = next(feed)
        built = time.perf_counter()
        loss = model.loss(model(x)["prediction"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return built - started, time.perf_counter() - built

    for feed in feeds.values():  # warm-up
        step(feed)
    load_before = os.getloadavg()[0]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in feeds}
    for _ in range(args.rounds):
        for name, feed in feeds.items():
            times[name].append(step(feed))
    print(f"demo training step, batch {args.batch_size}, {args.threads} torch thread(s), {args.rounds} rounds "
          f"interleaved; load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    for name, values in times.items():
        batch = sum(b for b, _ in values) / len(values)
        compute = sum(c for _, c in values) / len(values)
        print(f"  {name:<20} batch {batch:6.3f} s   forward+backward+Adam {compute:6.3f} s   "
              f"step {batch + compute:6.3f} s")


if __name__ == "__main__":
    main()
