"""Write a :class:`~mrct.volume.Volume` as a DICOM series (one file per slice).

Frames: mrct affines map voxel ``(i, j, k)`` to RAS mm; DICOM geometry
(ImagePositionPatient, ImageOrientationPatient) is LPS mm. The conversion goes
through :func:`mrct.io.orientation.ras_to_lps` only.

Layout: the volume is first turned, losslessly, to the layout scanners give the slices of its
plane (:func:`mrct.io.orientation.scanner_layout`): an axial slice of a head-first-supine patient
has the patient's right on the left and the face at the top, as planning systems, which draw
pixels as stored, expect, and the files run along the slice normal. Then, as the mrct DICOM
reader and dcm2niix read it, slice ``k`` becomes one file whose pixel ``(row, col)`` holds
``array[col, J - 1 - row, k]`` (i = DICOM column, j = reversed DICOM row).
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from mrct.errors import WriteError
from mrct.io.atomic import Owned, atomic_dir
from mrct.io.dicom_encode import SeriesEncoder
from mrct.io.dicom_identity import patient_study, source_references
from mrct.io.orientation import largest_move, ras_to_lps, scanner_layout, squared_up
from mrct.io.validate import storable
from mrct.volume import ROUNDING_SHEAR, Modality, Volume, shear

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mrct.io.anonymize import Anonymizer

__all__ = ["SERIES_FILES", "write_dicom_series"]

# The names write_dicom_series gives its files: --overwrite replaces a folder holding only these.
SERIES_FILES = Owned(re.compile(r"IM_\d{4,}\.dcm"))

DEFAULT_SERIES_NUMBER = 999
"""SeriesNumber used when none is given and the source has none: a DICOM source's number plus
:data:`DERIVED_SERIES_OFFSET` otherwise, so 3D Slicer's browser lists a synthetic series by its
source (series 5 -> 1005) rather than every output as 999."""
DERIVED_SERIES_OFFSET = 1000

MANUFACTURER = "mrct"
"""Manufacturer (0008,0070) of every series written."""

BODY_PART = "HEAD"
"""BodyPartExamined of every series written (mrct handles head scans)."""

CT_WINDOW = (40.0, 400.0)
"""CT WindowCenter, WindowWidth in HU (a soft-tissue window)."""

_INT16 = np.iinfo(np.int16)
# What differs between the files of a series (the rest is encoded once: mrct.io.dicom_encode).
VARYING = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "PixelData")


def _software_version() -> str:
    # The package may not define a version yet; a missing one is not an error.
    try:
        import mrct

        return str(getattr(mrct, "__version__", "0"))
    except ImportError:  # pragma: no cover
        return "0"


def _check_text(name: str, value: str, max_chars: int) -> None:
    """Reject text that would make an invalid LO/ST element (pydicom only warns)."""
    if len(value) > max_chars or "\\" in value or any(ord(c) < 32 for c in value):
        raise WriteError(
            f"{name} must be at most {max_chars} characters, without backslash or control characters"
        )


def _ds(value: float) -> str:
    """A DS string (<= 16 chars) holding ``value`` with as many digits as fit."""
    return format_number_as_ds(float(value))


def _ds_nominal(value: float) -> str:
    """A DS string for a nominal size (SliceThickness, SpacingBetweenSlices) rounded to 1e-6 mm:
    spacings read from NIfTI's float32 pixdim would otherwise print as 4.79999991024241."""
    return _ds(round(float(value), 6))


class _Geometry(NamedTuple):
    iop: list[float]  # row cosine then column cosine, LPS
    pixel_spacing: list[float]  # [row spacing, column spacing] mm
    slice_spacing: float  # mm
    positions: npt.NDArray[np.float64]  # (K, 3) LPS mm, top-left pixel of each slice


