"""The preprocessing configuration: model grid, intensity maps, slab margin.

Loaded from the ``preprocessing:`` section of a YAML file in ``configs/`` with
:func:`mrct.config.load_yaml`; all fields have the paper's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MAX_GRID_SIDE = 1024
MAX_GRID_VOXELS = 64 * 2**20  # 256 MB per float32 volume


@dataclass(frozen=True)
class GridConfig:
    """The model grid: ``depth`` slices along S spanning the slab, and a fixed
    ``height`` x ``width`` in-plane field of view of ``inplane_mm`` per voxel.

    The default 256 x 256 at 1.0 mm covers 256 mm, more than the longest adult
    head (about 210 mm front to back), so heads keep their real size and
    proportions and nothing is cut. Depth is 30 slices whatever the slab height
    (100-125 mm in adults, so about 3.3-4.2 mm per slice).
    """

    depth: int = 30
    height: int = 256
    width: int = 256
    inplane_mm: float = 1.0

    def __post_init__(self) -> None:
        if min(self.depth, self.height, self.width) < 1:
            raise ValueError(f"grid sizes must be positive, got {self.shape}")
        # Far above any head model (the paper's 30 x 256 x 256 is 2 M voxels): a typo, not a grid.
        if max(self.shape) > MAX_GRID_SIDE or self.depth * self.height * self.width > MAX_GRID_VOXELS:
            raise ValueError(
                f"grid {self.depth} x {self.height} x {self.width} is too large (at most "
                f"{MAX_GRID_SIDE} per side and {MAX_GRID_VOXELS // 2**20} M voxels)"
            )
        if not 0.05 <= self.inplane_mm <= 20:
            raise ValueError(f"inplane_mm must be within 0.05..20 mm, got {self.inplane_mm}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.depth, self.height, self.width)


@dataclass(frozen=True)
class IntensityConfig:
    """``ct_map``: ``linear`` (the paper) or ``soft_tissue``; MR: percentiles in the head."""

    ct_map: Literal["linear", "soft_tissue"] = "linear"
    mr_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        lo, hi = self.mr_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {self.mr_percentiles}")


@dataclass(frozen=True)
class PreprocessConfig:
    """The deterministic chain's settings.

    Attributes:
        grid: the model grid.
        intensity: the intensity maps.
        margin_mm: added above the brow and below the jaw (0 = the paper's slab).
        mask_background: set voxels outside the head mask to -1 on the model grid,
            so the model never learns couches, head rests or coil padding.
        anti_alias: smooth before down-sampling (a Gaussian with sigma = (step/spacing - 1) / 2
            voxels along each down-sampled axis), so thin structures do not alias.
    """

    grid: GridConfig = field(default_factory=GridConfig)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    margin_mm: float = 0.0
    mask_background: bool = True
    anti_alias: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.margin_mm <= 100:
            raise ValueError(f"margin_mm must be within 0..100 mm, got {self.margin_mm}")
