"""``mrct info``: what an input holds, without patient identity (split from :mod:`mrct.api`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mrct.api_args import path_arg, text_arg
from mrct.errors import SeriesSelectionError
from mrct.io import read_volume
from mrct.volume import guess_modality


@dataclass(frozen=True)
class SeriesSummary:
    uid: str
    description: str
    modality: str
    slices: int


@dataclass(frozen=True)
class VolumeInfo:
    """What ``mrct info`` reports. No patient identity is included."""

    path: str
    format: str
    series: list[SeriesSummary] = field(default_factory=list)
    modality: str | None = None
    modality_from: str | None = None  # "header" or "intensities"
    shape: tuple[int, int, int] | None = None
    spacing_mm: tuple[float, float, float] | None = None
    orientation: str | None = None
    value_range: tuple[float, float] | None = None
    dtype: str | None = None


def info(path: str | Path, series: str | None = None, *, allow_gaps: bool = False) -> VolumeInfo:
    """Describe an input: the series in a folder, and the volume when one is chosen.
    ``allow_gaps`` interpolates across missing DICOM slices instead of refusing the series."""
    p, series = path_arg(path, "path"), text_arg(series, "series")
    summaries: list[SeriesSummary] = []
    if p.is_dir():
        from mrct.io.dicom_read import read_series_files
        from mrct.io.dicom_scan import NO_UID, find_series, select_series

        found = find_series(p)
        summaries = [SeriesSummary(s.key or NO_UID, s.description, s.modality, s.n_frames) for s in found]
        if len(found) > 1 and series is None:
            return VolumeInfo(str(p), "dicom", summaries)
        # The series found above, not a second search of the folder (what read_volume does).
        vol = read_series_files(select_series(found, series, p), p, None, allow_gaps=allow_gaps)
    else:
        try:
            vol = read_volume(p, series=series, allow_gaps=allow_gaps)
        except SeriesSelectionError:
            if series is not None or not p.is_file():
                raise
            from mrct.io.dicom_read import list_series
            from mrct.io.dicom_zip import is_zip

            # A zip or a DICOMDIR holding several series: listed as a folder's are.
            kind = "dicom-zip" if is_zip(p) else "dicom"  # as for a zip of one series
            return VolumeInfo(str(p), kind, [SeriesSummary(*found) for found in list_series(p)])
    modality, source = vol.modality, "header"
    if modality is None:
        modality, source = guess_modality(vol), "intensities"
    lo, hi = float(vol.array.min()), float(vol.array.max())
    return VolumeInfo(
        path=str(p),
        format=vol.source.format,
        series=summaries,
        modality=modality.value if modality else None,
        modality_from=source if modality else None,
        shape=vol.shape,
        spacing_mm=tuple(round(s, 6) for s in vol.spacing),  # type: ignore[arg-type]
        orientation=vol.orientation,
        value_range=(lo, hi),
        dtype=str(vol.array.dtype),
    )
