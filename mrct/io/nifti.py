"""NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel. NIfTI is RAS, like mrct."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from mrct.errors import ReadError
from mrct.io.atomic import atomic_file
from mrct.io.validate import check_affine, check_shape, check_values
from mrct.volume import Modality, SourceInfo, Volume


def read_nifti(path: Path, modality: Modality | None = None) -> Volume:
    """Read a NIfTI file, applying ``scl_slope``/``scl_inter``.

    The affine is nibabel's choice (sform when its code is set, else qform).
    Unscaled integer data keep their dtype; scaled data become float32.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for bad headers
        raise ReadError(f"not a readable NIfTI file ({_short(err)})", path) from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ReadError("not a NIfTI image", path)
    zooms = img.header.get_zooms()
    if any(not np.isfinite(z) or z <= 0 for z in zooms[:3]):
        raise ReadError(f"zero or negative voxel size (pixdim {tuple(zooms[:3])})", path)
    shape = check_shape(tuple(int(d) for d in img.shape), path)
    affine = np.asarray(img.affine, dtype=np.float64)
    check_affine(affine, path)
    try:
        slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
        unscaled = slope == 1 and inter == 0
        data = np.asanyarray(img.dataobj) if unscaled else img.get_fdata(dtype=np.float32)
    except (EOFError, OSError, zlib.error, ValueError) as err:
        raise ReadError(f"truncated or corrupt image data ({_short(err)})", path) from err
    data = np.asarray(data).reshape(shape)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    check_values(data, path)
    return Volume(data, affine, modality, SourceInfo(str(path), "nifti"))


def write_nifti(volume: Volume, path: Path, overwrite: bool = False) -> Path:
    """Write with qform and sform both set to the volume's affine, units mm."""
    import nibabel as nib

    img = nib.Nifti1Image(volume.array, volume.affine)
    # Code 1 (scanner) as dcm2niix writes; both forms so every reader agrees.
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    if volume.modality is not None:
        img.header["descrip"] = f"mrct {volume.modality.value}".encode()
    with atomic_file(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return path


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]
