"""Copies of one DICOM image (same SOPInstanceUID) count once, as dcm2niix removes duplicates.

A study copied twice into a folder, or one file copied beside its series, would otherwise read
as slices sharing a position. A copy cut short is never chosen while a whole one exists.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from mrct.errors import ReadError
from mrct.io import read_volume
from mrct.io.dicom_file import read_header_dataset
from mrct.io.dicom_scan import unique_instances
from tests.dicom_factory import write_series


def test_copies_are_read_once_from_a_whole_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_series(tmp_path / "s", modality="CT", shape=(16, 16, 6))
    reference = read_volume(tmp_path / "s")
    cut = src.files[2].read_bytes()[:-20]
    (tmp_path / "s" / "000_cut_copy.dcm").write_bytes(cut)  # found before its whole original
    shutil.copy(src.files[4], tmp_path / "s" / "zzz_whole_copy.dcm")

    with caplog.at_level(logging.WARNING):
        volume = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_array_equal(volume.affine, reference.affine)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.endswith(
            f"000_cut_copy.dcm: truncated DICOM image file ({len(cut)} bytes; its pixel data end at "
            f"byte {len(cut) + 20}); a whole copy of this image is read instead"
        )
        for m in messages
    ), messages
    assert any(
        "1 duplicate file(s) of images already found (same SOPInstanceUID) left out" in m for m in messages
    )


def test_a_cut_file_without_a_whole_copy_still_fails_naming_it(tmp_path: Path) -> None:
    src = write_series(tmp_path / "s", modality="CT", shape=(16, 16, 6))
    src.files[2].write_bytes(src.files[2].read_bytes()[:-20])
    with pytest.raises(ReadError) as err:
        read_volume(tmp_path / "s")
    assert src.files[2].name in str(err.value)


def test_files_without_an_instance_uid_are_all_kept(tmp_path: Path) -> None:
    src = write_series(tmp_path / "s", modality="MR", shape=(8, 8, 3))
    members = [(f, read_header_dataset(f)) for f in src.files]
    for _, ds in members:
        del ds.SOPInstanceUID
    kept, damaged = unique_instances(members)
    assert kept == members and damaged == []


@pytest.mark.parametrize("shared", ["ends", "all"])
def test_images_at_other_places_that_share_a_uid_are_all_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, shared: str
) -> None:
    """From a hunt: slices a broken exporter gave one SOPInstanceUID were taken for copies of one
    image: an end slice was dropped in silence (the warning spoke of duplicate files), and with
    one UID for all the series was "a 2D image"; dcm2niix reads every slice."""
    import pydicom

    src = write_series(tmp_path / "s", modality="MR", shape=(16, 16, 6))
    reference = read_volume(tmp_path / "s")
    ordered = sorted(src.files, key=lambda f: int(pydicom.dcmread(f).InstanceNumber))
    for f in ordered if shared == "all" else [ordered[0], ordered[-1]]:
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.save_as(f)
    shutil.copy(ordered[2], tmp_path / "s" / "zzz_whole_copy.dcm")  # a true copy still counts once
    with caplog.at_level(logging.WARNING):
        volume = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_array_equal(volume.affine, reference.affine)
    n = 6 if shared == "all" else 2
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{n} images at different places share their SOPInstanceUID" in m for m in messages), messages
    assert any("1 duplicate file(s) of images already found" in m for m in messages), messages


def _reprinted(ds: object, how: str) -> None:
    if how == "position digits":
        ds.ImagePositionPatient = [f"{float(v):.6f}" for v in ds.ImagePositionPatient]  # type: ignore[attr-defined]
    elif how == "position rounding":  # 10.00044999999 and 10.00045: either side of 4 decimals
        x, y, z = (float(v) for v in ds.ImagePositionPatient)  # type: ignore[attr-defined]
        ds.ImagePositionPatient = [f"{x:.11f}", f"{y + 0.00045 - 1e-11:.11f}", f"{z:.6f}"]  # type: ignore[attr-defined]
    elif how == "negative zero":
        ds.ImageOrientationPatient = ["-0" if float(v) == 0 else str(v) for v in ds.ImageOrientationPatient]  # type: ignore[attr-defined]
    else:
        ds.AcquisitionNumber = "01"  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["position digits", "position rounding", "negative zero", "acquisition 01"])
def test_a_copy_printing_its_numbers_otherwise_is_still_a_copy(tmp_path: Path, how: str) -> None:
    """A re-export may write 12.5 as 12.500000, 0 as -0, an acquisition 1 as 01, or round the last
    digit otherwise: the same image, counted once (from review: compared as text, each was "2
    images at different places", then "2 slices share a position")."""
    import pydicom

    src = write_series(tmp_path / "s", modality="MR", shape=(16, 16, 6))
    ds = pydicom.dcmread(src.files[1])
    if how == "position rounding":  # the original at the other side of the boundary
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.11f}", f"{y + 0.00045:.11f}", f"{z:.6f}"]
        ds.save_as(src.files[1])
    ds.AcquisitionNumber = "1"
    ds.save_as(src.files[1])
    _reprinted(ds, how)
    ds.save_as(tmp_path / "s" / "zzz_reexported.dcm")
    assert read_volume(tmp_path / "s").shape[2] == 6
