"""Checks of synthetic images on the input grid, inside the brow-to-jaw slab.

These are the plausibility checks a bundled model must pass on held-out scans (no ground
truth needed): the synthetic CT's head should be where the MR's head is, air should be
air, soft tissue near water, and a skull should appear. Units: HU for CT; the synthetic
MR's arbitrary 0..1000 scale for MR. Levels are RAS mm along S.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from mrct.preprocessing.mask import CT_BODY_HU, head_mask, otsu_threshold
from mrct.volume import Volume

BONE_HU = 300.0


def slab_voxels(volume: Volume, superior_mm: float, inferior_mm: float) -> npt.NDArray[np.bool_]:
    """Voxels whose centre's S coordinate (RAS mm) lies within [inferior, superior]."""
    i, j, k = np.indices(volume.shape, dtype=np.float64)
    a = volume.affine[2]
    s = a[0] * i + a[1] * j + a[2] * k + a[3]
    return np.asarray((s >= inferior_mm) & (s <= superior_mm))


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def mr_head_mask(mr: Volume) -> npt.NDArray[np.bool_]:
    """The MR head on its own grid: above half of Otsu's threshold, largest body, holes filled
    (the rule preprocessing uses on its 4 mm working grid)."""
    array = np.asarray(mr.array, dtype=np.float32)
    return head_mask(array, 0.5 * otsu_threshold(array))


def ct_head_mask(ct: Volume) -> npt.NDArray[np.bool_]:
    return head_mask(np.asarray(ct.array, dtype=np.float32), CT_BODY_HU)


@dataclass(frozen=True)
class SyntheticCTChecks:
    """Inside the slab: Dice of the sCT head (HU > -500) with the MR head mask, the median HU of
    air outside the MR head, the median HU inside it, and the fraction of head voxels above 300 HU."""

    head_dice: float
    air_median_hu: float
    head_median_hu: float
    bone_fraction: float

    def passes(self) -> bool:
        return (
            self.head_dice >= 0.95
            and self.air_median_hu <= -950
            and 0 <= self.head_median_hu <= 100
            and 0.05 <= self.bone_fraction <= 0.35
        )

    def to_dict(self) -> dict[str, float | bool]:
        return {**asdict(self), "passes": self.passes()}


def synthetic_ct_checks(mr: Volume, sct: Volume, superior_mm: float, inferior_mm: float) -> SyntheticCTChecks:
    slab = slab_voxels(mr, superior_mm, inferior_mm)
    head = mr_head_mask(mr) & slab
    hu = np.asarray(sct.array, dtype=np.float32)
    synthetic_head = (hu > CT_BODY_HU) & slab
    air = slab & ~head
    return SyntheticCTChecks(
        head_dice=dice(synthetic_head, head),
        air_median_hu=float(np.median(hu[air])) if air.any() else float("nan"),
        head_median_hu=float(np.median(hu[head])) if head.any() else float("nan"),
        bone_fraction=float((hu[head] > BONE_HU).mean()) if head.any() else float("nan"),
    )


@dataclass(frozen=True)
class SyntheticMRChecks:
    """Inside the slab: Dice of the sMR head (its own half-Otsu threshold) with the CT head mask,
    and how dark the background is (median outside the head over median inside it)."""

    head_dice: float
    background_median: float
    head_median: float

    @property
    def background_ratio(self) -> float:
        return self.background_median / max(self.head_median, 1e-6)

    def passes(self) -> bool:
        return self.head_dice >= 0.95 and self.background_ratio <= 0.05

    def to_dict(self) -> dict[str, float | bool]:
        return {**asdict(self), "background_ratio": self.background_ratio, "passes": self.passes()}


def synthetic_mr_checks(ct: Volume, smr: Volume, superior_mm: float, inferior_mm: float) -> SyntheticMRChecks:
    slab = slab_voxels(ct, superior_mm, inferior_mm)
    head = ct_head_mask(ct) & slab
    values = np.asarray(smr.array, dtype=np.float32)
    inside = values[slab]
    threshold = 0.5 * otsu_threshold(inside) if inside.size else 0.0
    synthetic_head = (values > threshold) & slab
    background = slab & ~head
    return SyntheticMRChecks(
        head_dice=dice(synthetic_head, head),
        background_median=float(np.median(values[background])) if background.any() else float("nan"),
        head_median=float(np.median(values[head])) if head.any() else float("nan"),
    )
