"""What a training run writes as it goes, besides checkpoints: ``log.jsonl`` (one line per
logged iteration), TensorBoard scalars and preview pictures. Main process only."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import torch

from mrct.errors import DivergedError, WriteError
from mrct.io.atomic import atomic_file
from mrct.training import checkpoint
from mrct.training.config import TrainConfig


class RunLogs:
    """log.jsonl, TensorBoard and previews, written by the main process only."""

    def __init__(self, run_dir: Path, config: TrainConfig, enabled: bool, start: int) -> None:
        self.run_dir, self.config, self.enabled = run_dir, config, enabled
        self.writer: Any = None
        if enabled:
            truncate_log(run_dir / "log.jsonl", start)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start + 1)

    def __enter__(self) -> RunLogs:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    def scalars(
        self, it: int, losses: dict[str, float], lr: float, rate: float, memory: dict[str, float]
    ) -> None:
        if not self.enabled:
            return
        values = {**losses, "lr": lr, "speed/iterations_per_s": rate, **memory}
        for key, value in values.items():
            if math.isfinite(value):
                self.writer.add_scalar(key, value, it)
        # JSON has no NaN: a diverged loss is written as null (json.dumps wrote a bare NaN).
        entry = {"iteration": it, **{k: v if math.isfinite(v) else None for k, v in values.items()}}
        with (self.run_dir / "log.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, allow_nan=False) + "\n")

    def preview(self, it: int, images: dict[str, torch.Tensor]) -> None:
        from mrct.training.previews import write_preview

        picture = write_preview(images, self.run_dir / "previews" / f"iter_{it:07d}.png")
        self.writer.add_image("preview", picture, it, dataformats="HW")


def truncate_log(path: Path, start: int) -> None:
    """On resume, drop entries logged after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    keep = [entry for entry in checkpoint.read_log(path) if entry["iteration"] <= start]
    # Rewritten under a temporary name and renamed: a kill -9 here lost the whole history.
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in keep), encoding="utf-8")


@contextlib.contextmanager
def writing_records(where: Path) -> Generator[None, None, None]:
    """OSError while writing the run's records (a full disk, lost permission) as one WriteError
    naming the file, exit 5; it surfaced as "unexpected PermissionError", exit 70."""
    try:
        yield
    except OSError as err:
        raise WriteError(
            f"cannot write the run's records ({err.strerror or err})", err.filename or where
        ) from err


# Losses that are not finite this many iterations in a row end the run: fp16's loss scaling
# skips an odd overflowing step, but a diverged run only writes NaN weights from then on.
DIVERGED_AFTER = 10


class DivergenceWatch:
    """Counts the iterations since the losses stopped being finite (on any process)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.since: int | None = None

    @property
    def healthy(self) -> bool:
        """No checkpoint is written while not: it would hold NaN weights, and become latest."""
        return self.since is None

    def update(self, iteration: int, finite: bool) -> None:
        self.since = None if finite else (self.since or iteration)
        if self.since is not None and iteration - self.since + 1 >= DIVERGED_AFTER:
            raise DivergedError(
                f"the losses have not been finite since iteration {self.since} (the run diverged; "
                "no checkpoint was saved since); lower optim.lr and start again with --overwrite",
                self.run_dir,
            )
