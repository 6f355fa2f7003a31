"""Broken and hostile DICOM series for the bad-input corpus (no patient data).

Each builder writes a small valid MR series with tests/dicom_factory.py and then
breaks it; tests/bad_inputs.py lists them with the error each must give.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.bad_files import good_series


def _edit_slices(folder: Path, edit: Callable[[int, pydicom.Dataset], None]) -> Path:
    """Apply ``edit(index, dataset)`` to every file of a series folder, in file-name order."""
    for n, f in enumerate(sorted(folder.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        edit(n, ds)
        ds.save_as(f)
    return folder


# -------------------------------------------------------------------------- DICOM


def dicom_missing_iop(tmp: Path) -> Path:
    return _edit_slices(good_series(tmp / "noiop"), lambda n, ds: delattr(ds, "ImageOrientationPatient"))


def dicom_skewed_iop(tmp: Path) -> Path:
    """Row and column directions 45 degrees apart: no grid has them."""

    def skew(n: int, ds: pydicom.Dataset) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0.70710678, 0.70710678, 0]

    return _edit_slices(good_series(tmp / "skew"), skew)


def _patch_bytes(folder: Path, old: bytes, new: bytes) -> Path:
    """Replace ``old`` by ``new`` (same length) in every file: values pydicom will not write."""
    assert len(old) == len(new)
    for f in folder.glob("*.dcm"):
        data = f.read_bytes()
        assert old in data
        f.write_bytes(data.replace(old, new))
    return folder


def dicom_garbled_iop(tmp: Path) -> Path:
    """ImageOrientationPatient holds a word where a number belongs."""
    folder = _edit_slices(
        good_series(tmp / "garbled"), lambda n, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
    )
    return _patch_bytes(folder, b"1.0\\0.0\\0.0\\", b"1.0\\0.0\\x.0\\")


def _break_iop(tmp: Path, name: str, value: bytes, only: int | None = None) -> Path:
    """A series whose ImageOrientationPatient starts with ``value`` (3 bytes, written as bytes:
    pydicom will not write them), in every slice or in the ``only``-th file by name."""
    folder = _edit_slices(
        good_series(tmp / name), lambda n, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
    )
    files = sorted(folder.glob("*.dcm"))
    for f in files if only is None else [files[only]]:
        data = f.read_bytes()
        assert data.count(b"1.0\\0.0\\0.0\\") == 1
        f.write_bytes(data.replace(b"1.0\\0.0\\0.0\\", value + b"\\0.0\\0.0\\"))
    return folder


def dicom_nan_iop(tmp: Path) -> Path:
    """NaN in every slice's orientation: grouped by it (NaN equals nothing), each slice was a
    "series" of its own (info listed 6, batch skipped each as a 1-image localiser, exit 0)."""
    return _break_iop(tmp, "naniop", b"nan")


def dicom_one_inf_iop(tmp: Path) -> Path:
    """One slice's orientation is infinite: it was split off as a 1-slice stack of its own."""
    return _break_iop(tmp, "infiop", b"inf", only=2)


def dicom_one_garbled_iop(tmp: Path) -> Path:
    """One slice's orientation holds a word: it was split off as a 1-slice stack of its own."""
    return _break_iop(tmp, "garbledone", b"x.0", only=2)


def dicom_duplicate_positions(tmp: Path) -> Path:
    folder = good_series(tmp / "dup")
    files = sorted(folder.glob("*.dcm"))
    pos = pydicom.dcmread(files[0]).ImagePositionPatient
    return _edit_slices(folder, lambda n, ds: setattr(ds, "ImagePositionPatient", pos) if n == 1 else None)


def dicom_huge_spacing(tmp: Path) -> Path:
    """Finite but absurd: translate ended in an internal error, convert wrote a NaN grid."""
    huge = [1e308, 1e308]
    return _edit_slices(good_series(tmp / "hugesp"), lambda n, ds: setattr(ds, "PixelSpacing", huge))


def dicom_huge_positions(tmp: Path) -> Path:
    """Slices 1e300 mm apart."""
    return _edit_slices(
        good_series(tmp / "hugepos"), lambda n, ds: setattr(ds, "ImagePositionPatient", [0, 0, n * 1e300])
    )


def dicom_no_pixel_data(tmp: Path) -> Path:
    return _edit_slices(
        good_series(tmp / "nopix"), lambda n, ds: delattr(ds, "PixelData") if n == 2 else None
    )


