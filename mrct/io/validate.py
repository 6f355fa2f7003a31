"""Checks every reader applies before handing a Volume to the rest of mrct."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from mrct.errors import GeometryError, ReadError

# Guard against headers that claim absurd sizes before anything is allocated.
MAX_VOXELS = 2048**3


def check_shape(shape: tuple[int, ...], path: str | Path) -> tuple[int, int, int]:
    """Accept a 3D shape (trailing singleton dimensions dropped); reject the rest."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if any(d <= 0 for d in dims):
        raise ReadError(f"impossible image dimensions {tuple(shape)}", path)
    if len(dims) > 3:
        raise ReadError(f"a 3D volume is needed, got a {len(dims)}D image of shape {tuple(shape)}", path)
    while len(dims) < 3:
        dims.append(1)
    if sum(d > 1 for d in dims) < 3:
        raise ReadError(f"a 3D volume is needed, got a 2D image of shape {tuple(shape)}", path)
    if int(np.prod(dims, dtype=np.int64)) > MAX_VOXELS:
        raise ReadError(f"image of {tuple(shape)} voxels is larger than mrct accepts", path)
    return dims[0], dims[1], dims[2]


def check_affine(affine: npt.NDArray[np.float64], path: str | Path) -> None:
    if not np.all(np.isfinite(affine)):
        raise GeometryError("the header's voxel-to-world transform is not finite", path)
    m = affine[:3, :3]
    if np.any(np.linalg.norm(m, axis=0) <= 0) or abs(np.linalg.det(m)) < 1e-12:
        raise GeometryError("zero or degenerate voxel spacing in the header", path)


def check_values(array: npt.NDArray, path: str | Path) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        n_bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ReadError(f"{n_bad} voxels are NaN or infinite", path)
