"""The slice layout of the DICOM series mrct writes, checked from the files alone.

From a hunt: a right-handed grid (nibabel's RAS, ITK's LPS, and every 3D MR, which the reader
turns to RAS) was written as it lay. Its axial slices showed the patient's right on the right
(or the face at the bottom) in viewers that draw pixels as stored, as planning systems do, and
its files ran against their own slice normal, so dcm2niix read the series back upside down.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import generate_uid

from mrct.io.dicom_write import write_dicom_series
from mrct.volume import DicomSource, Modality, SourceInfo, Volume

SHAPE = (6, 5, 4)
# LPS (row, column) cosines a scanner writes (PS3.3 C.7.6.2.1.1, the gantry's view).
AXIAL = {
    "HFS": (1, 0, 0, 0, 1, 0),
    "HFP": (-1, 0, 0, 0, -1, 0),
    "FFS": (-1, 0, 0, 0, 1, 0),
    "FFP": (1, 0, 0, 0, -1, 0),
    # From review: decubitus sources were written in the HFS layout, turned 90 degrees from their slices.
    "HFDR": (0, 1, 0, -1, 0, 0),
    "HFDL": (0, -1, 0, 1, 0, 0),
    "FFDR": (0, -1, 0, -1, 0, 0),
    "FFDL": (0, 1, 0, 1, 0, 0),
}
SAGITTAL = (0, 1, 0, 0, 0, -1)
CORONAL = (1, 0, 0, 0, 0, -1)


def _grid(codes: str) -> npt.NDArray[np.float64]:
    """A RAS affine whose voxel axes point to ``codes`` (e.g. ``"LPS"``), spacing 0.8, 0.9, 2.0."""
    world = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (code, size) in enumerate(zip(codes, (0.8, 0.9, 2.0), strict=True)):
        row, sign = world[code]
        affine[row, axis] = sign * size
    affine[:3, 3] = (-12.0, 30.5, 7.25)
    return affine


def _write(tmp_path: Path, codes: str, position: str = "") -> tuple[Volume, list[pydicom.Dataset]]:
    values = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) - 50
    dicom = None
    if position:
        uids = (generate_uid(), pydicom.uid.MRImageStorage, generate_uid())
        dicom = DicomSource(*uids, modality="MR", patient_position=position)
    volume = Volume(
        values, _grid(codes), Modality.CT, SourceInfo(path="/x.nii.gz", format="nifti", dicom=dicom)
    )
    paths = write_dicom_series(volume, tmp_path / f"{codes}{position}", series_description="t")
    return volume, [pydicom.dcmread(p) for p in paths]


def _check_files_hold_the_volume(volume: Volume, files: list[pydicom.Dataset]) -> None:
    """Every pixel, placed in the world by its own file's header, holds the volume's value there;
    and the files run along their normal, one slice spacing apart."""
    to_voxel = np.linalg.inv(volume.affine)
    row, col = np.reshape(np.asarray(files[0].ImageOrientationPatient, float), (2, 3))
    normal = np.cross(row, col)
    along = [float(np.asarray(ds.ImagePositionPatient, float) @ normal) for ds in files]
    np.testing.assert_allclose(np.diff(along), 2.0, atol=1e-6)
    for ds in files:
        dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        r, c = np.indices(ds.pixel_array.shape)
        lps = np.asarray(ds.ImagePositionPatient, float) + c[..., None] * dc * row + r[..., None] * dr * col
        ras = np.concatenate([lps * [-1, -1, 1], np.ones((*r.shape, 1))], axis=-1)
        ijk = np.rint(ras @ to_voxel.T)[..., :3].astype(int)
        np.testing.assert_array_equal(ds.pixel_array, volume.array[ijk[..., 0], ijk[..., 1], ijk[..., 2]])


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LPS", "RPI", "ARS", "PLI"])
def test_axial_slices_of_any_grid_are_laid_out_as_a_scanners(tmp_path: Path, codes: str) -> None:
    volume, files = _write(tmp_path, codes)
    assert [float(v) for v in files[0].ImageOrientationPatient] == list(AXIAL["HFS"])
    _check_files_hold_the_volume(volume, files)


@pytest.mark.parametrize("position", sorted(AXIAL))
def test_axial_slices_follow_the_patient_position(tmp_path: Path, position: str) -> None:
    volume, files = _write(tmp_path, "RAS", position)
    assert [float(v) for v in files[0].ImageOrientationPatient] == list(AXIAL[position])
    assert files[0].PatientPosition == position
    _check_files_hold_the_volume(volume, files)


@pytest.mark.parametrize(
    ("codes", "iop"), [("ASR", SAGITTAL), ("SPL", SAGITTAL), ("RSA", CORONAL), ("ILP", CORONAL)]
)
def test_sagittal_and_coronal_slices(tmp_path: Path, codes: str, iop: tuple[int, ...]) -> None:
    volume, files = _write(tmp_path, codes)
    assert [float(v) for v in files[0].ImageOrientationPatient] == list(iop)
    _check_files_hold_the_volume(volume, files)


@pytest.mark.parametrize("codes", ["RAS", "LPS"])
def test_dcm2niix_reads_a_right_handed_grid_as_a_scanners_axial_series(tmp_path: Path, codes: str) -> None:
    """dcm2niix, an independent reader, puts the files in the same place: the patient's left
    along i (its LAS), from the same world corner, slices going up."""
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix not installed")
    volume, _ = _write(tmp_path, codes)
    out = tmp_path / "nii"
    out.mkdir()
    cmd = ["dcm2niix", "-z", "n", "-b", "n", "-x", "n", "-p", "n", "-f", "out", "-o", str(out)]
    subprocess.run([*cmd, str(tmp_path / codes)], capture_output=True, check=True)
    img = nib.nifti1.load(next(out.glob("*.nii")))
    assert nib.orientations.aff2axcodes(img.affine) == ("L", "A", "S")
    data = np.asarray(img.dataobj)
    corners = [volume.affine @ [i, j, k, 1] for i in (0, 5) for j in (0, 4) for k in (0, 3)]
    box_min, box_max = np.min(corners, axis=0), np.max(corners, axis=0)
    np.testing.assert_allclose(img.affine[:3, 3], [box_max[0], box_min[1], box_min[2]], atol=1e-4)
    for ijk in np.ndindex(*data.shape):
        world = img.affine @ [*ijk, 1]
        src = np.rint(np.linalg.inv(volume.affine) @ world)[:3].astype(int)
        assert data[ijk] == volume.array[tuple(src)]
