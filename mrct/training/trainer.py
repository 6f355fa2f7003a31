"""The trainer: optimisers, learning-rate decay, AMP, checkpoints, logging and DDP.

The maths of one iteration lives in :mod:`mrct.cyclegan`; this module only runs it.
A run folder holds ``config.json`` (the frozen config it was started with), ``data.json``,
``log.jsonl`` (every logged iteration's losses), ``tensorboard/``, ``previews/`` and
``checkpoints/``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import signal
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mrct import __version__
from mrct.config import to_dict
from mrct.cyclegan import (
    ImagePool,
    discriminator_losses,
    generator_losses,
    set_requires_grad,
    unwrap,
)
from mrct.errors import ConfigValueError, ReadError
from mrct.training import checkpoint
from mrct.training.config import TrainConfig
from mrct.training.data import PreparedSet, UnpairedBatches
from mrct.training.distributed import DistContext
from mrct.training.logs import DivergenceWatch, RunLogs, writing_records
from mrct.training.signals import StopFlag, worker_init
from mrct.training.sizes import build_networks, check_input_size

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def linear_decay(config: TrainConfig) -> Any:
    """lr factor at iteration i: 1, then linearly down to 0 over the last ``decay_iterations``."""
    total, decay = config.optim.iterations, config.optim.decay_iterations
    start = total - decay

    def factor(i: int) -> float:
        return 1.0 - max(0, i + 1 - start) / (decay + 1)

    return factor


def _seed(*values: int) -> int:
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    checkpoint: Path | None
    interrupted: bool = False
    stop_signal: int = signal.SIGINT  # what interrupted it (SIGTERM from kill, timeout, a scheduler)
    main: bool = True  # the main process (rank 0) of a torchrun group reports
    losses: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Trains both generators and both discriminators of one run on one process."""

    def __init__(
        self,
        config: TrainConfig,
        data: PreparedSet | None,
        run_dir: Path,
        device: torch.device,
        dist: DistContext,
    ) -> None:
        """``data`` may be None for a trainer fed through :meth:`step` alone (benchmarks)."""
        self.config, self.data, self.run_dir, self.device, self.dist = config, data, run_dir, device, dist
        runtime = config.runtime
        if runtime.amp == "fp16" and device.type != "cuda":
            raise ConfigValueError("runtime.amp: fp16 needs a CUDA device (use bf16 or none on a CPU)")
        torch.manual_seed(config.seed)  # the same initial weights on every process
        gens, discs = build_networks(config, device)
        self._memory_format = torch.preserve_format
        if runtime.channels_last:
            three_d = config.model.generator.spatial_dims == 3
            self._memory_format = torch.channels_last_3d if three_d else torch.channels_last
            gens = gens.to(memory_format=self._memory_format)  # type: ignore[call-overload]
            discs = discs.to(memory_format=self._memory_format)  # type: ignore[call-overload]
        if data is not None:
            grid = data.preprocessing["grid"]
            shape = (int(grid["depth"]), int(grid["height"]), int(grid["width"]))
            check_input_size(config, shape, gens.mr_to_ct, discs.d_ct)
        self.generators: Any = dist.wrap(gens, device)
        self.discriminators: Any = dist.wrap(discs, device)
        if runtime.compile:
            self.generators = torch.compile(self.generators)
            self.discriminators = torch.compile(self.discriminators)
        o = config.optim
        self.opt_g = torch.optim.Adam(gens.parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
        self.opt_d = torch.optim.Adam(discs.parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, linear_decay(config))
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, linear_decay(config))
        self.scaler = torch.amp.GradScaler(device.type, enabled=runtime.amp == "fp16")
        size = config.loss.pool_size
        self.pools = {
            d: ImagePool(size, _seed(config.seed, dist.rank, k)) for k, d in enumerate(("ct", "mr"))
        }
        self.iteration = 0
        self.last_images: dict[str, torch.Tensor] = {}
        self.last_lr = config.optim.lr  # the learning rate the latest step used (logged)

    # ------------------------------------------------------------------ one iteration

    def _autocast(self) -> Any:
        amp = self.config.runtime.amp
        if amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def step(self, mr: torch.Tensor, ct: torch.Tensor) -> dict[str, float]:
        """One iteration: the generators' step, then the discriminators' step (CycleGAN's order)."""
        cfg = self.config.loss
        mr = mr.to(self.device, non_blocking=True).contiguous(memory_format=self._memory_format)
        ct = ct.to(self.device, non_blocking=True).contiguous(memory_format=self._memory_format)
        discriminators = unwrap(self.discriminators)
        # Generators: minimise eq. 1 with the discriminators held fixed.
        set_requires_grad(discriminators, False)
        with self._autocast():
            images = self.generators(mr, ct, identity=cfg.identity_weight > 0)
            g = generator_losses(images, mr, ct, discriminators, cfg)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(g.total).backward()
        self.scaler.step(self.opt_g)
        # Discriminators: real against translations drawn from the history pools.
        set_requires_grad(discriminators, True)
        fake_ct = self.pools["ct"].query(images["fake_ct"].detach())
        fake_mr = self.pools["mr"].query(images["fake_mr"].detach())
        with self._autocast():
            d = discriminator_losses(self.discriminators(ct, fake_ct, mr, fake_mr), cfg)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(d.total).backward()
        self.scaler.step(self.opt_d)
        self.scaler.update()
        self.last_lr = self._lr()  # the rate this step used; the schedulers now move on
        self.sched_g.step()
        self.sched_d.step()
        self.iteration += 1
        self.last_images = {"mr": mr, "ct": ct, **{k: v.detach() for k, v in images.items()}}
        return {**g.scalars(), **d.scalars()}

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path | None:
        """Write a checkpoint of the current iteration (every process takes part)."""
        tmp = self.run_dir / "checkpoints" / f".tmp-{checkpoint.checkpoint_name(self.iteration)}"
        if self.dist.is_main:
            checkpoint.begin(self.run_dir, self.iteration)
        self.dist.barrier()
        checkpoint.write_rank(tmp, self.dist.rank, checkpoint.rank_state(self.pools, self.device))
        self.dist.barrier()
        final = None
        if self.dist.is_main:
            gens, discs = unwrap(self.generators), unwrap(self.discriminators)
            networks = {f"generators.{k}": v for k, v in gens.state_dict().items()}
            networks.update({f"discriminators.{k}": v for k, v in discs.state_dict().items()})
            g_tensors, g_plain = checkpoint.flatten_optimizer(self.opt_g.state_dict(), "opt_g")
            d_tensors, d_plain = checkpoint.flatten_optimizer(self.opt_d.state_dict(), "opt_d")
            state = {
                "format": "mrct-checkpoint",
                "mrct_version": __version__,
                "iteration": self.iteration,
                "world_size": self.dist.world_size,
                "config": to_dict(self.config),
                "optimizers": {"opt_g": g_plain, "opt_d": d_plain},
                "schedulers": {
                    "sched_g": _scheduler_state(self.sched_g),
                    "sched_d": _scheduler_state(self.sched_d),
                },
                "scaler": self.scaler.state_dict(),
            }
            keep = self.config.logging.keep_checkpoints
            final = checkpoint.finish(tmp, networks, {**g_tensors, **d_tensors}, state, keep)
        self.dist.barrier()
        return final

    def restore(self, path: Path) -> None:
        networks, optim, state, rank = checkpoint.load(path, self.dist.rank)
        try:
            self._restore(networks, optim, state, rank)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            # A checkpoint edited by hand, or from another architecture: say so, not "unexpected".
            raise ReadError(f"not a readable checkpoint ({type(err).__name__}: {err})", path) from err

    def _restore(
        self,
        networks: dict[str, torch.Tensor],
        optim: dict[str, torch.Tensor],
        state: dict[str, Any],
        rank: dict[str, torch.Tensor],
    ) -> None:
        if state.get("world_size", 1) != self.dist.world_size and self.dist.is_main:
            log.warning(
                "resuming with %d process(es) a %d-process run: not exact (each process draws "
                "its own samples; processes the earlier run lacked start with empty image pools)",
                self.dist.world_size,
                state.get("world_size", 1),
            )
        unwrap(self.generators).load_state_dict(_strip(networks, "generators."))
        unwrap(self.discriminators).load_state_dict(_strip(networks, "discriminators."))
        plain = state["optimizers"]
        self.opt_g.load_state_dict(checkpoint.unflatten_optimizer(optim, plain["opt_g"], "opt_g"))
        self.opt_d.load_state_dict(checkpoint.unflatten_optimizer(optim, plain["opt_d"], "opt_d"))
        self.sched_g.load_state_dict(state["schedulers"]["sched_g"])
        self.sched_d.load_state_dict(state["schedulers"]["sched_d"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if rank:  # empty for a process the saving run did not have
            checkpoint.restore_rank_state(rank, self.pools, self.device)
        self.iteration = int(state["iteration"])

    # ------------------------------------------------------------------ the loop

    def batches(self, end: int) -> Generator[dict[str, torch.Tensor], None, None]:
        """Iteration ``i``'s batch for i in [self.iteration, end), prefetched by workers."""
        from torch.utils.data import DataLoader

        if self.data is None:
            raise ValueError("this trainer was made without a prepared set; feed step() instead")
        dataset = UnpairedBatches(self.data, self.config.data, self.config.seed, self.dist.rank)
        workers = self.config.data.workers
        loader: Any = DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=None,
            sampler=range(self.iteration, end),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init if workers else None,
            prefetch_factor=2 if workers else None,
            # Batches depend on (seed, iteration) only. A private generator keeps iter(loader)
            # from drawing its base seed off the global RNG, which dropout uses: a resumed run
            # calls iter() once more, and its dropout masks shifted (resuming was not exact).
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        # Workers start when the loader is iterated. Ctrl-C and SIGTERM (``timeout`` and batch
        # schedulers signal the whole process group) must reach the main process only, whose
        # StopFlag saves a checkpoint: a worker killed by them makes the loader raise instead.
        # Blocked while the workers fork, so none dies before worker_init ignores them.
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals) if workers else None
        try:
            iterator = iter(loader)
        finally:
            if old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        try:
            yield from iterator
        finally:
            # After an error (in a worker or in the loop) the workers must be told to stop now:
            # left to the garbage collector, they wait for work while the exiting main process
            # waits for them, and mrct hangs after printing its error.
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def train(self, end: int, progress: bool = True) -> TrainResult:
        """Train until iteration ``end``; Ctrl-C (SIGINT) or SIGTERM saves a checkpoint and stops."""
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        with writing_records(self.run_dir / "log.jsonl"):  # truncated on resume, TensorBoard opened
            logs = RunLogs(self.run_dir, self.config, self.dist.is_main, self.iteration)
        result = TrainResult(
            self.run_dir, self.iteration, checkpoint.latest(self.run_dir), main=self.dist.is_main
        )
        every = self.config.logging
        stop = StopFlag()
        bar = tqdm(
            total=end,
            initial=self.iteration,
            disable=not (progress and self.dist.is_main),
            unit="it",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        tick, tick_iteration = time.perf_counter(), self.iteration
        health = DivergenceWatch(self.run_dir)
        # Log lines (a Ctrl-C's "stopping: saving a checkpoint") above the bar, not glued to it.
        redirect = contextlib.nullcontext() if bar.disable else logging_redirect_tqdm()
        with stop, bar, redirect, logs, contextlib.closing(self.batches(end)) as batches:
            for batch in batches:
                if self.dist.any("error" in batch):  # see UnpairedBatches.__getitem__; all stop
                    why = str(batch.get("error", "another process could not read its batch (see its error)"))
                    raise ReadError(why, str(batch.get("path") or self.run_dir))
                losses = self.step(batch["mr"], batch["ct"])
                result.losses.append({"iteration": self.iteration, **losses})
                not_finite = not all(math.isfinite(v) for v in losses.values())
                # The stop signal's number, so that every process (rank 0 reports) exits with the
                # code of a signal that only another process received (143 for SIGTERM, not 130).
                worst, stop_signal = self.dist.max_each(int(not_finite), stop.signum if stop.requested else 0)
                not_finite, interrupted = worst > 0, stop_signal > 0
                health.update(self.iteration, not not_finite)
                bar.update()
                if self.iteration % every.log_every == 0 or self.iteration == end:
                    now = time.perf_counter()
                    rate = (self.iteration - tick_iteration) / max(now - tick, 1e-9)
                    tick, tick_iteration = now, self.iteration
                    with writing_records(self.run_dir / "log.jsonl"):
                        logs.scalars(self.iteration, losses, self.last_lr, rate, self._memory())
                    bar.set_postfix_str(_short(losses), refresh=False)
                if self.dist.is_main and self.iteration % every.preview_every == 0:
                    with writing_records(self.run_dir / "previews"):
                        logs.preview(self.iteration, self.last_images)
                due = self.iteration % every.checkpoint_every == 0 or self.iteration == end or interrupted
                if due and health.healthy:
                    with writing_records(self.run_dir / "checkpoints"):
                        result.checkpoint = self.save()
                if interrupted:
                    result.interrupted, result.stop_signal = True, stop_signal
                    break
        if not health.healthy:  # fewer than DIVERGED_AFTER at the end: stopped, but say so
            log.warning(
                "%s: the losses were not finite from iteration %d on; no checkpoint was written since",
                self.run_dir,
                health.since,
            )
        result.iteration = self.iteration
        return result

    def _lr(self) -> float:
        return float(self.opt_g.param_groups[0]["lr"])

    def _memory(self) -> dict[str, float]:
        if self.device.type == "cuda":
            return {"memory/cuda_max_allocated_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}
        return {"memory/max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    """A LambdaLR's state as JSON (its function is rebuilt from the config, not saved)."""
    return {**scheduler.state_dict(), "lr_lambdas": [None] * len(scheduler.lr_lambdas)}


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _short(losses: dict[str, float]) -> str:
    g = losses["loss/generator/total"]
    d = losses["loss/discriminator/d_ct"] + losses["loss/discriminator/d_mr"]
    return f"G {g:.3f} D {d:.3f}"
