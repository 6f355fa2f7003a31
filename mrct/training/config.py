"""The training configuration: networks, losses, optimiser, data, runtime and logging.

Loaded from ``configs/*.yaml`` with :func:`load_train_config`. Plain data: variants
(paper size, CPU size, 2D baselines) are config values, never subclasses. This module
imports no torch, so the CLI can validate a config before paying for torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mrct.config import load_yaml, seed_problem
from mrct.networks.config import DiscriminatorConfig, GeneratorConfig
from mrct.preprocessing.augment import AugmentConfig
from mrct.preprocessing.config import PreprocessConfig


@dataclass(frozen=True)
class ModelConfig:
    """Both generators share ``generator``; both discriminators share ``discriminator``."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)

    def __post_init__(self) -> None:
        if self.generator.spatial_dims != self.discriminator.spatial_dims:
            raise ValueError("generator and discriminator must have the same spatial_dims")
        # Prepared MR and CT volumes have one channel; other counts failed at the first step.
        channels = (self.generator.in_channels, self.generator.out_channels, self.discriminator.in_channels)
        if channels != (1, 1, 1):
            raise ValueError(
                "generator.in_channels, generator.out_channels and discriminator.in_channels must be 1 "
                f"(prepared MR and CT volumes have one channel), got {', '.join(map(str, channels))}"
            )


@dataclass(frozen=True)
class LossConfig:
    """The objective of paper eq. 1, plus CycleGAN's identity term and the paper's eq. 2.

    Attributes:
        adversarial: ``least_squares`` (LSGAN, CycleGAN's practice) or ``log_likelihood``
            (the cross-entropy form written in the paper).
        cycle_weight: gamma, the weight of the L1 cycle loss.
        identity_weight: weight of ||F(y) - y||_1 relative to gamma (CycleGAN's
            lambda_identity; 0 disables it, 0.5 is CycleGAN's usual value).
        const_weight: weight of the slice-continuity penalty of eq. 2 (0 disables it), a sum over
            slices and voxels as the paper writes it, so a weight suits one grid size.
        pool_size: images kept in each history pool for the discriminators (0 disables it).
    """

    adversarial: Literal["least_squares", "log_likelihood"] = "least_squares"
    cycle_weight: float = 10.0
    identity_weight: float = 0.0
    const_weight: float = 0.0
    pool_size: int = 50

    def __post_init__(self) -> None:
        for key in ("cycle_weight", "identity_weight", "const_weight"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):  # NaN fails every comparison
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        if self.pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {self.pool_size}")


@dataclass(frozen=True)
class OptimConfig:
    """Adam for both generators and both discriminators, then a linear decay to zero.

    The learning rate is ``lr`` for the first ``iterations - decay_iterations`` iterations,
    then falls linearly to 0 at ``iterations`` (CycleGAN's n_epochs + n_epochs_decay,
    counted in iterations because unpaired data has no natural epoch).
    """

    iterations: int = 200_000
    decay_iterations: int = 100_000
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0 <= self.decay_iterations <= self.iterations:
            raise ValueError(
                f"decay_iterations must be within 0..iterations ({self.iterations}), "
                f"got {self.decay_iterations}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"need beta1 and beta2 in [0, 1), got {self.beta1!r}, {self.beta2!r}")


@dataclass(frozen=True)
class DataConfig:
    """How unpaired samples are drawn from a prepared set (``mrct prepare``).

    Attributes:
        batch_size: volumes per domain per iteration and per process (the paper: 1).
        workers: data-loader processes (0 loads in the training process).
        patch: an optional random crop (D, H, W) of each model-grid volume, so a small
            machine can train on part of the grid; the generator is fully convolutional
            and translates the whole grid at inference. ``null`` uses the whole volume.
        augment: the training augmentations (random affine, mild elastic, MR gamma/bias).
        slices: 2D baselines only: ``volume`` (3D model), ``random`` (slices drawn at random
            across volumes) or ``sequential`` (``batch_size`` consecutive slices of one volume).
    """

    batch_size: int = 1
    workers: int = 2
    patch: tuple[int, int, int] | None = None
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(enabled=False))
    slices: Literal["volume", "random", "sequential"] = "volume"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.patch is not None and min(self.patch) < 1:
            raise ValueError(f"patch sizes must be positive, got {self.patch}")


@dataclass(frozen=True)
class RuntimeConfig:
    """Execution choices that do not change the model's maths (beyond float rounding).

    Attributes:
        amp: autocast precision: ``none`` (fp32), ``bf16`` (CUDA or a CPU with bf16) or ``fp16``
            (CUDA only, with a gradient scaler).
        gradient_checkpointing: recompute the generators' residual blocks in the backward
            pass (less memory, about 30% more time).
        channels_last: the ``channels_last_3d`` memory layout (faster convolutions on GPUs).
        compile: ``torch.compile`` the networks (pays off on long GPU runs).
    """

    amp: Literal["none", "bf16", "fp16"] = "none"
    gradient_checkpointing: bool = False
    channels_last: bool = False
    compile: bool = False


@dataclass(frozen=True)
class LoggingConfig:
    """Intervals in iterations; ``keep_checkpoints`` keeps the newest N (plus the final one)."""

    log_every: int = 10
    checkpoint_every: int = 1000
    preview_every: int = 500
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        for key in ("log_every", "checkpoint_every", "preview_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides its data and output folders."""

    name: str = "mrct"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if problem := seed_problem(self.seed):
            raise ValueError(f"seed {problem}")
        two_d = self.model.generator.spatial_dims == 2
        if two_d and self.data.slices == "volume":
            raise ValueError("a 2D model needs data.slices: random or sequential")
        if not two_d and self.data.slices != "volume":
            raise ValueError("a 3D model needs data.slices: volume")
        if self.loss.const_weight > 0 and two_d and self.data.slices != "sequential":
            raise ValueError("loss.const_weight needs consecutive slices (data.slices: sequential)")


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a training config; an unknown or invalid key raises ConfigError naming it."""
    return load_yaml(TrainConfig, path)
