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
