"""Turn a set of DICOM slices (positions + one orientation) into a 3D grid.

Everything here is in DICOM's LPS frame; the caller converts the affine to RAS.
Slices are ordered by ImagePositionPatient projected on the slice normal,
never by file name or InstanceNumber.

When the stack is not rectilinear (gantry tilt shears it; some head CT
protocols change slice spacing part-way) the slices are resampled onto a
rectilinear grid along the slice normal. dcm2niix's ``_Tilt``/``_Eq`` files do the same kind of
correction, on grids of another extent and slice count, so compare them in patient space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mrct.errors import GeometryError

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

# Positions are stored as decimal strings, so allow some rounding noise.
POSITION_TOL_MM = 0.01
ORIENTATION_TOL = 1e-3
# Slices that scatter about a regular grid along the slice normal by less than this fraction of
# a voxel (peak to peak) lie on it: a header that rounds ImageOrientationPatient to 4 decimals or
# ImagePositionPatient to 0.1 mm scatters an oblique stack's slices by 0.01-0.17 mm, and dcm2niix
# reads such a stack as its scanner's grid. More (a gantry tilt, spacing changed part-way) is
# resampled. Reading a stack as the grid moves no slice farther than this from its position.
GRID_TOL_VOXELS = 0.2
MISSING_SLICE_FACTOR = 1.5


@dataclass(frozen=True)
class SliceGeometry:
    """Geometry shared by a stack: LPS unit row/column cosines and pixel spacing (mm)."""

    row_cosine: FloatArray  # direction of increasing column index
    col_cosine: FloatArray  # direction of increasing row index
    row_spacing: float  # mm between rows (DICOM PixelSpacing[0])
    col_spacing: float  # mm between columns (DICOM PixelSpacing[1])

    @property
    def normal(self) -> FloatArray:
        n: FloatArray = np.cross(self.row_cosine, self.col_cosine)
        return n


@dataclass(frozen=True)
class StackPlan:
    """Slice order and the rectilinear target grid (LPS)."""

    order: npt.NDArray[np.intp]  # indices of input slices, sorted along the normal
    affine_lps: FloatArray  # voxel (column, row, slice) -> LPS mm
    shape: tuple[int, int, int]  # (columns, rows, slices)
    resample: bool
    reason: str  # why resampling happens ("" when it does not)


def orientation_from_iop(iop: npt.ArrayLike, where: str) -> tuple[FloatArray, FloatArray]:
    v = np.asarray(iop, dtype=np.float64)
    if v.shape != (6,) or not np.all(np.isfinite(v)):
        raise GeometryError("ImageOrientationPatient must hold 6 numbers", where)
    r, c = v[:3], v[3:]
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 0.5 or nc < 0.5:
        raise GeometryError("ImageOrientationPatient has a zero-length direction", where)
    r, c = r / nr, c / nc
    if abs(float(r @ c)) > 1e-2:
        raise GeometryError("ImageOrientationPatient row and column are not perpendicular", where)
    # Make exactly orthonormal so that the affine is a clean rotation.
    c = c - (r @ c) * r
    return r, c / np.linalg.norm(c)


def find_missing_slices(gaps: FloatArray) -> list[int]:
    """Indices of gaps that look like a dropped slice.

    A gap counts when it is larger than 1.5x the median gap *and* larger than
    1.5x both of its neighbours. The neighbour test keeps protocols that change
    spacing deliberately part-way (thin slices through the skull base, thicker
    above, common in head CT) from being mistaken for a missing slice.
    """
    if gaps.size < 2:
        return []
    median = float(np.median(gaps))
    missing = []
    for i, g in enumerate(gaps):
        neighbours = [gaps[j] for j in (i - 1, i + 1) if 0 <= j < gaps.size]
        if g > MISSING_SLICE_FACTOR * median and all(g > MISSING_SLICE_FACTOR * nb for nb in neighbours):
            missing.append(i)
    return missing


def plan_stack(
    positions: FloatArray,
    geom: SliceGeometry,
    rows: int,
    columns: int,
    *,
    allow_gaps: bool,
    where: str,
) -> StackPlan:
    """Sort slices and choose the output grid; detect tilt, uneven spacing and gaps."""
    n = geom.normal
    if positions.shape[0] < 2:
        raise GeometryError("a 3D volume is needed; this series has a single 2D slice", where)
    along = positions @ n
    order = np.argsort(along, kind="stable")
    s = along[order]
    gaps = np.diff(s)
    # Below a tenth of the widest gap too: slices 0.01 mm apart (micro-CT, or mrct's own output
    # of such a grid) were all "at one position". Not below 0.1 um: slices that all share a
    # position, give or take rounding, have no wide gap to scale by.
    dup = gaps < max(1e-4, min(POSITION_TOL_MM, 0.1 * float(gaps.max())))
    if dup.any():
        at_shared = np.zeros(len(s), dtype=bool)  # slices at a position that another one has too
        at_shared[:-1] |= dup
        at_shared[1:] |= dup
        n_positions = int(np.sum(dup & ~np.concatenate([[False], dup[:-1]])))
        shared = "a position" if n_positions == 1 else f"{n_positions} positions"
        raise GeometryError(
            f"{int(at_shared.sum())} slices share {shared}: the series holds several volumes "
            "(echoes, phases or time points), or duplicate files",
            where,
        )
    missing = find_missing_slices(gaps)
    if missing and not allow_gaps:
        # "-4.8-4.8 mm" did not read as a range.
        at = "; ".join(f"{s[i]:.1f} and {s[i + 1]:.1f} mm" for i in missing[:3])
        raise GeometryError(
            f"missing slice(s): gap of {gaps[missing[0]]:.2f} mm against a median of "
            f"{np.median(gaps):.2f} mm (between the slices at {at} along the slice normal); "
            "pass --allow-gaps to interpolate across",
            where,
        )
    first = positions[order[0]]
    offsets = positions[order] - first
    off_u, off_v = offsets @ geom.row_cosine, offsets @ geom.col_cosine
    # How far the slices scatter about the regular grid (first slice, step along the normal):
    # across it (a shear) and along the normal (uneven spacing).
    tilted = bool(
        np.ptp(off_u) > max(POSITION_TOL_MM, GRID_TOL_VOXELS * geom.col_spacing)
        or np.ptp(off_v) > max(POSITION_TOL_MM, GRID_TOL_VOXELS * geom.row_spacing)
    )
    median = float(np.median(gaps))
    step = (s[-1] - s[0]) / (len(s) - 1)
    uneven = bool(np.ptp(s - step * np.arange(len(s))) > max(POSITION_TOL_MM, GRID_TOL_VOXELS * step))

    affine = np.eye(4)
    affine[:3, 0] = geom.row_cosine * geom.col_spacing
    affine[:3, 1] = geom.col_cosine * geom.row_spacing
    if not tilted and not uneven:
        affine[:3, 2] = n * step
        affine[:3, 3] = first
        return StackPlan(order, affine, (columns, rows, len(s)), False, "")

    # Finest spacing that is common in the stack (10th percentile of gaps): keeps
    # thin sections thin without letting one odd short gap blow up the volume.
    dz = float(np.percentile(gaps, 10)) if uneven else median
    # The grid starts on the first slice and keeps whole steps, so slices that
    # already sit on it stay exact; a last partial step (< dz) is not kept.
    n_out = int(np.floor((s[-1] - s[0]) / dz + 1e-6)) + 1
    # Widen the in-plane grid to hold every sheared slice, on slice 0's lattice.
    u0 = np.floor(off_u.min() / geom.col_spacing + 1e-6) * geom.col_spacing
    v0 = np.floor(off_v.min() / geom.row_spacing + 1e-6) * geom.row_spacing
    n_u = int(np.ceil((off_u.max() - u0) / geom.col_spacing - 1e-6)) + columns
    n_v = int(np.ceil((off_v.max() - v0) / geom.row_spacing - 1e-6)) + rows
    affine[:3, 2] = n * dz
    affine[:3, 3] = first + u0 * geom.row_cosine + v0 * geom.col_cosine
    reasons = []
    if tilted:
        tilt = np.degrees(np.arctan2(np.hypot(off_u[-1], off_v[-1]), s[-1] - s[0]))
        reasons.append(f"gantry tilt of {tilt:.1f} deg")
    if uneven:
        reasons.append(f"uneven slice spacing ({gaps.min():.2f}-{gaps.max():.2f} mm)")
    return StackPlan(order, affine, (n_u, n_v, n_out), True, " and ".join(reasons))


def resample_stack(
    slices: npt.NDArray,
    positions: FloatArray,
    geom: SliceGeometry,
    plan: StackPlan,
    fill: float,
) -> npt.NDArray[np.float32]:
    """Linear interpolation of sorted ``slices`` [slice, row, col] onto ``plan``'s grid.

    Each source slice is a plane; it is first shifted onto the target in-plane
    lattice (bilinear), then neighbouring slices are blended along the normal.
    Returns [slice, row, col] on the target grid; points outside every slice
    get ``fill``.
    """
    from scipy.ndimage import affine_transform

    n_u, n_v, n_out = plan.shape
    origin = plan.affine_lps[:3, 3]
    n = geom.normal
    dz = float(np.linalg.norm(plan.affine_lps[:3, 2]))
    sorted_pos = positions[plan.order]
    s = sorted_pos @ n
    on_lattice = np.empty((len(s), n_v, n_u), dtype=np.float32)
    for k, idx in enumerate(plan.order):
        d = origin - sorted_pos[k]
        offset = (d @ geom.col_cosine / geom.row_spacing, d @ geom.row_cosine / geom.col_spacing)
        on_lattice[k] = affine_transform(
            slices[idx].astype(np.float32),
            np.ones(2),
            offset=offset,
            output_shape=(n_v, n_u),
            order=1,
            mode="constant",
            cval=fill,
        )
    out = np.empty((n_out, n_v, n_u), dtype=np.float32)
    target = s[0] + dz * np.arange(n_out)
    upper = np.clip(np.searchsorted(s, target, side="right"), 1, len(s) - 1)
    for t, (z, hi) in enumerate(zip(target, upper, strict=True)):
        lo = hi - 1
        w = float(np.clip((z - s[lo]) / (s[hi] - s[lo]), 0.0, 1.0))
        out[t] = (1.0 - w) * on_lattice[lo] + w * on_lattice[hi]
    return out
