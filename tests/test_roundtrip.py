"""Round trips through every format, checked against our reader and independent tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrct import api
from mrct.errors import GeometryError
from mrct.io import read_volume, write_volume
from mrct.io.orientation import closest_canonical
from mrct.volume import Modality, Volume
from tests.external_tools import dciodvfy_errors, dcm2niix_read
from tests.phantoms import oblique_affine, phantom


def same_grid(a: Volume, b: Volume, atol: float = 1e-4) -> None:
    """Same physical grid and values, whatever the axis order (DICOM keeps no layout)."""
    arr_a, aff_a = closest_canonical(a.array, a.affine)
    arr_b, aff_b = closest_canonical(b.array, b.affine)
    np.testing.assert_allclose(aff_a, aff_b, atol=atol)
    np.testing.assert_array_equal(arr_a, arr_b)


@pytest.mark.parametrize("modality", [Modality.CT, Modality.MR])
@pytest.mark.parametrize("flip", [False, True])
def test_nifti_dicom_nifti(tmp_path: Path, modality: Modality, flip: bool) -> None:
    vol = phantom(shape=(11, 9, 6), modality=modality, affine=oblique_affine(flip_i=flip))
    src = write_volume(vol, tmp_path / "in.nii.gz")
    api.convert(src, str(tmp_path / "dcm") + "/", modality=modality)
    api.convert(tmp_path / "dcm", tmp_path / "back.nii.gz")
    back = read_volume(tmp_path / "back.nii.gz")
    same_grid(vol, back)
    if np.linalg.det(vol.affine[:3, :3]) < 0:  # dcm2niix's own handedness: identical layout
        np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_a_grid_of_hundredth_millimetre_voxels_comes_back(tmp_path: Path) -> None:
    """From the known list: slices 0.01 mm apart (micro-CT, or mrct's own DICOM of such a grid)
    were read as "10 slices share a position"; duplicates are still found at that scale."""
    vol = phantom(shape=(11, 9, 10), affine=np.diag([0.01, 0.01, 0.01, 1.0]))
    src = write_volume(vol, tmp_path / "in.nii.gz")
    api.convert(src, str(tmp_path / "dcm") + "/", modality=Modality.CT)
    same_grid(vol, read_volume(tmp_path / "dcm"), atol=1e-7)
    import shutil

    import pydicom

    shutil.copy(tmp_path / "dcm" / "IM_0004.dcm", tmp_path / "dcm" / "IM_0099.dcm")
    ds = pydicom.dcmread(tmp_path / "dcm" / "IM_0099.dcm")
    ds.SOPInstanceUID = ds.SOPInstanceUID[:60] + ".9"
    ds.save_as(tmp_path / "dcm" / "IM_0099.dcm")
    with pytest.raises(GeometryError, match="2 slices share a position"):
        read_volume(tmp_path / "dcm")
    # From review: all slices at one position, give or take rounding, have no wide gap to
    # scale the tolerance by; they are still duplicates.
    for n, f in enumerate(sorted((tmp_path / "dcm").glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [0, 0, 5 + n * 4e-6]
        ds.save_as(f)
    with pytest.raises(GeometryError, match="11 slices share a position"):
        read_volume(tmp_path / "dcm")


def test_dicom_nifti_dicom(tmp_path: Path) -> None:
    first_dir = write_volume(phantom(shape=(10, 12, 5)), str(tmp_path / "first") + "/")
    first = read_volume(first_dir)
    api.convert(first_dir, tmp_path / "mid.nii.gz")
    api.convert(tmp_path / "mid.nii.gz", str(tmp_path / "second") + "/", modality=Modality.CT)
    second = read_volume(tmp_path / "second")
    np.testing.assert_allclose(second.affine, first.affine, atol=1e-4)
    np.testing.assert_array_equal(second.array, first.array)


def test_dcm2niix_agrees_with_our_reader_on_our_output(tmp_path: Path) -> None:
    vol = phantom(shape=(13, 8, 7), affine=oblique_affine(flip_i=True))
    folder = write_volume(vol, str(tmp_path / "dcm") + "/")
    ours = read_volume(folder)
    data, affine = dcm2niix_read(folder, tmp_path / "d2n")
    np.testing.assert_allclose(affine, ours.affine, atol=1e-3)
    np.testing.assert_array_equal(data, ours.array)


# --- real scans ----------------------------------------------------------------------


def real_inputs(shared: Path) -> list[Path]:
    dicom = sorted((shared / "dicom").iterdir())
    return [
        *dicom,
        shared / "ct" / "unc_cthead_cadaver_hu.nii.gz",
        *sorted((shared / "mr" / "ixi_t1_2mm").glob("*.nii.gz"))[:2],
    ]


@pytest.mark.realdata
def test_real_scans_to_dicom_pass_dciodvfy_and_dcm2niix(tmp_path: Path, shared_data: Path) -> None:
    for n, src in enumerate(real_inputs(shared_data)):
        vol = read_volume(src)
        if vol.modality is None:
            vol = vol.replace(modality=api.guess_modality(vol))
        out = write_volume(vol, str(tmp_path / f"out{n}") + "/", series_description="mrct test")
        files = sorted(out.glob("*.dcm"))
        assert len(files) == vol.shape[2]
        for f in files[:: max(1, len(files) // 8)]:
            assert dciodvfy_errors(f) == [], (src.name, f.name)
        data, affine = dcm2niix_read(out, tmp_path / f"d2n{n}")
        ours = read_volume(out)
        np.testing.assert_allclose(affine, ours.affine, atol=0.01, err_msg=src.name)
        np.testing.assert_allclose(data, ours.array, rtol=1e-5, atol=1e-3, err_msg=src.name)
        # and our DICOM lands on the grid of what we read from the source
        arr_in, aff_in = closest_canonical(vol.array, vol.affine)
        arr_out, aff_out = closest_canonical(ours.array, ours.affine)
        np.testing.assert_allclose(aff_out, aff_in, atol=1e-3, err_msg=src.name)
        tol = 0.5 if vol.modality is Modality.CT else 0.51 * float(np.abs(vol.array).max()) / 32767
        np.testing.assert_allclose(arr_out, arr_in, atol=tol + 1e-6, err_msg=src.name)
