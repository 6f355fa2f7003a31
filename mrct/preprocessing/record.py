"""What preprocessing did to one scan, as plain data: enough to undo it.

Like nnU-Net's ``properties`` dict, but typed and frozen. It is stored as JSON
next to every prepared volume and inside translation reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from mrct.jsontext import parse_json
from mrct.preprocessing.crop import SlabBounds
from mrct.preprocessing.intensity import IntensityMap

RECORD_VERSION = 1


def _matrix(a: npt.ArrayLike) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(a, dtype=np.float64))


@dataclass(frozen=True)
class PreprocessRecord:
    """Each step's result. Affines map voxel indices to RAS mm.

    Attributes:
        input_shape, input_affine, input_orientation: the scan as read.
        canonical_affine, canonical_shape: after reorientation to RAS (no resampling).
        modality: ``CT`` or ``MR``, the intensity map's domain.
        mask: the head mask's threshold (scanner units), volume (mL) and working voxel (mm).
        slab: the brow-to-jaw levels used, margin included, and where they came from.
        grid_shape, grid_affine: the model grid, array ``(D, H, W)``.
        intensity: the map from scanner units to [-1, 1], with its statistics.
        localisation: the localiser's evidence when the slab was found automatically.
        config: the :class:`~mrct.preprocessing.config.PreprocessConfig` as a dict.
    """

    input_shape: tuple[int, int, int]
    input_affine: tuple[tuple[float, ...], ...]
    input_orientation: str
    canonical_shape: tuple[int, int, int]
    canonical_affine: tuple[tuple[float, ...], ...]
    modality: str
    mask: dict[str, float]
    slab: SlabBounds
    margin_mm: float
    grid_shape: tuple[int, int, int]
    grid_affine: tuple[tuple[float, ...], ...]
    intensity: IntensityMap
    localisation: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    version: int = RECORD_VERSION

    @property
    def input_affine_array(self) -> npt.NDArray[np.float64]:
        return np.array(self.input_affine, dtype=np.float64)

    @property
    def grid_affine_array(self) -> npt.NDArray[np.float64]:
        return np.array(self.grid_affine, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "input": {
                "shape": list(self.input_shape),
                "affine": [list(r) for r in self.input_affine],
                "orientation": self.input_orientation,
            },
            "reorient": {
                "shape": list(self.canonical_shape),
                "affine": [list(r) for r in self.canonical_affine],
            },
            "modality": self.modality,
            "mask": dict(self.mask),
            "slab": {
                "superior_mm": self.slab.superior_mm,
                "inferior_mm": self.slab.inferior_mm,
                "source": self.slab.source,
                "confidence": self.slab.confidence,
                "margin_mm": self.margin_mm,
            },
            "grid": {"shape": list(self.grid_shape), "affine": [list(r) for r in self.grid_affine]},
            "intensity": self.intensity.to_dict(),
            "localisation": self.localisation,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessRecord:
        if d.get("version") != RECORD_VERSION:
            raise ValueError(f"unsupported preprocessing record version {d.get('version')!r}")
        slab = d["slab"]
        return cls(
            input_shape=tuple(d["input"]["shape"]),  # type: ignore[arg-type]
            input_affine=_matrix(d["input"]["affine"]),
            input_orientation=str(d["input"]["orientation"]),
            canonical_shape=tuple(d["reorient"]["shape"]),  # type: ignore[arg-type]
            canonical_affine=_matrix(d["reorient"]["affine"]),
            modality=str(d["modality"]),
            mask={k: float(v) for k, v in d["mask"].items()},
            slab=SlabBounds(slab["superior_mm"], slab["inferior_mm"], slab["source"], slab["confidence"]),
            margin_mm=float(slab["margin_mm"]),
            grid_shape=tuple(d["grid"]["shape"]),  # type: ignore[arg-type]
            grid_affine=_matrix(d["grid"]["affine"]),
            intensity=IntensityMap.from_dict(d["intensity"]),
            localisation=d.get("localisation"),
            config=dict(d.get("config") or {}),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PreprocessRecord:
        return cls.from_dict(parse_json(text))