def dicom_short_pixel_data(tmp: Path) -> Path:
    def cut(n: int, ds: pydicom.Dataset) -> None:
        if n == 0:
            ds.PixelData = ds.PixelData[:100]

    return _edit_slices(good_series(tmp / "short"), cut)


def dicom_truncated_file(tmp: Path) -> Path:
    folder = good_series(tmp / "cutfile")
    f = sorted(folder.glob("*.dcm"))[3]
    f.write_bytes(f.read_bytes()[:-300])
    return folder


def dicom_truncated_single_file(tmp: Path) -> Path:
    """One cut slice, alone: it said "this is a single 2D slice", as if the file were whole."""
    series = good_series(tmp / "scratch")
    cut = tmp / "cut.dcm"
    cut.write_bytes(sorted(series.glob("*.dcm"))[3].read_bytes()[:-300])
    shutil.rmtree(tmp / "scratch")  # the rest of its series would make it part of a series
    return cut


def dicom_folder_of_one_truncated_file(tmp: Path) -> Path:
    """A folder holding one cut slice: it said "got a 2D image of shape (.., .., 1)"."""
    folder = tmp / "onecut"
    folder.mkdir()
    dicom_truncated_single_file(folder)
    return folder


def dicom_unsupported_syntax(tmp: Path) -> Path:
    def mpeg(n: int, ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile
        ds.PixelData = encapsulate([ds.PixelData])

    return _edit_slices(good_series(tmp / "mpeg"), mpeg)


def dicom_private_syntax(tmp: Path) -> Path:
    def private(n: int, ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = "1.3.6.1.4.1.99999.1.2"

    return _edit_slices(good_series(tmp / "private"), private)


def dicom_absurd_size(tmp: Path) -> Path:
    """Headers claiming 65535 x 65535 pixels per slice (8 GiB per slice)."""

    def huge(n: int, ds: pydicom.Dataset) -> None:
        ds.Rows = ds.Columns = 65535

    return _edit_slices(good_series(tmp / "huge"), huge)


def dicom_over_limit(tmp: Path) -> Path:
    """4096 x 4096 slices (400 MiB in all as float32): over a 64 MiB limit, with 100-byte pixel data."""

    def big(n: int, ds: pydicom.Dataset) -> None:
        ds.Rows = ds.Columns = 4096
        ds.PixelData = ds.PixelData[:100]

    return _edit_slices(good_series(tmp / "big"), big)


def dicom_mixed_sizes(tmp: Path) -> Path:
    """One slice of the series is 10 x 12 instead of 20 x 24 (a valid file on its own)."""

    def shrink(n: int, ds: pydicom.Dataset) -> None:
        if n == 2:
            ds.PixelData = ds.pixel_array[::2, ::2].tobytes()
            ds.Rows, ds.Columns = 10, 12

    return _edit_slices(good_series(tmp / "mixed"), shrink)


def dicom_iop_differs(tmp: Path) -> Path:
    """One slice of the series is tilted 10 degrees against the others."""

    def tilt(n: int, ds: pydicom.Dataset) -> None:
        if n == 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0.98480775, -0.17364818]

    return _edit_slices(good_series(tmp / "tilt"), tilt)


def dicom_nan_slope(tmp: Path) -> Path:
    return _edit_slices(good_series(tmp / "nanslope"), lambda n, ds: setattr(ds, "RescaleSlope", "NaN"))


def dicom_bad_position(tmp: Path) -> Path:
    """ImagePositionPatient of every slice holds a word where a number belongs."""

    def mark(n: int, ds: pydicom.Dataset) -> None:
        ds.ImagePositionPatient = [1, 2, 2.5 * n]

    folder = _edit_slices(good_series(tmp / "badpos"), mark)
    return _patch_bytes(folder, b"1.0\\2.0\\", b"1.0\\?.0\\")


def dicom_deflate_bomb(tmp: Path) -> Path:
    """Deflated Explicit VR Little Endian: 50 kB that inflate to 48 MiB."""
    folder = tmp / "bomb"
    folder.mkdir()
    src = good_series(tmp / "src")
    ds = pydicom.dcmread(sorted(src.glob("*.dcm"))[0])
    shutil.rmtree(src)
    ds.add_new(0x00091010, "OB", b"\0" * (48 * 1024**2))  # a private element full of zeros
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(folder / "bomb.dcm", enforce_file_format=True)
    return folder / "bomb.dcm"


def dicomdir_only(tmp: Path) -> Path:
    folder = tmp / "dir only"
    folder.mkdir()
    (folder / "README.txt").write_text("images are on the other disc\n")
    return folder
