"""The one place where LPS (DICOM, ITK) and RAS (NIfTI, mrct) meet.

mrct affines are 4x4 matrices mapping voxel indices (i, j, k) to RAS
millimetres. DICOM and ITK describe the same space in LPS: x and y change sign,
z does not.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# diag(-1, -1, 1, 1) is its own inverse, so one matrix converts both ways.
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine_or_point: npt.ArrayLike) -> FloatArray:
    """Convert a 4x4 LPS affine, or an (..., 3) array of LPS points, to RAS."""
    a = np.asarray(affine_or_point, dtype=np.float64)
    if a.shape == (4, 4):
        return _LPS_RAS @ a
    return a * np.array([-1.0, -1.0, 1.0])


# The conversion is an involution; the second name only documents intent.
ras_to_lps = lps_to_ras


def axis_codes(affine: npt.ArrayLike) -> str:
    """Orientation code such as ``'LAS'``: the RAS direction each voxel axis points to."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    code = ""
    used: set[int] = set()
    for col in range(3):
        v = m[:, col]
        order = [int(i) for i in np.argsort(-np.abs(v)) if int(i) not in used]
        world = order[0]
        used.add(world)
        code += labels[world][1 if v[world] > 0 else 0]
    return code


def voxel_spacing(affine: npt.ArrayLike) -> tuple[float, float, float]:
    """Length of each voxel axis in mm."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    sx, sy, sz = np.linalg.norm(m, axis=0)
    return float(sx), float(sy), float(sz)


def closest_canonical(array: npt.NDArray, affine: npt.ArrayLike) -> tuple[npt.NDArray, FloatArray]:
    """Permute and flip voxel axes (no resampling) so they point closest to R, A, S."""
    aff = np.asarray(affine, dtype=np.float64)
    m = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    # Greedy assignment of each world axis to the voxel axis most parallel to it.
    perm = [-1, -1, -1]
    free_vox = {0, 1, 2}
    for world in np.argsort(-np.max(np.abs(m), axis=1)):
        vox = max(free_vox, key=lambda c: abs(m[world, c]))
        perm[int(world)] = vox
        free_vox.remove(vox)
    out = np.transpose(array, perm)
    new_aff = aff.copy()
    new_aff[:, :3] = aff[:, perm]
    for world in range(3):
        if new_aff[world, world] < 0:
            n = out.shape[world]
            out = np.flip(out, axis=world)
            new_aff[:3, 3] += new_aff[:3, world] * (n - 1)
            new_aff[:3, world] *= -1
    return np.ascontiguousarray(out), new_aff


# Axis permutations in the order dcm2niix tries them (nii_ortho.cpp, getBestOrient):
# original voxel axis i becomes output axis perm[i].
_DCM2NIIX_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def rotate_like_dcm2niix(
    array: npt.NDArray, affine: npt.NDArray[np.float64]
) -> tuple[npt.NDArray, npt.NDArray[np.float64]]:
    """Flip and permute voxel axes (no resampling) exactly as dcm2niix's default 3D rotation.

    dcm2niix (nii_setOrtho) first picks the flips: of the 8 corners of the
    volume, the one nearest the left-posterior-inferior corner of its bounding box
    (RAS minimum) becomes voxel (0, 0, 0). It then picks the axis order whose
    matrix (voxel sizes included) has the largest trace, the first one on ties.
    A greedy "closest to RAS" choice agrees up to ~35 deg obliquity and then
    may not, so this follows dcm2niix step by step.
    """
    m, dims = affine[:3, :3], array.shape
    corners = []
    for n in range(8):
        flips = tuple(-1 if n & (1 << a) else 1 for a in range(3))
        index = np.array([dims[a] - 1 if flips[a] < 0 else 0 for a in range(3)], dtype=np.float64)
        corners.append((flips, m @ index + affine[:3, 3]))
    lowest = np.min([c for _, c in corners], axis=0)
    flips, origin = min(corners, key=lambda fc: float(np.linalg.norm(fc[1] - lowest)))
    best, perm = 0.0, _DCM2NIIX_PERMS[0]
    for p in _DCM2NIIX_PERMS:
        score = float(sum(m[p[i], i] * flips[i] for i in range(3)))
        if score > best:
            best, perm = score, p
    out = array
    for a in range(3):
        if flips[a] < 0:
            out = np.flip(out, axis=a)
    source_axis = [perm.index(j) for j in range(3)]
    new = np.eye(4)
    for j, i in enumerate(source_axis):
        new[:3, j] = m[:, i] * flips[i]
    new[:3, 3] = origin
    return np.ascontiguousarray(np.transpose(out, source_axis)), new
