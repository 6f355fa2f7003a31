"""Networks of the 3D CycleGAN: a ResNet generator and a PatchGAN discriminator.

Both are built from MONAI blocks with ``spatial_dims`` driving every layer, so the
same classes give the paper's 3D model and the frame-wise 2D baselines. Tensors
are channel-first: (N, C, D, H, W) in 3D, (N, C, H, W) in 2D; images in [-1, 1].

The configs are torch-free; the network classes are imported lazily (on first
attribute access) so that ``import mrct.networks.config`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mrct.networks.config import DiscriminatorConfig, GeneratorConfig

if TYPE_CHECKING:
    from torch import nn

    from mrct.networks.discriminator import PatchGANDiscriminator
    from mrct.networks.generator import ResnetGenerator

__all__ = [
    "DiscriminatorConfig",
    "GeneratorConfig",
    "PatchGANDiscriminator",
    "ResnetGenerator",
    "build_discriminator",
    "build_generator",
    "count_parameters",
]

_LAZY = {
    "ResnetGenerator": "mrct.networks.generator",
    "PatchGANDiscriminator": "mrct.networks.discriminator",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mrct.networks' has no attribute {name!r}")


def build_generator(cfg: GeneratorConfig, *, checkpointing: bool = False) -> ResnetGenerator:
    """The generator described by ``cfg``, with CycleGAN's N(0, 0.02) initial weights."""
    from mrct.networks.generator import ResnetGenerator

    return ResnetGenerator(cfg, checkpointing=checkpointing)


def build_discriminator(cfg: DiscriminatorConfig) -> PatchGANDiscriminator:
    """The discriminator described by ``cfg``, with CycleGAN's N(0, 0.02) initial weights."""
    from mrct.networks.discriminator import PatchGANDiscriminator

    return PatchGANDiscriminator(cfg)


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
