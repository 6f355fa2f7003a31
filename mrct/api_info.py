"""``mrct info``: what an input holds, without patient identity (split from :mod:`mrct.api`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mrct.api_args import path_arg
from mrct.io import survey_volume
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
    """Describe an input: the series in a folder, a zip or a DICOMDIR's media, and the volume
    when one is chosen. ``allow_gaps`` interpolates across missing DICOM slices instead of
    refusing the series."""
    from mrct.io.dicom_scan import NO_UID
    from mrct.io.dicom_zip import is_zip

    p = path_arg(path, "path")
    found, vol = survey_volume(p, series=series, allow_gaps=allow_gaps)
    summaries = [SeriesSummary(s.key or NO_UID, s.description, s.modality, s.n_frames) for s in found]
    if vol is None:  # several series and none chosen: the listing alone
        return VolumeInfo(str(p), "dicom-zip" if is_zip(p) else "dicom", summaries)
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
