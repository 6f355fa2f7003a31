"""Reading the real scans in ../shared/data (skipped when the folder is absent).

Ordinary series must equal dcm2niix 1.0.20220720's default conversion. The GE
head CT (18.5 deg gantry tilt, slice gaps of 4.0/1.08/7.0 mm) is checked against
its own slices instead: dcm2niix's ``_Tilt_Eq`` output there has a
non-orthogonal affine (when equalising spacing it rescales only the z row of the
matrix, shearing the grid), so it is no reference for a rectilinear resampling.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mrct.io import read_volume
from mrct.io.orientation import lps_to_ras
from mrct.volume import Modality
from tests.dicom_factory import read_series_info
from tests.test_dicom_read import assert_matches_dcm2niix, sample_at_original_pixels

pytestmark = pytest.mark.realdata


def _dicom(shared_data: Path, name: str) -> Path:
    folder = shared_data / "dicom" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.mark.tools
def test_siemens_2d_sagittal_equals_dcm2niix(shared_data: Path, tmp_path: Path) -> None:
    folder = _dicom(shared_data, "mr_siemens_prisma_t1_fl2d_sag_hfs")
    vol = read_volume(folder)
    assert vol.modality is Modality.MR and vol.shape == (256, 256, 35)
    assert_matches_dcm2niix(vol, folder, tmp_path / "d2n", exact=True, atol_mm=0.01)


@pytest.mark.tools
def test_philips_3d_scaled_equals_dcm2niix(shared_data: Path, tmp_path: Path) -> None:
    """Sagittal 3D MPRAGE: rotated to RAS like dcm2niix; RescaleSlope 2.36 applied."""
    folder = _dicom(shared_data, "mr_philips_elition_t1_mprage_sag3d")
    vol = read_volume(folder)
    assert vol.modality is Modality.MR and vol.orientation == "RAS"
    assert vol.array.dtype == np.float32
    assert_matches_dcm2niix(vol, folder, tmp_path / "d2n", exact=False, atol_mm=0.01, rtol=1e-5)


def test_ge_tilted_ct_is_resampled_onto_its_own_slices(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _dicom(shared_data, "ct_ge_hispeed_head_tilt")
    with caplog.at_level(logging.WARNING):
        vol = read_volume(folder)
    assert any("gantry tilt of 18.5 deg" in r.getMessage() for r in caplog.records)
    assert vol.modality is Modality.CT
    m = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
    np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-9)  # rectilinear
    assert vol.shape[0] == 512
    assert vol.spacing[0] == pytest.approx(0.48828, abs=1e-4)
    assert vol.spacing[2] == pytest.approx(4.0, abs=0.01)  # the dominant 4 mm along the normal

    files = sorted(folder.glob("*.dcm"))
    normal = np.cross(*np.reshape(pydicom.dcmread(files[0]).ImageOrientationPatient, (2, 3)))
    info = read_series_info(files)
    order = np.argsort(info.positions @ normal)
    assert order[0] == 0  # 01.dcm is the lowest slice, the grid's anchor
    # The anchor slice lies on the output lattice: exact.
    np.testing.assert_allclose(sample_at_original_pixels(vol, info, 0), info.values[0], atol=1e-3)
    # Every other slice was shifted by a fraction of a pixel (bilinear) and, past the
    # 1.08 mm gap, blended along the normal; real edges (skull) make single voxels
    # differ, so compare robust statistics of the inner part of the field of view.
    inner = (slice(64, -64), slice(64, -64))
    to_voxel = np.linalg.inv(vol.affine)
    compared = 0
    for k in order[1:]:
        k_out = (to_voxel @ np.r_[lps_to_ras(info.positions[k]), 1])[2]
        if k_out > vol.shape[2] - 1 + 1e-3:
            continue  # beyond the last whole 4 mm step: not in the output
        compared += 1
        got = sample_at_original_pixels(vol, info, int(k))[inner]
        want = info.values[k][inner]
        assert np.median(np.abs(got - want)) < 20, f"{files[k].name}: median abs error"
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98, files[k].name
    assert compared >= 25


@pytest.mark.parametrize(
    ("relative", "shape"),
    [
        ("ct/unc_cthead_cadaver_hu.nii.gz", (256, 256, 113)),
        ("mr/ixi_t1_2mm/IXI012-HH-1211_T1.nii.gz", (120, 120, 90)),
        ("mr/ixi_t1_2mm/IXI072-HH-2324_T1.nii.gz", (120, 120, 90)),
        ("mr/ixi_t1_2mm/IXI175-HH-1570_T1.nii.gz", (120, 120, 90)),
    ],
)
def test_nifti_scans_read_as_documented(
    shared_data: Path, relative: str, shape: tuple[int, int, int]
) -> None:
    path = shared_data / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    vol = read_volume(path)
    assert vol.shape == shape
    assert np.all(np.isfinite(vol.array))
    assert vol.array.max() > vol.array.min()


@pytest.mark.tools
def test_dcm2niix_nifti_of_the_tilted_ct_is_said_to_sit_elsewhere_in_slicer(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """dcm2niix keeps the gantry tilt as a sheared sform (codes 1/1); ITK rejects it and 3D Slicer
    shows the qform's grid, 40-50 mm from mrct's: mrct said nothing."""
    import subprocess

    from tests.external_tools import require

    require("dcm2niix")
    folder = _dicom(shared_data, "ct_ge_hispeed_head_tilt")
    subprocess.run(
        ["dcm2niix", "-z", "y", "-b", "n", "-o", str(tmp_path), str(folder)], capture_output=True, check=True
    )
    converted = sorted(tmp_path.glob("*.nii.gz"))
    assert converted
    for nifti in converted:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mrct"):
            read_volume(nifti)
        assert "ITK and 3D Slicer place this image up to" in caplog.text, nifti.name
