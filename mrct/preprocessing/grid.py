"""Grids in patient space and the one resampling primitive everything uses.

Affines map voxel indices to RAS mm (as :class:`mrct.volume.Volume`). The model
grid's array is ``(D, H, W)``: D runs inferior -> superior, H anterior ->
posterior and W patient right -> left, so a slice ``[d]`` displays like a
radiological axial image (anterior up, patient right on the left) and the
grid's axis codes are ``SPL``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mrct.preprocessing.config import GridConfig

FloatArray = npt.NDArray[np.float64]

# Columns of the model grid's direction matrix: D -> +S, H -> -A (posterior), W -> -R (left).
_MODEL_DIRECTIONS = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])


def model_grid_affine(
    grid: GridConfig, superior_mm: float, inferior_mm: float, centre_ras: tuple[float, float]
) -> FloatArray:
    """The affine of the model grid: ``grid.depth`` slices whose voxel edges span exactly
    ``[inferior_mm, superior_mm]`` along S, centred in-plane on ``centre_ras`` (R, A in mm)."""
    dz = (superior_mm - inferior_mm) / grid.depth
    spacing = np.array([dz, grid.inplane_mm, grid.inplane_mm])
    affine = np.eye(4)
    affine[:3, :3] = _MODEL_DIRECTIONS * spacing
    centre_index = (np.array(grid.shape, dtype=np.float64) - 1) / 2
    centre_world = np.array([centre_ras[0], centre_ras[1], (superior_mm + inferior_mm) / 2])
    affine[:3, 3] = centre_world - affine[:3, :3] @ centre_index
    return affine


def world_extent(shape: tuple[int, ...], affine: FloatArray) -> tuple[FloatArray, FloatArray]:
    """RAS bounding box (mm) of a grid's voxels, voxel edges included."""
    corners = np.array(
        [
            [a, b, c]
            for a in (-0.5, shape[0] - 0.5)
            for b in (-0.5, shape[1] - 0.5)
            for c in (-0.5, shape[2] - 0.5)
        ]
    )
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def axis_aligned_grid(
    shape: tuple[int, ...], affine: FloatArray, step_mm: float
) -> tuple[FloatArray, tuple[int, int, int]]:
    """A RAS-aligned grid of ``step_mm`` voxels covering a grid's world bounding box."""
    lo, hi = world_extent(shape, affine)
    size = np.maximum(1, np.ceil((hi - lo) / step_mm)).astype(int)
    out = np.diag([step_mm, step_mm, step_mm, 1.0])
    out[:3, 3] = lo + step_mm / 2
    return out, (int(size[0]), int(size[1]), int(size[2]))


def anti_alias_sigmas(src_affine: FloatArray, dst_affine: FloatArray) -> tuple[float, float, float]:
    """Gaussian sigmas (in source voxels) that band-limit the source before sampling the destination.

    Along each source axis, the destination step is the destination spacing seen
    along that direction; sigma = (step / spacing - 1) / 2 (as scikit-image), 0 when
    up-sampling.
    """
    src_spacing = np.linalg.norm(src_affine[:3, :3], axis=0)
    dst_spacing = np.linalg.norm(dst_affine[:3, :3], axis=0)
    src_dirs = src_affine[:3, :3] / src_spacing
    dst_dirs = dst_affine[:3, :3] / dst_spacing
    sigmas = []
    for axis in range(3):
        weights = np.abs(dst_dirs.T @ src_dirs[:, axis])
        step = float(weights @ dst_spacing / max(weights.sum(), 1e-12))
        sigmas.append(max(0.0, (step / src_spacing[axis] - 1) / 2))
    return sigmas[0], sigmas[1], sigmas[2]


AA_TRUNCATE = 3.0  # the anti-aliasing Gaussian's reach, in sigmas


def _source_box(
    shape: tuple[int, ...],
    src_affine: FloatArray,
    dst_affine: FloatArray,
    dst_shape: tuple[int, int, int],
    radius: list[int],
) -> tuple[list[int], list[int]]:
    """[lo, hi) source indices holding every voxel that sampling the destination reads, with a
    smoothing kernel of ``radius`` voxels around them (clipped to the array)."""
    last = [n - 1 for n in dst_shape]
    corners = np.array([[i, j, k, 1.0] for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])])
    ijk = (np.linalg.inv(src_affine) @ dst_affine @ corners.T)[:3]
    # Trilinear interpolation reads the next voxel; a smoothed voxel reads `radius` around it.
    reach = [r + 1 for r in radius]
    lo = [int(np.clip(np.floor(ijk[a].min()) - reach[a], 0, shape[a])) for a in range(3)]
    hi = [int(np.clip(np.ceil(ijk[a].max()) + reach[a] + 1, 0, shape[a])) for a in range(3)]
    if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)):  # the destination misses the source
        return [0, 0, 0], [min(1, n) for n in shape[:3]]
    return lo, hi


