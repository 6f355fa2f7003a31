"""One slice of a series cropped to another image size: split off by size (as dcm2niix splits),
it was a 1-image stack skipped as "a localiser?", exit 0, and the series was translated one slice
short, or failed on a gap that --allow-gaps would have filled over a slice that exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from mrct.batch_series import discover
from tests.bad_files import good_series
from tests.dicom_factory import write_series


def _crop_last_slice(folder: Path) -> Path:
    last = sorted(folder.glob("*.dcm"))[-1]
    ds = pydicom.dcmread(last)
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:-4]).tobytes()
    ds.Rows -= 4
    ds.save_as(last)
    return last


def test_a_slice_of_another_size_fails_naming_it(tmp_path: Path) -> None:
    folder = good_series(tmp_path / "in" / "t1")
    cropped = _crop_last_slice(folder)
    rows = {s.id.split("#")[-1]: s for s in discover(tmp_path / "in")}
    assert sorted(rows) == ["1", "2"]
    main, odd = rows["1"], rows["2"]
    assert main.error is None and main.skip is None and main.stack is not None and len(main.stack.files) == 5
    assert odd.skip is None
    assert odd.error == (
        f"t1/{cropped.name}: 16 x 24 pixels, in a series of 20 x 24 of the same orientation: "
        "a damaged or foreign slice; the rest is read without it"
    )


def test_a_localiser_of_another_orientation_is_still_skipped(tmp_path: Path) -> None:
    """A 1-image stack in another orientation (a localiser sharing the UID) stays a skip."""
    series = write_series(tmp_path / "in" / "t1", modality="MR", shape=(20, 24, 6))
    loc = write_series(tmp_path / "in" / "loc", modality="MR", shape=(24, 24, 1), plane="coronal")
    for f in loc.files:  # the localiser joins the T1's series
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series.series_uid
        ds.save_as(f)
    rows = discover(tmp_path / "in")
    small = [s for s in rows if s.stack is not None and len(s.stack.files) == 1]
    assert len(small) == 1 and small[0].error is None and small[0].skip == "a 1-image stack (a localiser?)"


def test_a_derived_or_overlapping_image_of_another_size_stays_skipped(tmp_path: Path) -> None:
    """A thumbnail or MIP a scanner or PACS adds to a series (DERIVED, or at a position the stack
    holds) is not a missing slice: batch failed a complete series over one (a review)."""
    folder = good_series(tmp_path / "in" / "t1")
    files = sorted(folder.glob("*.dcm"))
    for name, image_type, copy_of, n in [
        ("thumb", ["DERIVED", "SECONDARY"], 5, 8),
        ("overlay", ["ORIGINAL"], 2, 10),
    ]:
        ds = pydicom.dcmread(files[copy_of])
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:n, :n]).tobytes()
        ds.Rows, ds.Columns = n, n
        ds.ImageType = image_type
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"{name}.dcm")
    rows = discover(tmp_path / "in")
    small = [s for s in rows if s.stack is not None and len(s.stack.files) == 1]
    assert len(small) == 2 and all(
        s.error is None and s.skip == "a 1-image stack (a localiser?)" for s in small
    )
    assert [len(s.stack.files) for s in rows if s.stack is not None and len(s.stack.files) > 1] == [6]
