"""Read one DICOM series, its files found and grouped (:mod:`mrct.io.dicom_input`), into a Volume.

Voxel layout follows dcm2niix's defaults so that our NIfTI output can be
compared with dcm2niix's directly: i runs along DICOM columns, j along rows in
reverse order, k along the slice normal; 3D acquisitions (MRAcquisitionType
3D) are then turned, losslessly, to the axis order closest to RAS.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrct.errors import GeometryError, MrctError, ReadError, first_line
from mrct.io.dicom_file import check_deflated, dcmread, incomplete_image
from mrct.io.dicom_geometry import (
    SliceGeometry,
    orientation_from_iop,
    plan_stack,
    resample_stack,
)
from mrct.io.dicom_pixels import load_pixels, pixel_dataset, rescale, transfer_syntax_name
from mrct.io.dicom_scan import SeriesFiles, header_int
from mrct.io.dicom_split import complex_part
from mrct.io.limits import check_bytes, check_voxels
from mrct.io.orientation import lps_to_ras, rotate_like_dcm2niix
from mrct.io.validate import check_affine, check_shape, check_values
from mrct.volume import PATIENT_KEYWORDS, STUDY_KEYWORDS, DicomSource, Modality, SourceInfo, Volume

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)


PIXEL_SPACING_TOL_MM = 1e-5  # at most 0.005 mm across 512 pixels


@dataclass(frozen=True)
class _Frame:
    """One 2D image: where it lies (LPS mm) and how to rescale its stored values."""

    position: tuple[float, ...]
    iop: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    file_index: int
    frame_index: int | None  # None for single-frame files


def read_series_files(
    chosen: SeriesFiles, where: Path, modality: Modality | None, allow_gaps: bool
) -> Volume:
    """Read one series whose files are already grouped (``mrct batch`` groups and splits them)."""
    try:
        return _read_series(chosen, where, modality, allow_gaps)
    except (MrctError, MemoryError):
        raise
    except OSError as err:
        raise ReadError(f"cannot read the file: {err.strerror or err}", err.filename or where) from err
    except Exception as err:  # pydicom converts values lazily: on a damaged header any access may raise
        why = f"{type(err).__name__}: {first_line(err)}"
        raise ReadError(f"unreadable DICOM header value ({why})", where) from err


def _read_series(chosen: SeriesFiles, where: Path, modality: Modality | None, allow_gaps: bool) -> Volume:

    _check_headers(chosen, where)
    datasets: list[Dataset] = []  # whole datasets: the headers, or read again
    with_pixels: list[Dataset] = []  # the pixel data and what decoding it needs
    headers = chosen.headers if len(chosen.headers) == len(chosen.files) else (None,) * len(chosen.files)
    for f, header in zip(chosen.files, headers, strict=True):
        # Before any shape check: a folder holding one cut file said "got a 2D image".
        if header is not None and (damaged := incomplete_image(f, header)):
            raise ReadError(damaged, f)
        try:
            pixel_ds = pixel_dataset(header) if header is not None else None
            if header is not None and pixel_ds is not None:
                ds = header
            else:
                check_deflated(f)
                ds = pixel_ds = dcmread(f)
        except MrctError:
            raise
        except Exception as err:  # pydicom raises many kinds for a damaged file
            raise ReadError(f"unreadable DICOM file ({type(err).__name__}: {first_line(err)})", f) from err
        if "PixelData" not in pixel_ds and "FloatPixelData" not in pixel_ds:
            raise ReadError("DICOM file has no pixel data (truncated, or not an image)", f)
        datasets.append(ds)
        with_pixels.append(pixel_ds)
    first = datasets[0]
    _check_pixel_format(first, chosen.files[0])
    frames = [fr for i, ds in enumerate(datasets) for fr in _frames_of(ds, i, chosen.files[i])]
    geom = _common_geometry(frames, where)
    rows, cols = int(first.Rows), int(first.Columns)
    check_shape((cols, rows, len(frames)), where)
    positions = np.array([f.position for f in frames], dtype=np.float64)
    plan = plan_stack(positions, geom, rows, cols, allow_gaps=allow_gaps, where=str(where))
    pixels = load_pixels(with_pixels, frames, chosen.files, rows, cols)
    slopes = np.array([f.slope for f in frames])
    intercepts = np.array([f.intercept for f in frames])
    values = rescale(pixels, slopes, intercepts)
    if plan.resample:
        log.warning(
            "%s: %s; resampled onto a rectilinear grid of %.3f mm slices along the slice normal "
            "(like dcm2niix's _Tilt/_Eq files, which differ in extent and slice count)",
            where,
            plan.reason,
            float(np.linalg.norm(plan.affine_lps[:3, 2])),
        )
        stack = resample_stack(values, positions, geom, plan, fill=float(values.min()))
    else:
        stack = values[plan.order]
    # [slice, row, col] -> [col, row, slice] = [i, j, k]; then reverse j like dcm2niix.
    array = np.ascontiguousarray(np.flip(stack.transpose(2, 1, 0), axis=1))
    affine = lps_to_ras(plan.affine_lps)
    affine[:3, 3] += affine[:3, 1] * (array.shape[1] - 1)
    affine[:3, 1] *= -1
    check_affine(affine, where)  # finite but absurd headers (PixelSpacing 1e308)
    if str(first.get("MRAcquisitionType", "")).upper() == "3D":
        array, affine = rotate_like_dcm2niix(array, affine)
    check_values(array, where)
    detected = {"CT": Modality.CT, "MR": Modality.MR}.get(str(first.get("Modality", "")))
    files = tuple(str(f) for f in chosen.files)
    source = SourceInfo(str(where), "dicom", _dicom_source(first, datasets), files=files)
    return Volume(array, affine, modality or detected, source)


def _check_headers(chosen: SeriesFiles, where: Path) -> None:
    """Before any pixel data is read: one image size, a supported transfer syntax, and the memory limit."""
    from pydicom.pixels import get_decoder

    headers = chosen.headers
    if not headers:
        return
    sizes = {(header_int(ds, "Rows"), header_int(ds, "Columns")) for ds in headers}
    if len(sizes) > 1:
        shown = ", ".join(f"{r} x {c}" for r, c in sorted(sizes))
        raise GeometryError(f"slices of different sizes in one series (Rows x Columns {shown})", where)
    rows, cols = sizes.pop()
    if rows < 1 or cols < 1:
        raise ReadError(f"impossible image size: Rows {rows}, Columns {cols}", where)
    frames = sum(max(1, header_int(ds, "NumberOfFrames", 1)) for ds in headers)
    bits = max(header_int(ds, "BitsAllocated", 16) for ds in headers)
    check_voxels((cols, rows, frames), max(1, bits // 8), where)
    check_bytes(sum(f.stat().st_size for f in chosen.files), "the series' files", where)
    # A file without one has its encoding guessed when it is read (old ACR-NEMA style files).
    syntaxes = {getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) for ds in headers}
    for uid in (u for u in syntaxes if u is not None):
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:
            available = False
        if not available:
            name = transfer_syntax_name(uid)
            raise ReadError(f"transfer syntax {name} is not supported (no decoder for it)", where)


def _check_pixel_format(ds: Dataset, path: Path) -> None:
    if header_int(ds, "SamplesPerPixel", 1) != 1:
        raise ReadError("colour images are not supported; a greyscale CT or MR is needed", path)
    # MONOCHROME1 only inverts the display; stored values still map to HU/MR units.
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ReadError(f"unsupported PhotometricInterpretation {photometric}", path)


def _frames_of(ds: Dataset, file_index: int, path: Path) -> list[_Frame]:
    """Single-frame files give one frame; enhanced multi-frame files give many."""
    n_frames = max(1, header_int(ds, "NumberOfFrames", 1))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        if n_frames > 1:
            raise ReadError("multi-frame file without per-frame geometry is not supported", path)
        return [_frame_from(ds, ds, ds, file_index, None, path)]
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    frames = []
    for f, item in enumerate(per_frame):
        frames.append(_frame_from(item, shared, ds, file_index, f, path))
    return frames


def _group_value(item: Dataset | None, shared: Dataset | None, seq: str, key: str) -> Any:
    """A functional-group value, per-frame first, then shared (or flat for classic files)."""
    for source in (item, shared):
        if source is None:
            continue
        if seq in source and source[seq].value:
            inner = source[seq].value[0]
            if key in inner:
                return inner[key].value
        if key in source:
            return source[key].value
    return None


def _numbers(
    item: Dataset | None, shared: Dataset | None, seq: str, key: str, where: str
) -> tuple[float, ...] | None:
    """A decimal-string value as finite floats; None when absent. Garbage is a GeometryError."""
    try:
        value = _group_value(item, shared, seq, key)
        if value is None or value == "":
            return None
        many = isinstance(value, Sequence) and not isinstance(value, str | bytes)  # pydicom's MultiValue
        numbers = tuple(float(v) for v in (value if many else [value]))
    except (TypeError, ValueError):  # pydicom parses decimal strings lazily, on access
        raise GeometryError(f"{key} is not a list of numbers", where) from None
    if not all(math.isfinite(v) for v in numbers):
        raise GeometryError(f"{key} holds a value that is not a finite number", where)
    return numbers


def _frame_from(
    item: Dataset, shared: Dataset | None, root: Dataset, file_index: int, frame: int | None, path: Path
) -> _Frame:
    where = f"{path}" if frame is None else f"{path} (frame {frame + 1})"
    pos = _numbers(item, shared, "PlanePositionSequence", "ImagePositionPatient", where)
    iop = _numbers(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient", where)
    spacing = _numbers(item, shared, "PixelMeasuresSequence", "PixelSpacing", where)
    slope = _numbers(item, shared, "PixelValueTransformationSequence", "RescaleSlope", where)
    inter = _numbers(item, shared, "PixelValueTransformationSequence", "RescaleIntercept", where)
    if pos is None or len(pos) != 3:
        raise GeometryError("missing ImagePositionPatient", where)
    if iop is None:
        raise GeometryError("missing ImageOrientationPatient", where)
    if spacing is None or len(spacing) != 2 or min(spacing) <= 0:
        raise GeometryError("missing or non-positive PixelSpacing", where)
    if slope is None and root is not item:
        slope = _numbers(root, None, "", "RescaleSlope", where)
        inter = _numbers(root, None, "", "RescaleIntercept", where) if inter is None else inter
    if slope is not None and slope[0] == 0:
        raise ReadError("RescaleSlope is 0: every voxel would equal the intercept", where)
    return _Frame(
        position=pos,
        iop=iop,
        pixel_spacing=(spacing[0], spacing[1]),
        slope=1.0 if slope is None else slope[0],
        intercept=0.0 if inter is None else inter[0],
        file_index=file_index,
        frame_index=frame,
    )


def _common_geometry(frames: list[_Frame], where: Path) -> SliceGeometry:
    ref = np.array(frames[0].iop)
    for f in frames[1:]:
        if np.max(np.abs(np.array(f.iop) - ref)) > 1e-3:
            raise GeometryError("slices have different ImageOrientationPatient", where)
        # Exporters print PixelSpacing with differing rounding (1e-7 mm apart): that is one grid.
        if np.max(np.abs(np.subtract(f.pixel_spacing, frames[0].pixel_spacing))) > PIXEL_SPACING_TOL_MM:
            raise GeometryError("slices have different PixelSpacing", where)
    r, c = orientation_from_iop(ref, str(where))
    row_sp, col_sp = frames[0].pixel_spacing
    return SliceGeometry(r, c, row_sp, col_sp)


def _dicom_source(first: Dataset, datasets: list[Dataset]) -> DicomSource:
    def text(ds: Dataset, key: str) -> str:
        v = ds.get(key)
        # A multi-value in DICOM's own form (str() gave "['A', 'B']", copied into the output).
        if isinstance(v, Sequence) and not isinstance(v, (str, bytes)):
            return "\\".join(str(x) for x in v)
        return "" if v is None else str(v)

    number = first.get("SeriesNumber")
    return DicomSource(
        series_instance_uid=text(first, "SeriesInstanceUID"),
        sop_class_uid=text(first, "SOPClassUID"),
        frame_of_reference_uid=text(first, "FrameOfReferenceUID") or None,
        modality=text(first, "Modality"),
        patient={k: text(first, k) for k in PATIENT_KEYWORDS if k in first},
        study={k: text(first, k) for k in STUDY_KEYWORDS if k in first},
        series_description=text(first, "SeriesDescription"),
        series_number=int(number) if number not in (None, "") else None,
        manufacturer=text(first, "Manufacturer"),
        patient_position=text(first, "PatientPosition"),
        position_reference_indicator=text(first, "PositionReferenceIndicator"),
        sop_instance_uids=tuple(text(ds, "SOPInstanceUID") for ds in datasets),
        complex_part=complex_part(first),
        **_lossy_history(datasets),
    )


# Transfer syntaxes that are lossy whatever the header says (JPEG 2000's may be lossless: its
# files say so in LossyImageCompression), with their PS3.3 method names.
_LOSSY_SYNTAX_METHOD = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
}


def _lossy_history(datasets: list[Dataset]) -> dict[str, Any]:
    """DicomSource's lossy_methods and lossy_ratios: whether any file was lossy compressed."""
    for ds in datasets:
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
        if str(ds.get("LossyImageCompression", "")).strip() == "01" or syntax in _LOSSY_SYNTAX_METHOD:
            methods = [str(m) for m in _values(ds.get("LossyImageCompressionMethod"))]
            ratios = [str(r) for r in _values(ds.get("LossyImageCompressionRatio"))]
            if not methods and syntax in _LOSSY_SYNTAX_METHOD:
                methods = [_LOSSY_SYNTAX_METHOD[syntax]]
            return {"lossy_methods": tuple(methods), "lossy_ratios": tuple(ratios)}
    return {}


def _values(value: Any) -> list[Any]:
    """A header value as a list (pydicom gives one value bare, several as a MultiValue)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
