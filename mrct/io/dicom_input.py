"""Where a DICOM input's series are: a folder, a zip, a DICOMDIR's media or an enhanced
multi-frame file; the one chosen is read by :mod:`mrct.io.dicom_read`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from mrct.errors import ReadError
from mrct.io.dicom_file import incomplete_image
from mrct.io.dicom_read import read_series_files
from mrct.io.dicom_scan import NO_DICOM_FOUND, SeriesFiles, find_series, media_folder, select_series
from mrct.io.dicom_zip import is_zip, unzipped
from mrct.volume import Modality, SourceInfo, Volume


def _series_in_zip(folder: Path, path: Path) -> list[Any]:
    """The DICOM series of an unpacked zip; a zip of a NIfTI (or other scan file) says so: it
    said "no DICOM image files found in folder" of a zip."""
    try:
        return find_series(media_folder(folder), path)
    except ReadError as err:
        if err.message != NO_DICOM_FOUND:  # a damaged slice, a geometry error: as it is
            raise
        from mrct.io.discover import SCAN_SUFFIXES

        scans = sorted(
            str(f.relative_to(folder)) for f in folder.rglob("*") if f.name.lower().endswith(SCAN_SUFFIXES)
        )
        if not scans:
            raise ReadError("no DICOM image files in the zip", path) from None
        raise ReadError(
            f"the zip holds no DICOM series but a scan file ({scans[0]}); unzip it and give mrct that file",
            path,
        ) from None


def read_dicom(
    path: Path,
    *,
    series: str | None = None,
    modality: Modality | None = None,
    allow_gaps: bool = False,
) -> Volume:
    """Read a series folder, an enhanced multi-frame file, or a zip of either."""
    if is_zip(path) or media_folder(path).is_dir():
        vol = _survey(path, series, modality, allow_gaps, list_only=False)[1]
        assert vol is not None  # list_only=False: a volume, or SeriesSelectionError
        return vol
    from mrct.io.dicom_scan import group_series

    found = group_series([path])
    if not found:
        raise ReadError("not a recognised image (NIfTI, NRRD, MHA or DICOM)", path)
    chosen = found[0]
    if chosen.n_frames == 1:
        # A cut copy is damaged whatever else is true of it: say that first.
        damaged = incomplete_image(path, chosen.headers[0]) if chosen.headers else None
        raise ReadError(
            damaged or "a 3D volume is needed; this is a single 2D slice (point mrct at the series folder)",
            path,
        )
    return read_series_files(chosen, path, modality, allow_gaps)


def survey(path: Path, series: str | None, allow_gaps: bool) -> tuple[list[SeriesFiles], Volume | None]:
    """The series of a folder, a zip or a DICOMDIR's media (none for a multi-frame file), and
    the volume of the one chosen (``series``, or the only one; None when there are several and
    none is named), from one walk and one unpacking, as ``mrct info`` shows them. A zip's series
    name no files and hold no headers: its unpacked copy is gone when this returns."""
    if is_zip(path):
        found, volume = _survey(path, series, None, allow_gaps, list_only=True)
        return [dataclasses.replace(s, files=(), headers=()) for s in found], volume
    if media_folder(path).is_dir():
        return _survey(path, series, None, allow_gaps, list_only=True)
    return [], read_dicom(path, series=series, allow_gaps=allow_gaps)


def _survey(
    path: Path, series: str | None, modality: Modality | None, allow_gaps: bool, *, list_only: bool
) -> tuple[list[SeriesFiles], Volume | None]:
    """``list_only``: several series and none named is a listing, not a SeriesSelectionError."""
    if is_zip(path):
        with unzipped(path) as folder:
            found = _series_in_zip(folder, path)
            if list_only and series is None and len(found) > 1:
                return found, None
            chosen = select_series(found, series, folder)
            # Warnings and errors name the series as "the.zip/its/folder", not the temporary copy.
            member = Path(os.path.commonpath(chosen.files)).relative_to(folder)
            vol = read_series_files(chosen, path / member if member.parts else path, modality, allow_gaps)
        return found, vol.replace(source=SourceInfo(str(path), "dicom-zip", vol.source.dicom))
    folder = media_folder(path)  # a DICOMDIR file: the series it indexes
    found = find_series(folder)
    if list_only and series is None and len(found) > 1:
        return found, None
    return found, read_series_files(select_series(found, series, folder), folder, modality, allow_gaps)
