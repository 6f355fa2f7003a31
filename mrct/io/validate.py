"""Checks every reader applies before handing a Volume to the rest of mrct, and the plain
voxel types writers hand to libraries that take no others."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mrct.errors import GeometryError, ReadError, WriteError
from mrct.io.limits import WORKING_ITEMSIZE, check_voxels

if TYPE_CHECKING:
    from mrct.volume import Volume


def check_shape(
    shape: tuple[int, ...], path: str | Path, itemsize: int = WORKING_ITEMSIZE
) -> tuple[int, int, int]:
    """Accept a 3D shape (trailing singleton dimensions dropped) that fits the memory limit.

    Called on header values, before the voxels are read (``itemsize``: bytes per stored voxel).
    """
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
    check_voxels(dims, itemsize, path)
    return dims[0], dims[1], dims[2]


# Beyond any scanner: 10 m voxels, an origin 10 km away. Finite but huge values (a spacing of
# 1e308) overflowed later arithmetic: a NaN grid written to NIfTI, or an internal error.
MAX_SPACING_MM = 1e4
MAX_ORIGIN_MM = 1e7


def check_affine(affine: npt.NDArray[np.float64], path: str | Path, of: str = "the header") -> None:
    """Refuse a voxel-to-world transform no grid has (``of``: where it came from, for the message)."""
    if not np.all(np.isfinite(affine)):
        raise GeometryError(f"{of}'s voxel-to-world transform is not finite", path)
    if not np.array_equal(affine[3], [0.0, 0.0, 0.0, 1.0]):  # a Volume built in memory, say
        shown = " ".join(f"{v:g}" for v in affine[3])
        raise GeometryError(f"{of}'s voxel-to-world transform's last row is {shown}, not 0 0 0 1", path)
    m = affine[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms > MAX_SPACING_MM) or not np.all(np.isfinite(norms)):
        shown = ", ".join(f"{v:.4g}" for v in norms)
        raise GeometryError(f"implausible voxel spacing ({shown} mm) in {of}", path)
    if np.any(np.abs(affine[:3, 3]) > MAX_ORIGIN_MM):
        shown = ", ".join(f"{v:.4g}" for v in affine[:3, 3])
        raise GeometryError(f"implausible origin ({shown} mm) in {of}", path)
    if np.any(norms <= 0) or abs(np.linalg.det(m)) < 1e-12:
        raise GeometryError(f"zero or degenerate voxel spacing in {of}", path)


def writable(volume: Volume, path: str | Path) -> Volume:
    """``volume`` as every writer needs it (one built in memory, say): real or boolean voxels and
    a grid. Unchecked, NIfTI and ITK raised their libraries' own errors, NRRD stored a NaN grid
    that read back as another one, and complex voxels were written that no reader takes. A last
    row off 0 0 0 1 by rounding (1e-17, from arithmetic on the affine) is written exactly."""
    if volume.array.dtype.kind not in "iufb":
        raise WriteError(f"cannot write voxels of type {volume.array.dtype} (real numbers needed)", path)
    affine = volume.affine
    if np.all(np.isfinite(affine[3])) and np.allclose(affine[3], [0, 0, 0, 1], rtol=0, atol=1e-9):
        affine = np.vstack([affine[:3], [0.0, 0.0, 0.0, 1.0]])
    try:
        check_affine(affine, path, of="the volume")
    except GeometryError as err:
        raise WriteError(err.message, path) from None
    return volume if affine is volume.affine else volume.replace(affine=affine)


def check_values(array: npt.NDArray, path: str | Path) -> None:
    """Refuse NaN and infinite voxels, saying how many.

    They are not replaced: NaN often marks "no data" (outside a resampled field of
    view), but whether that is air, background or tissue is the user's call, and a
    guessed value would flow silently into the synthetic image.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return
    if np.all(np.isfinite(array)):
        # The chain computes in float32: a float64 voxel beyond its range became infinite there.
        limit = float(np.finfo(np.float32).max)
        # max and -min, not abs(): no copy of a large volume
        if array.dtype.itemsize > 4 and array.size and max(float(array.max()), -float(array.min())) > limit:
            raise ReadError("voxel values beyond float32's range (about 3.4e38); rescale them", path)
        return
    n_nan = int(np.count_nonzero(np.isnan(array)))
    n_inf = int(np.count_nonzero(np.isinf(array)))
    if n_nan and n_inf:
        what = f"are NaN or infinite ({n_nan} NaN, {n_inf} infinite)"
    else:
        what = f"are {'NaN' if n_nan else 'infinite'}"
    raise ReadError(
        f"{n_nan + n_inf} of {array.size} voxels {what}; mrct does not guess values for them "
        "(replace them, e.g. with the background value, and retry)",
        path,
    )


def check_voxel_type(array: npt.NDArray, path: str | Path) -> None:
    """Refuse voxels that are no scalar intensities (the readers refuse such files by name):
    complex, boolean (a mask, not a scan), text or objects."""
    if array.dtype.kind not in "iuf":
        raise ReadError(f"voxels of type {array.dtype} are no scan's intensities (real numbers needed)", path)


def storable(array: npt.NDArray) -> npt.NDArray:
    """The array in a type every writer's library takes: bool as uint8, float16 as float32
    (values unchanged), long double rounded to float64, and in the machine's byte order
    (SimpleITK takes neither big-endian nor bool nor float16; numpy's percentiles take no bool)."""
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f" and array.dtype.itemsize != 4 and array.dtype.itemsize != 8:
        return array.astype(np.float32 if array.dtype.itemsize < 4 else np.float64)
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


def check_in_memory(volume: Volume) -> None:
    """The checks every reader applies, for a Volume built in memory rather than read from a file:
    otherwise a NaN voxel surfaces as a numpy error deep inside the preprocessing."""
    where = volume.source.path or "the volume"
    if volume.array.ndim != 3 or sum(n > 1 for n in volume.array.shape) < 3:
        raise ReadError(f"a 3D volume is needed, got an array of shape {volume.array.shape}", where)
    check_voxel_type(volume.array, where)
    check_affine(np.asarray(volume.affine, dtype=np.float64), where)
    check_values(volume.array, where)
