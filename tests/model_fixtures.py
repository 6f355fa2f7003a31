"""A tiny, untrained model package for tests that run the whole translation path quickly."""

from __future__ import annotations

from pathlib import Path

import torch

from mrct.models import write_package
from mrct.networks import build_generator
from mrct.networks.config import GeneratorConfig
from mrct.preprocessing.config import GridConfig, PreprocessConfig

TINY_GENERATOR = GeneratorConfig(ngf=2, n_residual_blocks=1)
TINY_GRID = GridConfig(depth=8, height=48, width=48, inplane_mm=4.0)


def write_tiny_model(out: Path, name: str = "tiny") -> Path:
    """Both directions, randomly initialised (seeded), on an 8 x 48 x 48 grid of 4 mm."""
    generators = {}
    for seed, direction in enumerate(("mr_to_ct", "ct_to_mr")):
        torch.manual_seed(seed)
        generators[direction] = build_generator(TINY_GENERATOR).state_dict()
    return write_package(
        out,
        name=name,
        generators=generators,
        generator_config=TINY_GENERATOR,
        preprocessing=PreprocessConfig(grid=TINY_GRID),
        intensity={"ct": {"map": "linear", "hu_range": [-1024, 3071]}},
        training={},
        metrics={},
        license="test",
        description="untrained test model",
    )
