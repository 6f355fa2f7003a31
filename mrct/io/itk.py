"""NRRD and MetaImage (``.mha``/``.mhd``) through SimpleITK, which works in LPS."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mrct.errors import GeometryError, MrctError, ReadError, WriteError
from mrct.io.atomic import atomic_file
from mrct.io.metaimage import check_metaimage
from mrct.io.nrrd_files import check_nrrd_data_files
from mrct.io.orientation import largest_move, lps_to_ras, ras_to_lps, squared_up
from mrct.io.validate import check_affine, check_shape, check_values, storable
from mrct.volume import ROUNDING_SHEAR, SHEAR_TOL, Modality, SourceInfo, Volume, shear

log = logging.getLogger(__name__)


def read_itk(path: Path, modality: Modality | None = None) -> Volume:
    import SimpleITK as sitk

    name = _utf8_name(path, ReadError)
    if path.name.lower().endswith((".mha", ".mhd")):
        check_metaimage(path)  # MetaIO prints its complaints, and can hang on corrupt data
    else:
        check_nrrd_data_files(path)  # teem blocked on a pipe or device named as the data file
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if reader.GetNumberOfComponents() != 1:
            raise ReadError("a single-channel image is needed", path)
        # One component stored as a vector (a NRRD list axis of size 1) is a scalar image.
        pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID()).removeprefix("vector of ")
        itemsize = _ITEMSIZE.get(pixel)
        if itemsize is None:
            raise ReadError(
                f"unsupported pixel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())}", path
            )
        spacing = reader.GetSpacing()
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(f"zero or negative voxel spacing ({', '.join(map(str, spacing))})", path)
        check_shape(tuple(reader.GetSize()), path, itemsize)
        description = reader.GetMetaData("Description") if reader.HasMetaDataKey("Description") else ""
        image = reader.Execute()
        if sitk.sitkVectorUInt8 <= image.GetPixelID() <= sitk.sitkVectorFloat64:
            image = sitk.VectorIndexSelectionCast(image, 0)
        if image.GetDimension() == 4 and image.GetSize()[3] == 1:  # (x, y, z, 1), as NIfTI allows
            image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    except RuntimeError as err:
        message = _first_line(err)
        # teem (NRRD) names a short read this way; anything else is a format problem.
        short = any(w in message for w in ("expected", "fread got only", "data not read"))
        what = "truncated or corrupt image data" if short else "not a readable image"
        raise ReadError(f"{what} ({message})", path) from err
    if image.GetDimension() != 3:
        raise ReadError(f"a 3D volume is needed, got a {image.GetDimension()}D image", path)
    affine = ras_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    check_affine(affine, path)
    # SimpleITK arrays are [z, y, x]; mrct arrays are [i, j, k].
    data = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    check_values(data, path)  # before float32: a finite float64 beyond its range is said as such
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    fmt = "nrrd" if str(path).lower().endswith((".nrrd", ".nhdr")) else "metaimage"
    return Volume(data, affine, modality, SourceInfo(str(path), fmt, description=description))


def ras_affine(
    direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]
) -> npt.NDArray[np.float64]:
    """The RAS affine of an ITK geometry (LPS; ``direction`` row-major, n x n), its first 3 axes."""
    n = len(spacing)
    lps = np.eye(4)
    lps[:3, :3] = np.array(direction, dtype=np.float64).reshape(n, n)[:3, :3] @ np.diag(spacing[:3])
    lps[:3, 3] = origin[:3]
    return np.asarray(lps_to_ras(lps), dtype=np.float64)


def sitk_geometry(
    affine: np.ndarray, shape: Sequence[int] | None = None
) -> tuple[list[float], list[float], list[float]]:
    """Spacing, direction (row-major 3x3) and origin, in ITK's LPS, of a RAS affine. A shear up
    to :data:`~mrct.volume.ROUNDING_SHEAR` (rounding in the header it came from) is squared up to
    the nearest orthonormal directions, as the DICOM writer does, with a warning when a voxel of
    a grid of ``shape`` moves by over 0.05 mm.

    Raises ValueError for a sheared affine, which ITK cannot represent.
    """
    lps = ras_to_lps(affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    if shear(lps) > ROUNDING_SHEAR:
        raise ValueError("an ITK image needs an orthogonal grid; this affine is sheared")
    if shear(lps) > SHEAR_TOL:  # as the DICOM writer does: one grid, whatever format is written
        squared = squared_up(direction)
        if shape is not None:
            moved = largest_move(direction, squared, np.asarray(shape[:3]) * spacing)
            if moved > 0.05:
                log.warning("the grid is slightly sheared; squared up, moving voxels up to %.2f mm", moved)
        direction = squared
    return spacing.tolist(), direction.flatten().tolist(), lps[:3, 3].tolist()


def write_itk(volume: Volume, path: Path, overwrite: bool = False, description: str | None = None) -> Path:
    """Write NRRD or MHA (by suffix), compressed; ``description`` (one line of ASCII: see
    :func:`mrct.io.header_label`) becomes the ``Description`` field."""
    import SimpleITK as sitk

    _utf8_name(path, WriteError)
    try:
        spacing, direction, origin = sitk_geometry(volume.affine, volume.shape)
    except ValueError:
        raise WriteError("NRRD/MHA need an orthogonal grid; this affine is sheared", path) from None
    image = sitk.GetImageFromArray(np.ascontiguousarray(storable(volume.array).transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    if description:  # NRRD writes it as "Description:=...", MHA as "Description = ..."
        image.SetMetaData("Description", description)
    with atomic_file(path, overwrite, keep=[volume.source.path]) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as err:
            raise WriteError(f"cannot write ({_first_line(err)})", path) from err
    return path


def _utf8_name(path: Path, error: type[MrctError]) -> str:
    """ITK takes file names as UTF-8; one that is not (Linux allows any bytes) aborts the process."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise error("NRRD/MHA files need a file name in UTF-8; rename this one", path) from None
    return str(path)


# Bytes per voxel of the scalar pixel types SimpleITK names.
_ITEMSIZE = {
    f"{bits}-bit {kind}": bits // 8
    for bits in (8, 16, 32, 64)
    for kind in ("signed integer", "unsigned integer")
}
_ITEMSIZE |= {"32-bit float": 4, "64-bit float": 8}


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    # ITK's messages start with a source location; the description is last.
    return (lines[-1] if lines else type(err).__name__)[:160]
