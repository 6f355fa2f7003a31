"""Multi-process training through ``torchrun`` (DistributedDataParallel).

``torchrun`` describes the process group in environment variables; they are read once,
at the edge (:func:`DistContext.from_environment`, called by :func:`mrct.api.train` with
``os.environ``), never deep inside the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mrct.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group: ``world_size`` 1 means a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> DistContext:
        try:
            return cls(
                int(environ.get("RANK", 0)),
                int(environ.get("WORLD_SIZE", 1)),
                int(environ.get("LOCAL_RANK", 0)),
            )
        except ValueError as err:
            raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK from torchrun are not integers ({err})") from err

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device_type: str) -> None:
        """Join the process group: NCCL between GPUs, gloo on CPUs (what CI tests)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if device_type == "cuda":  # NCCL's collectives and barrier run on the current device
            import torch

            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")

    def stop(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (so all stop at the same iteration)."""
        return self.any_each(flag)[0]

    def any_each(self, *flags: bool) -> list[bool]:
        """For each flag, whether it is true on any process: one all-reduce for them all."""
        return [v > 0 for v in self.max_each(*(int(f) for f in flags))]

    def max_each(self, *values: int) -> list[int]:
        """For each value, its largest over the processes: one all-reduce for them all. For small
        integers (flags, signal numbers): they travel as float32, exact up to 2**24."""
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as dist

        # NCCL reduces CUDA tensors only (a CPU tensor raised on the first call under torchrun).
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([float(v) for v in values], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [round(v) for v in t.tolist()]

    def wrap(self, module: Any, device: Any) -> Any:
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
