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


def squared_up(directions: npt.ArrayLike) -> FloatArray:
    """The orthonormal directions nearest the unit columns ``directions`` (3 x n, n <= 3): the
    polar factor of their SVD, which moves each as little as any orthonormal set can."""
    u, _, vt = np.linalg.svd(np.asarray(directions, dtype=np.float64), full_matrices=False)
    return np.asarray(u @ vt, dtype=np.float64)


def largest_move(before: npt.ArrayLike, after: npt.ArrayLike, extents: npt.ArrayLike) -> float:
    """How far (mm) squaring up moves the farthest voxel: the largest distance, over the corners
    of a grid spanning ``extents`` mm along its axes, between the directions ``before`` and
    ``after`` (3 x n unit columns) place it."""
    shift = (np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)) * np.asarray(extents)
    n = shift.shape[1]
    corners = np.array([[(c >> a) & 1 for a in range(n)] for c in range(2**n)], dtype=np.float64)
    return float(np.max(np.linalg.norm(corners @ shift.T, axis=1)))


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
    sign = [-1 if aff[world, perm[world]] < 0 else 1 for world in range(3)]
    out, new_aff = reorder_axes(array, aff, (perm[0], perm[1], perm[2]), (sign[0], sign[1], sign[2]))
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


# How scanners lay out the slices of each plane: (row, column) directions in LPS, keyed by the LPS
# axis the slice normal is closest to, for a patient lying head first supine (HFS). Axial images
# of the other positions are the gantry's view of a patient turned in it: rows run along the
# gantry's x axis, columns down towards the table (HFP, FFS, FFP, and the decubitus positions).
_SCANNER_PLANES = {
    0: ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # sagittal: rows run anterior to posterior, columns down
    1: ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # coronal: rows run right to left, columns down
    2: ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # axial: right to left, anterior to posterior
}
_AXIAL_BY_POSITION = {
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "HFDR": ((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0)),
    "HFDL": ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0)),
    "FFDR": ((0.0, -1.0, 0.0), (-1.0, 0.0, 0.0)),
    "FFDL": ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),
}


def scanner_layout(
    array: npt.NDArray, affine: npt.ArrayLike, patient_position: str = ""
) -> tuple[npt.NDArray, FloatArray]:
    """Swap and flip the in-plane voxel axes, and flip the slice axis (no resampling), so that
    the slices of ``k`` read like a scanner's: DICOM rows along ``+i``, columns along ``-j``
    (dcm2niix's reversed rows), in the layout scanners use for that plane and patient position,
    and ``k`` along the slice normal (row x column), as readers sort the files.

    A DICOM series of a grid that is right-handed in RAS (nibabel's RAS, ITK's LPS) written
    as it lies would show the patient mirrored or upside down in a viewer that draws pixels as
    stored, as planning systems do, and its files would run against their own normal.
    """
    aff = np.asarray(affine, dtype=np.float64)
    unit = ras_to_lps(aff)[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    plane = int(np.argmax(np.abs(unit[:, 2])))
    standard = _SCANNER_PLANES[plane]
    if plane == 2:
        standard = _AXIAL_BY_POSITION.get(patient_position.strip().upper(), standard)
    row_std, col_std = np.array(standard)

    def likeness(choice: tuple[int, int, int, int]) -> float:
        a, sa, b, sb = choice
        return round(float(sa * unit[:, a] @ row_std + sb * unit[:, b] @ col_std), 9)

    # (row axis, row sign, column axis, column sign): the first of the best keeps the grid as it is.
    choices = [(a, sa, 1 - a, sb) for a in (0, 1) for sa in (1, -1) for sb in (-1, 1)]
    a, sa, b, sb = max(choices, key=likeness)
    normal = np.cross(sa * unit[:, a], sb * unit[:, b])
    sk = 1 if normal @ unit[:, 2] > 0 else -1
    return reorder_axes(array, aff, (a, b, 2), (sa, -sb, sk))


def reorder_axes(
    array: npt.NDArray, affine: FloatArray, axes: tuple[int, int, int], signs: tuple[int, int, int]
) -> tuple[npt.NDArray, FloatArray]:
    """The same grid and values with voxel axis ``n`` taken from old axis ``axes[n]``, reversed
    where ``signs[n]`` is -1 (its last voxel becomes the first)."""
    out = np.transpose(array, axes)
    new = affine.copy()
    new[:3, :3] = affine[:3, list(axes)]
    for n, sign in enumerate(signs):
        if sign < 0:
            out = np.flip(out, axis=n)
            new[:3, 3] += new[:3, n] * (out.shape[n] - 1)
            new[:3, n] *= -1
    return out, new
