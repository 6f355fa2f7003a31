"""Small synthetic volumes with oblique, anisotropic geometry (no patient data)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mrct.volume import Modality, Volume


def rotation(ax: float, ay: float, az: float) -> npt.NDArray[np.float64]:
    """Rotation matrix from angles in degrees about x, then y, then z."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(
    spacing: tuple[float, float, float] = (0.7, 0.9, 2.5),
    angles: tuple[float, float, float] = (12.0, -20.0, 31.0),
    origin: tuple[float, float, float] = (-40.5, 22.25, 13.0),
    flip_i: bool = False,
) -> npt.NDArray[np.float64]:
    m = rotation(*angles) @ np.diag(spacing)
    if flip_i:
        m[:, 0] *= -1
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = origin
    return aff


def phantom(
    shape: tuple[int, int, int] = (12, 10, 7),
    modality: Modality = Modality.CT,
    affine: npt.NDArray[np.float64] | None = None,
    seed: int = 0,
) -> Volume:
    """Integer-valued volume: HU-like for CT (int16), uint16-like for MR."""
    rng = np.random.default_rng(seed)
    i, j, k = np.indices(shape)
    smooth = 30 * i - 20 * j + 45 * k
    if modality is Modality.CT:
        arr = (-1000 + smooth + rng.integers(0, 400, size=shape)).astype(np.int16)
    else:
        arr = (100 + smooth + rng.integers(0, 900, size=shape)).astype(np.int16)
    return Volume(arr, oblique_affine() if affine is None else affine, modality)
