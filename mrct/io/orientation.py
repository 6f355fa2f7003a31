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
