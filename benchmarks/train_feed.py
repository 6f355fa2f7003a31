"""Where a training run's time goes: the data loader alone, ``Trainer.step`` alone, and both.

    python benchmarks/train_feed.py --config configs/head_medium_full.yaml --data PREPARED \\
        [--device auto|cpu|cuda] [--iterations 20] [--workers N]

Prints iterations per second of (a) the data loader with the config's workers and no model,
(b) ``Trainer.step`` on one batch already on the device (no loader), (c) the two together
(the loop of ``Trainer.train`` without its logs and checkpoints). The slower of (a) and (b)
bounds (c); when (c) is far below both, the two compete for the CPU. One warm-up batch or
step is left out of each figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mrct.script_main import non_negative_int, positive_int, run_main


def _rate(items: Iterable[Any], step: Callable[[Any], object], n: int, sync: Callable[[], None]) -> float:
    """Iterations per second over ``n`` items after one warm-up."""
    iterator = iter(items)
    step(next(iterator))
    sync()
    start = time.perf_counter()
    for _ in range(n):
        step(next(iterator))
    sync()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a set built by mrct prepare")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=positive_int, default=20)
    parser.add_argument(
        "--workers", type=non_negative_int, default=None, help="data-loader workers (default: the config's)"
    )
    args = parser.parse_args()

    import torch

    from mrct.training.config import load_train_config
    from mrct.training.data import PreparedSet
    from mrct.training.distributed import DistContext
    from mrct.training.run import resolve_device
    from mrct.training.trainer import Trainer

    config = load_train_config(args.config)
    data = PreparedSet.open(args.data)
    if args.workers is not None:
        config = replace(config, data=replace(config.data, workers=args.workers))
    device = torch.device(str(resolve_device(args.device, DistContext())))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    n = args.iterations
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, data, Path(run_dir), device, DistContext())
        loader = _rate(trainer.batches(n + 1), lambda batch: None, n, sync)
        batch = next(iter(trainer.batches(1)))
        step = _rate(iter(lambda: batch, None), lambda b: trainer.step(b["mr"], b["ct"]), n, sync)
        both = _rate(
            trainer.batches(trainer.iteration + n + 1), lambda b: trainer.step(b["mr"], b["ct"]), n, sync
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{config.name} on {device} ({name}), {config.data.workers} workers, "
        f"patch {config.data.patch or 'whole grid'}, amp {config.runtime.amp}: "
        f"loader {loader:.2f} it/s, step {step:.2f} it/s, both {both:.2f} it/s"
    )


if __name__ == "__main__":
    run_main(main)
