"""What every writer refuses of a Volume built in memory, in one typed line and with no file
left: found by a researcher's walk through the API, where NIfTI and ITK raised their libraries'
own errors and NRRD wrote a NaN grid that read back as another one."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrct.errors import InputNotFoundError, ReadError, WriteError
from mrct.io import read_volume, write_volume
from mrct.volume import Modality, Volume
from tests.phantoms import phantom

NAMES = ["v.nii.gz", "v.nrrd", "v.mha", "dicom/"]

BAD_AFFINES = {
    "NaN": (np.diag([np.nan, 1.0, 1.0, 1.0]), "not finite"),
    "singular": (np.diag([1.0, 1.0, 0.0, 1.0]), "degenerate voxel spacing"),
    "last row": (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.5, 1.0]]), "not 0 0 0 1"),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", sorted(BAD_AFFINES))
def test_a_grid_no_scan_has_is_refused_in_every_format(tmp_path: Path, name: str, case: str) -> None:
    """Before: NIfTI raised nibabel's HeaderDataError, NRRD wrote a NaN grid that read back as
    -1 0 0 / 0 1 0 / 0 0 1 without a word, MHA one no reader takes, and a last row of
    0 0 0.5 1 was dropped by all three (read back as the identity)."""
    affine, why = BAD_AFFINES[case]
    vol = phantom(shape=(6, 7, 8)).replace(affine=affine)
    with pytest.raises(WriteError, match=why):
        write_volume(vol, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.complex64, object])
def test_voxels_that_are_no_intensities_are_refused(tmp_path: Path, name: str, dtype: type) -> None:
    """Complex voxels were written to NIfTI, NRRD and MHA, files read_volume then refused; object
    voxels raised nibabel's HeaderDataError or ITK's TypeError."""
    vol = Volume(np.ones((6, 7, 8), dtype=dtype), np.eye(4), Modality.MR)
    with pytest.raises(WriteError, match="cannot write voxels of type"):
        write_volume(vol, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_booleans_are_still_written(tmp_path: Path) -> None:
    mask = Volume(np.zeros((6, 7, 8), dtype=bool), np.eye(4), Modality.MR)
    assert write_volume(mask, tmp_path / "mask.nii.gz").is_file()


def test_nifti1_says_it_cannot_hold_a_long_axis(tmp_path: Path) -> None:
    """dim[] of NIfTI-1 is int16: nibabel raised HeaderDataError ("does not fit in dim datatype")."""
    vol = Volume(np.zeros((40000, 3, 3), np.uint8), np.eye(4), Modality.MR)
    with pytest.raises(WriteError, match=r"at most 32767 voxels along an axis.*nrrd or \.mha"):
        write_volume(vol, tmp_path / "long.nii.gz")
    assert list(tmp_path.iterdir()) == []
    assert read_volume(write_volume(vol, tmp_path / "long.nrrd")).shape == (40000, 3, 3)


@pytest.mark.parametrize("name", ["big.nii.gz", "big.nrrd"])
def test_a_float64_file_beyond_float32_says_so(tmp_path: Path, name: str) -> None:
    """Readers cast to float32 before checking: "336 of 336 voxels are infinite", after numpy's
    overflow warning, of a file with no infinite voxel (an array in memory was told the truth)."""
    data = np.full((6, 7, 8), 1e39)
    if name.endswith(".nii.gz"):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / name)
    else:
        write_volume(Volume(data, np.eye(4), Modality.MR), tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflow warning leaked to stderr
        with pytest.raises(ReadError, match="beyond float32's range"):
            read_volume(tmp_path / name)


def test_dicom_without_a_modality_says_how_to_give_one(tmp_path: Path) -> None:
    """The error advised "pass modality=CT or MR", an argument write_volume does not take."""
    vol = phantom(shape=(6, 7, 8)).replace(modality=None)
    with pytest.raises(WriteError, match=r"volume.replace\(modality="):
        write_volume(vol, tmp_path / "dicom/")
    fixed = vol.replace(modality="MR")
    assert len(list(write_volume(fixed, tmp_path / "dicom/").iterdir())) == 8


def test_translate_file_says_the_input_is_missing_before_loading_a_model(tmp_path: Path) -> None:
    """It loaded the model first (seconds), and with an unknown model said that instead."""
    from mrct import translate_file

    with pytest.raises(InputNotFoundError, match="no such file"):
        translate_file(tmp_path / "typo.nii.gz", to="ct", model="no-such-model")


def test_a_last_row_off_by_rounding_is_written_exactly(tmp_path: Path) -> None:
    """From review: 1e-17 0 -2e-17 1 (arithmetic on an affine) was refused in every format; the
    DICOM writer had taken it. A last row that is no rounding is still refused."""
    vol = phantom(shape=(6, 7, 8))
    noisy = vol.affine.copy()
    noisy[3] = [1e-17, 0.0, -2e-17, 1.0]
    for name in NAMES:
        back = read_volume(write_volume(vol.replace(affine=noisy), tmp_path / name))
        # The same world grid (DICOM is written in a scanner's slice layout: the corners agree)
        assert sorted(np.round(_corners(back), 3).tolist()) == sorted(np.round(_corners(vol), 3).tolist())
    noisy[3, 3] = 2.0
    with pytest.raises(WriteError, match="not 0 0 0 1"):
        write_volume(vol.replace(affine=noisy), tmp_path / "other.nii.gz")


def _corners(vol: Volume) -> np.ndarray:
    ijk = np.array(
        [
            [i, j, k, 1]
            for i in (0, vol.shape[0] - 1)
            for j in (0, vol.shape[1] - 1)
            for k in (0, vol.shape[2] - 1)
        ]
    )
    return (vol.affine @ ijk.T).T[:, :3]
