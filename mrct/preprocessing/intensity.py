"""Intensity maps between scanner units and the model's [-1, 1].

Every map is a monotone piecewise-linear function given by knots, so the same
record undoes it exactly (``np.interp`` with the knots swapped) and it is
plain data in JSON. Values outside the first and last knot are clipped.

- CT ``linear``: HU in [-1024, 3071] -> [-1, 1], as in the paper.
- CT ``soft_tissue``: the same end points, but -150..250 HU (fat, muscle,
  brain, blood) spans half of the output range instead of a tenth, at the cost
  of resolution in air and dense bone.
- MR ``percentile``: robust percentiles of the intensities inside the head
  mask map to -1 and 1; the statistics are kept in the map.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

CT_RANGE_HU = (-1024.0, 3071.0)
# Knots of the soft-tissue map (HU -> model units).
_SOFT_TISSUE_KNOTS = ((-1024.0, -150.0, 250.0, 3071.0), (-1.0, -0.5, 0.5, 1.0))

CT_MAPS = ("linear", "soft_tissue")


@dataclass(frozen=True)
class IntensityMap:
    """A monotone piecewise-linear map from scanner units to model units.

    Attributes:
        kind: ``ct_linear``, ``ct_soft_tissue`` or ``mr_percentile``.
        units: the input unit, ``HU`` or ``MR (scanner units)``.
        source: knots in input units, strictly increasing.
        target: knots in model units, strictly increasing, from -1 to 1.
        stats: the statistics the knots were computed from (MR only).
    """

    kind: str
    units: str
    source: tuple[float, ...]
    target: tuple[float, ...]
    stats: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        src, tgt = np.asarray(self.source), np.asarray(self.target)
        if src.shape != tgt.shape or src.size < 2:
            raise ValueError("an intensity map needs matching source and target knots (at least 2)")
        if np.any(np.diff(src) <= 0) or np.any(np.diff(tgt) <= 0):
            raise ValueError(f"intensity map knots must increase strictly: {self.source} -> {self.target}")
        object.__setattr__(self, "source", tuple(float(v) for v in self.source))
        object.__setattr__(self, "target", tuple(float(v) for v in self.target))
        object.__setattr__(self, "stats", MappingProxyType({k: float(v) for k, v in self.stats.items()}))

    def forward(self, values: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Scanner units -> model units (clipped to the knot range)."""
        return np.interp(np.asarray(values, dtype=np.float64), self.source, self.target).astype(np.float32)

    def inverse(self, values: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Model units -> scanner units (clipped to the knot range)."""
        return np.interp(np.asarray(values, dtype=np.float64), self.target, self.source).astype(np.float32)

    @property
    def background(self) -> float:
        """The input value that maps to -1 (air for CT, the low percentile for MR)."""
        return self.source[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "units": self.units,
            "source": list(self.source),
            "target": list(self.target),
            "stats": dict(self.stats),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntensityMap:
        return cls(
            kind=str(data["kind"]),
            units=str(data["units"]),
            source=tuple(data["source"]),
            target=tuple(data["target"]),
            stats=dict(data.get("stats", {})),
        )


def ct_map(name: str = "linear") -> IntensityMap:
    """The CT map called ``name`` (``linear`` or ``soft_tissue``)."""
    if name == "linear":
        return IntensityMap("ct_linear", "HU", CT_RANGE_HU, (-1.0, 1.0))
    if name == "soft_tissue":
        return IntensityMap("ct_soft_tissue", "HU", *_SOFT_TISSUE_KNOTS)
    raise ValueError(f"unknown CT intensity map {name!r}; choose one of {', '.join(CT_MAPS)}")


def mr_map(values_in_head: npt.ArrayLike, percentiles: tuple[float, float] = (0.5, 99.5)) -> IntensityMap:
    """Map the given percentiles of the head's intensities to -1 and 1.

    ``values_in_head`` are the MR intensities inside the head mask (any shape).
    """
    v = np.asarray(values_in_head, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 100:
        raise ValueError("too few head voxels to compute MR intensity statistics")
    lo, hi = (float(x) for x in np.percentile(v, percentiles))
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        raise ValueError(f"the head has a constant intensity ({lo:g}); it cannot be normalised")
    stats = {
        f"p{percentiles[0]:g}": lo,
        f"p{percentiles[1]:g}": hi,
        "median": float(np.median(v)),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "voxels": float(v.size),
    }
    return IntensityMap("mr_percentile", "MR (scanner units)", (lo, hi), (-1.0, 1.0), stats)