def resample_from_grid(
    values: npt.NDArray,
    grid_affine: FloatArray,
    dst_affine: FloatArray,
    dst_shape: tuple[int, int, int],
    *,
    fill: float,
) -> npt.NDArray[np.float32]:
    """Model-grid ``values`` (D, H, W) sampled at a scan's voxels (trilinear), ``fill`` outside.

    The grid's first and last slices are repeated once beyond it: the outer half of each edge
    slice still lies inside the slab, and sampling it against the padding faded the output
    towards ``fill`` there (a dark band at every full-FOV seam). Callers cut at the slab's levels.
    """
    grid = np.asarray(grid_affine, dtype=np.float64).copy()
    grid[:3, 3] -= grid[:3, 0]  # index 0 of the padded array is one slice before the grid's first
    padded = np.pad(np.asarray(values, dtype=np.float32), ((1, 1), (0, 0), (0, 0)), mode="edge")
    return resample(padded, grid, dst_affine, dst_shape, fill=fill)


def in_slab(
    affine: FloatArray,
    shape: tuple[int, ...],
    superior_mm: float,
    inferior_mm: float,
    start: tuple[int, ...] = (0, 0, 0),
) -> npt.NDArray[np.bool_]:
    """Voxels (of the box of ``shape`` at index ``start`` of a grid) whose centre's S coordinate
    (RAS mm) lies within [inferior, superior]: the one definition of "inside the slab" that
    the output, its inverse and the quality checks share."""
    i, j, k = (np.arange(o, o + n, dtype=np.float64) for o, n in zip(start, shape, strict=True))
    a = np.asarray(affine, dtype=np.float64)[2]
    s = a[0] * i[:, None, None] + a[1] * j[None, :, None] + a[2] * k[None, None, :] + a[3]
    return np.asarray((s >= inferior_mm) & (s <= superior_mm))


def resample(
    array: npt.NDArray,
    src_affine: FloatArray,
    dst_affine: FloatArray,
    dst_shape: tuple[int, int, int],
    *,
    fill: float = 0.0,
    mode: str = "bilinear",
    anti_alias: bool = False,
) -> npt.NDArray[np.float32]:
    """Sample ``array`` (on ``src_affine``) at the voxel centres of a destination grid.

    Trilinear by default (``mode="nearest"`` for labels), through MONAI's
    ``SpatialResample``; points outside the source get ``fill``.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample
    from scipy.ndimage import gaussian_filter

    sigmas = anti_alias_sigmas(src_affine, dst_affine) if anti_alias else (0.0, 0.0, 0.0)
    smooth = max(sigmas) > 0.25
    # Only the part of the source that the destination samples (plus the smoothing kernel's
    # reach) is smoothed and resampled: the same values, for half the work on a slab.
    radius = [int(AA_TRUNCATE * s + 0.5) if smooth else 0 for s in sigmas]
    lo, hi = _source_box(array.shape, src_affine, dst_affine, dst_shape, radius)
    data = np.asarray(array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    src_affine = np.asarray(src_affine, dtype=np.float64).copy()
    src_affine[:3, 3] += src_affine[:3, :3] @ np.asarray(lo, dtype=np.float64)
    if smooth:
        data = gaussian_filter(data, sigmas, mode="nearest", truncate=AA_TRUNCATE)
    # Sampling (value - fill) with zero padding and adding fill back puts `fill` outside.
    shifted = data - np.float32(fill) if fill else data
    image = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(shifted))[None], affine=torch.from_numpy(src_affine)
    )
    resampler = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float32)  # type: ignore[arg-type]
    out = resampler(
        image, dst_affine=torch.from_numpy(np.asarray(dst_affine, dtype=np.float64)), spatial_size=dst_shape
    )
    result = np.asarray(out[0].detach().cpu().numpy(), dtype=np.float32)
    return result + np.float32(fill) if fill else result
