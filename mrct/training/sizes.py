"""What a training config asks of the machine and of its data, checked before a run starts:
networks that fit in memory, and a patch the prepared grid can give and the networks can take."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import torch

from mrct.cyclegan import Discriminators, Generators
from mrct.errors import ConfigValueError, first_line
from mrct.training.config import TrainConfig

if TYPE_CHECKING:
    from mrct.networks import PatchGANDiscriminator, ResnetGenerator


def build_networks(config: TrainConfig, device: torch.device) -> tuple[Generators, Discriminators]:
    """Both generators and both discriminators on ``device``; a config whose networks cannot be
    allocated (``ngf: 100000``) is a config error naming what to lower, not an allocator's crash."""
    try:
        gens = Generators(config.model, checkpointing=config.runtime.gradient_checkpointing).to(device)
        discs = Discriminators(config.model).to(device)
    except (RuntimeError, MemoryError) as err:  # torch's allocator: "not enough memory", CUDA OOM
        if not isinstance(err, MemoryError) and "memory" not in str(err).lower():
            raise
        asked = re.search(r"allocate (\d+) bytes", str(err))
        why = f"one block of {int(asked.group(1)) / 2**30:.1f} GiB" if asked else first_line(err)
        raise ConfigValueError(
            f"model: the networks do not fit in {device.type.upper()} memory ({why}); "
            "lower model.generator.ngf or model.discriminator.ndf"
        ) from None
    return gens, discs


def check_input_size(
    config: TrainConfig,
    shape: tuple[int, int, int],
    generator: ResnetGenerator | None = None,
    discriminator: PatchGANDiscriminator | None = None,
) -> None:
    """Refuse, before any worker starts, a patch the prepared grid ``shape`` (D, H, W) cannot
    give or the networks cannot take (too small for the discriminator's strides or the
    generator's bottleneck). The networks are built from the config when not given, so a
    script can check a config before it spends time on data (pipelines/reproduce_mnist.py)."""
    if generator is None or discriminator is None:
        from mrct.networks import build_discriminator, build_generator

        with torch.random.fork_rng(devices=[]):  # their initial weights draw from torch's global RNG
            if generator is None:
                generator = build_generator(config.model.generator)
            if discriminator is None:
                discriminator = build_discriminator(config.model.discriminator)
    patch = config.data.patch
    if patch is not None and any(p > s for p, s in zip(patch, shape, strict=True)):
        raise ConfigValueError(f"data.patch {list(patch)} is larger than the prepared grid {list(shape)}")
    size = tuple(patch or shape)[3 - config.model.generator.spatial_dims :]
    what = f"data.patch {list(patch)}" if patch is not None else f"the prepared grid {list(shape)}"
    logits = discriminator.output_shape(size)
    if min(logits) < 1:
        raise ConfigValueError(
            f"{what} is too small for the discriminator (n_layers "
            f"{config.model.discriminator.n_layers}): its patch grid would be {logits}"
        )
    if math.prod(generator.bottleneck_shape(size)) < 2:
        raise ConfigValueError(f"{what} is too small for the generator's two downsampling steps")