def _geometry(affine: npt.NDArray[np.float64], shape: tuple[int, int, int]) -> _Geometry:
    """DICOM geometry (LPS mm) for a RAS affine; raises WriteError unless orthogonal.

    Returns ImageOrientationPatient (row cosine, column cosine), PixelSpacing
    (row spacing = |a1|, column spacing = |a0|), slice spacing |a2|, and the
    LPS ImagePositionPatient of each slice k.
    """
    if not np.all(np.isfinite(affine)) or not np.allclose(affine[3], [0, 0, 0, 1]):
        raise WriteError("affine must be finite with last row (0, 0, 0, 1)")
    cols = affine[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    if np.any(norms <= 1e-9):
        raise WriteError("affine has a zero-length voxel axis")
    if shear(affine) > ROUNDING_SHEAR:
        raise WriteError("affine axes are not orthogonal (sheared grid); resample first")
    _, n_j, n_k = shape
    lps = ras_to_lps(affine)
    # Row direction (increasing column index) is +i; column direction
    # (increasing row index) is -j because rows are stored with j reversed.
    row_cos = lps[:3, 0] / norms[0]
    col_cos = -lps[:3, 1] / norms[1]
    # Up to ROUNDING_SHEAR (rounding in the source's header), the in-plane axes are squared up
    # (the nearest orthonormal pair): DICOM requires orthogonal cosines (dciodvfy: "not
    # orthogonal" from about 1e-4), and readers square them anyway, each its own way.
    pair = np.stack([row_cos, col_cos], axis=1)
    squared = squared_up(pair)
    moved = largest_move(pair, squared, [shape[0] * norms[0], n_j * norms[1]])
    if moved > 0.05:
        log.warning("the grid is slightly sheared; squared up for DICOM, moving voxels up to %.2f mm", moved)
    row_cos, col_cos = squared[:, 0], squared[:, 1]
    # Top-left pixel of slice k is voxel (0, J-1, k).
    corners = np.stack([[0.0, n_j - 1.0, float(k), 1.0] for k in range(n_k)])
    positions = (lps @ corners.T).T[:, :3]
    return _Geometry(
        iop=[float(v) for v in (*row_cos, *col_cos)],
        pixel_spacing=[float(norms[1]), float(norms[0])],
        slice_spacing=float(norms[2]),
        positions=positions,
    )


def _series_number(volume: Volume, given: int | None) -> int:
    if given is not None:
        return int(given)
    source = volume.source.dicom.series_number if volume.source.dicom is not None else None
    if source is not None and 0 <= source < 2**31 - DERIVED_SERIES_OFFSET:  # IS: a signed 32-bit
        return source + DERIVED_SERIES_OFFSET
    return DEFAULT_SERIES_NUMBER


def _quantize(
    array: npt.NDArray, modality: Modality, where: Path | None = None
) -> tuple[npt.NDArray[np.int16], float, float]:
    """Stored int16 values, RescaleSlope and RescaleIntercept (value = slope * stored + intercept).

    CT: HU rounded and clipped to int16, slope 1, with a warning naming ``where`` when any
    value lies outside (no tissue does; metal on extended-scale scanners may). MR: exact when every
    value is an integer spanning at most 65535 (slope 1, and an integer intercept when the values
    pass the int16 range, as uint16 scans do); otherwise ``round(value / slope)`` with intercept 0
    (so zero background stays exactly zero) and the slope spanning the int16 range.
    """
    values = np.asarray(array)
    if values.dtype.kind == "b":
        values = values.astype(np.uint8)
    if values.dtype.kind in "iu":
        # Integer input: no float copy of a possibly large volume.
        if int(values.min()) >= _INT16.min and int(values.max()) <= _INT16.max:
            return values.astype(np.int16), 1.0, 0.0
        if modality is Modality.CT:
            return _clipped_ct(values, where), 1.0, 0.0
        if (shifted := _shifted_integers(values)) is not None:
            return shifted
        values = values.astype(np.float64)
    elif values.dtype.kind != "f":
        raise WriteError(f"cannot store {values.dtype} voxel values in DICOM")
    elif values.dtype.itemsize < 4:
        values = values.astype(np.float32)  # float16 rounds the clip limit 32767 up to 32768: int16 wraps
    if not np.all(np.isfinite(values)):
        raise WriteError("volume contains NaN or infinite values")
    rounded = np.rint(values)  # keeps float32 as float32
    if modality is Modality.CT:
        return _clipped_ct(rounded, where), 1.0, 0.0
    if np.array_equal(rounded, values):
        if float(rounded.min()) >= _INT16.min and float(rounded.max()) <= _INT16.max:
            return rounded.astype(np.int16), 1.0, 0.0
        if (shifted := _shifted_integers(rounded)) is not None:
            return shifted
    peak = float(np.max(np.abs(values)))
    # Round-trip the slope through its DS string so the file states exactly the
    # slope used for quantizing.
    slope = float(_ds(peak / _INT16.max)) if peak > 0 else 1.0
    stored = np.clip(np.rint(values / slope), -_INT16.max, _INT16.max)
    return stored.astype(np.int16), slope, 0.0


def _shifted_integers(values: npt.NDArray) -> tuple[npt.NDArray[np.int16], float, float] | None:
    """Integers spanning at most 65535 (a uint16 MR's 0..65535), stored exactly as int16 with the
    integer intercept that moves the lowest to -32768; a slope would round them (by up to 1 for
    0..65535). None when they span more."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo > float(_INT16.max) - float(_INT16.min) or abs(lo) >= 2**52:
        return None
    intercept = int(lo) - int(_INT16.min)
    if float(_ds(intercept)) != intercept:  # a DS holds 16 characters: past about 1e13, not exactly
        return None
    stored = (values.astype(np.int64) - intercept).astype(np.int16)
    return stored, 1.0, float(intercept)


def _clipped_ct(values: npt.NDArray, where: Path | None) -> npt.NDArray[np.int16]:
    outside = int(np.count_nonzero((values < _INT16.min) | (values > _INT16.max)))
    if outside:
        log.warning(
            "%s: %d voxel(s) outside %d..%d HU (up to %g) are clipped to the int16 range a DICOM CT stores",
            where or "DICOM output",
            outside,
            _INT16.min,
            _INT16.max,
            float(np.max(np.abs(values))),
        )
    return np.clip(values, _INT16.min, _INT16.max).astype(np.int16)


def _window(array: npt.NDArray, modality: Modality) -> tuple[float, float]:
    """WindowCenter, WindowWidth in output units (HU for CT)."""
    if modality is Modality.CT:
        return CT_WINDOW
    low, high = np.percentile(array, [1.0, 99.0])
    return (float(low) + float(high)) / 2.0, max(float(high) - float(low), 1.0)


def _modality_module(ds: Dataset, modality: Modality, slice_spacing: float) -> None:
    """CT Image or MR Image module attributes (type 2 ones present but empty)."""
    if modality is Modality.CT:
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.KVP = ds.AcquisitionNumber = ""  # type 2: unknown for a computed image
        ds.RescaleType = "HU"
    else:
        # dciodvfy demands a third value for MR; "OTHER" claims nothing.
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        # Type 1 with enumerated values; "RM" (research mode) is the honest one
        # for a computed image, and there is no sequence variant.
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        for keyword in ("ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime"):
            setattr(ds, keyword, "")  # type 2: unknown for a computed image
        for keyword in ("EchoTrainLength", "MagneticFieldStrength", "ImagedNucleus"):
            setattr(ds, keyword, "")
        ds.SpacingBetweenSlices = _ds_nominal(slice_spacing)


def write_dicom_series(
    volume: Volume,
    out_dir: Path,
    *,
    series_description: str,
    modality: Modality | None = None,
    derivation_description: str = "Synthesized by mrct (MR/CT translation)",
    series_number: int | None = None,
    overwrite: bool = False,
    anonymizer: Anonymizer | None = None,
) -> list[Path]:
    """Write ``volume`` into folder ``out_dir`` as ``IM_0001.dcm`` ... (one file per slice).

    Geometry is exact: ImagePositionPatient/ImageOrientationPatient are LPS mm
    derived from the RAS affine, so the mrct reader and dcm2niix rebuild the same
    grid. Values are stored as int16 (CT: HU; MR: see :func:`_quantize`).
    Patient/study/frame of reference come from ``volume.source.dicom`` when it is
    set (so the output overlays its source) and from placeholders otherwise. An ``anonymizer``
    de-identifies them (:mod:`mrct.io.anonymize`); the two descriptions, written here, are kept.

    Returns:
        The final paths of the written files, in slice order along the normal.

    Raises:
        WriteError: no modality, non-orthogonal affine, non-finite or non-numeric
            values, a slice over 65535 pixels wide, or an I/O failure.
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    modality = modality if modality is not None else volume.modality
    if modality is None:
        raise WriteError(
            'the volume has no modality; DICOM needs CT or MR: volume.replace(modality="MR") sets it',
            out_dir,
        )
    modality = Modality(modality)
    _check_text("series description", series_description, 64)  # LO
    _check_text("derivation description", derivation_description, 1024)  # ST
    position = volume.source.dicom.patient_position if volume.source.dicom is not None else ""
    array, affine = scanner_layout(storable(volume.array), volume.affine, position)
    volume = volume.replace(array=array, affine=affine)  # a view: each slice is copied as written
    n_i, n_j, n_k = volume.shape
    if min(n_i, n_j, n_k) < 1 or max(n_i, n_j) > 65535:
        raise WriteError(f"cannot write a volume of shape {volume.shape} as DICOM", out_dir)
    try:
        geo = _geometry(volume.affine, volume.shape)
        stored, slope, intercept = _quantize(volume.array, modality, out_dir)
    except WriteError as err:  # raised on the volume in memory: name the output
        raise err.naming(out_dir) from None
    center, width = _window(volume.array, modality)
    now = _dt.datetime.now()
    sop_class = CTImageStorage if modality is Modality.CT else MRImageStorage

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    patient_study(ds, volume, now)
    ds.Modality = modality.value
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = _series_number(volume, series_number)
    ds.SeriesDescription = series_description
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = _software_version()
    ds.DerivationDescription = derivation_description
    ds.BurnedInAnnotation = "NO"
    # mrct translates head scans. Naming the (unpaired) body part tells
    # validators that Laterality (type 2C, for paired structures) is not needed.
    ds.BodyPartExamined = BODY_PART
    _modality_module(ds, modality, geo.slice_spacing)
    source_references(ds, volume)
    src = volume.source.dicom
    if src is not None and src.lossy_methods is not None:  # never reset (PS3.3 C.7.6.1.1.5)
        ds.LossyImageCompression = "01"
        if src.lossy_methods:
            ds.LossyImageCompressionMethod = list(src.lossy_methods)
        if src.lossy_ratios and len(src.lossy_ratios) == len(src.lossy_methods):
            ds.LossyImageCompressionRatio = list(src.lossy_ratios)
    ds.ImageOrientationPatient = [_ds(v) for v in geo.iop]
    ds.PixelSpacing = [_ds(v) for v in geo.pixel_spacing]
    ds.SliceThickness = _ds_nominal(geo.slice_spacing)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = n_j, n_i
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if modality is Modality.CT or slope != 1.0 or intercept != 0.0:
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
    ds.WindowCenter = _ds(center)
    ds.WindowWidth = _ds(width)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MRCT_{_software_version()}"[:16]
    ds.file_meta = meta
    if anonymizer is not None:  # before the loop: the per-slice SOP instance UIDs are new anyway
        anonymizer.apply(ds, clean=("SeriesDescription", "DerivationDescription"))

    # De-identified outputs use 2.25 (UUID-derived) UIDs throughout, as the anonymizer does.
    uid_root: str | None = None if anonymizer is not None else PYDICOM_ROOT_UID
    width_digits = max(4, len(str(n_k)))
    names = [f"IM_{k + 1:0{width_digits}d}.dcm" for k in range(n_k)]
    with atomic_dir(out_dir, SERIES_FILES, overwrite, keep=[volume.source.path]) as tmp:
        try:
            encoder = SeriesEncoder(ds, VARYING)
            for k in range(n_k):
                # (row, col) <- array[col, J-1-row, k]: transpose and flip j.
                plane = np.ascontiguousarray(stored[:, ::-1, k].T).astype("<i2")
                values = {
                    "SOPInstanceUID": generate_uid(prefix=uid_root),
                    "InstanceNumber": k + 1,
                    "ImagePositionPatient": [_ds(v) for v in geo.positions[k]],
                    "PixelData": plane.tobytes(),
                }
                (tmp / names[k]).write_bytes(encoder.encode(values))
        except (OSError, ValueError, TypeError) as err:
            raise WriteError(f"cannot write DICOM file: {err}", out_dir) from err
    return [out_dir / name for name in names]
