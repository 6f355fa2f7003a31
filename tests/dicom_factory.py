"""Synthetic DICOM series for tests (no patient data), written with pydicom.

Every voxel value comes from :func:`phantom`, a smooth head-sized function of
the voxel's *physical* LPS position: two readers that place voxels correctly
agree exactly, and a resampled volume can be checked against the original
slices by sampling it in patient space (:func:`pixel_centres`).

Geometry is set up as on a scanner: a plane is chosen in scanner axes (LPS
for a head-first supine patient) and turned into patient axes for the
PatientPosition (:data:`PATIENT_POSITIONS`). File names are hashes of the SOP
instance UID, so sorting the files by name never gives slice order.

Entry points: :func:`write_series` (single-frame CT/MR, optionally with gantry
tilt, uneven spacing, omitted slices), :func:`write_enhanced_mr` (one Enhanced
MR Image Storage file), :func:`zip_folder`, and :func:`read_series_info` (the
same description for any existing single-frame series, e.g. real data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as Seq
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"

FloatArray = npt.NDArray[np.float64]

# Scanner axes (x, y, z; LPS for a head-first supine patient) -> patient LPS.
PATIENT_POSITIONS: dict[str, FloatArray] = {
    "HFS": np.eye(3),
    "HFP": np.diag([-1.0, -1.0, 1.0]),
    "FFS": np.diag([-1.0, 1.0, -1.0]),
    "FFP": np.diag([1.0, -1.0, -1.0]),
    "HFDL": np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]),  # lying on the left side
    "HFDR": np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]),
    "FFDL": np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]]),
    "FFDR": np.array([[0.0, -1, 0], [-1, 0, 0], [0, 0, -1]]),
}
# Row and column directions of each plane in scanner axes (radiological display).
PLANES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def phantom(points: npt.ArrayLike) -> FloatArray:
    """Smooth 'head', about -0.6..2: three Gaussian ellipsoids and a gradient, at LPS mm."""
    p = np.asarray(points, dtype=np.float64)

    def blob(centre: tuple[float, float, float], sigma: tuple[float, float, float]) -> FloatArray:
        return np.exp(-0.5 * (((p - np.array(centre)) / np.array(sigma)) ** 2).sum(axis=-1))

    gradient = 0.001 * (p[..., 0] + 2 * p[..., 1] + 3 * p[..., 2])
    return (
        0.9 * blob((0, 0, 0), (60, 75, 65))
        + 0.6 * blob((20, -15, 10), (22, 28, 20))
        - 0.3 * blob((-25, 20, -10), (25, 20, 24))
        + gradient
        + 0.3
    )


def physical_values(points: npt.ArrayLike, modality: str) -> FloatArray:
    """The phantom in the modality's units: HU-like for CT, positive signal for MR."""
    return (-1000.0 if modality == "CT" else 1000.0) + 1500.0 * phantom(points)


def plane_iop(
    plane: str = "axial", patient_position: str = "HFS", oblique_deg: tuple[float, float] = (0.0, 0.0)
) -> tuple[float, ...]:
    """ImageOrientationPatient of a scanner plane turned by (about x, about y) degrees."""
    a, b = np.radians(oblique_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    m = PATIENT_POSITIONS[patient_position] @ ry @ rx
    row, col = (m @ np.array(v) for v in PLANES[plane])
    return tuple(float(x) for x in (*row, *col))


@dataclass(frozen=True)
class SeriesInfo:
    """A written (or read) series. ``positions`` and ``values`` are in slice order."""

    folder: Path
    files: tuple[Path, ...]  # in slice order for single-frame series
    series_uid: str
    iop: tuple[float, ...]  # as stored
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    positions: FloatArray  # (n, 3) ImagePositionPatient, LPS mm, as stored
    values: FloatArray  # (n, rows, cols) stored * slope + intercept


def pixel_centres(info: SeriesInfo, k: int) -> FloatArray:
    """LPS mm of every pixel centre of slice ``k``: [row, col, 3] (IOP taken as unit vectors)."""
    rows, cols = info.values.shape[1:]
    r, c = (np.array(v) / np.linalg.norm(v) for v in (info.iop[:3], info.iop[3:]))
    ri, ci = np.mgrid[0:rows, 0:cols]
    inplane = ci[..., None] * info.pixel_spacing[1] * r + ri[..., None] * info.pixel_spacing[0] * c
    return info.positions[k] + inplane


def read_series_info(files: Sequence[Path]) -> SeriesInfo:
    """Describe an existing single-frame series (one orientation), in file order."""
    dss = [pydicom.dcmread(f) for f in files]
    first = dss[0]
    rescaled = [
        ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0)) for ds in dss
    ]
    ipp = np.array([[float(x) for x in ds.ImagePositionPatient] for ds in dss])
    iop, spacing = (
        tuple(float(x) for x in first.ImageOrientationPatient),
        tuple(map(float, first.PixelSpacing)),
    )
    uid = str(first.SeriesInstanceUID)
    return SeriesInfo(Path(files[0]).parent, tuple(files), uid, iop, spacing, ipp, np.stack(rescaled))  # type: ignore[arg-type]


def _ds(values: Sequence[float]) -> list[str]:
    return [format_number_as_ds(float(v)) for v in values]


def _synthesize(
    modality: str,
    shape: tuple[int, int, int],
    iop: Sequence[float],
    pixel_spacing: tuple[float, float],
    offsets: FloatArray,
    step: FloatArray,
    centre: Sequence[float],
    rescale: tuple[float, float],
) -> tuple[SeriesInfo, npt.NDArray[np.integer]]:
    """Geometry as stored (decimal strings parsed back), rescaled values and stored integers."""
    rows, cols, n = shape
    iop, spacing, (slope, intercept) = (
        tuple(float(x) for x in _ds(v)) for v in (iop, pixel_spacing, rescale)
    )
    r, c = np.array(iop[:3]), np.array(iop[3:])
    half = r * (cols - 1) / 2 * spacing[1] + c * (rows - 1) / 2 * spacing[0]
    origin = np.asarray(centre, float) - half - offsets.mean() * step
    ipp = np.array([[float(x) for x in _ds(origin + o * step)] for o in offsets])
    geo = SeriesInfo(Path(), (), "", iop, spacing, ipp, np.zeros((n, rows, cols)))  # type: ignore[arg-type]
    stored = _stored(
        physical_values(np.stack([pixel_centres(geo, k) for k in range(n)]), modality), slope, intercept
    )
    return dataclasses.replace(geo, values=stored * slope + intercept), stored


def _stored(values: FloatArray, slope: float, intercept: float) -> npt.NDArray[np.integer]:
    stored = np.round((values - intercept) / slope)
    dtype = np.int16 if stored.min() < 0 else np.uint16
    return np.clip(stored, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)


def _header(
    sop_class: str,
    modality: str,
    uids: dict[str, str],
    position: str,
    stored: npt.NDArray[np.integer],
    acq: str | None,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet, ds.ImageType = "ISO_IR 100", ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.Modality, ds.Manufacturer = modality, "mrct-synthetic"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Phantom", "SYN001", "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids["frame"], ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.AcquisitionNumber = "1", "", "", 1
    ds.PatientPosition = position
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(stored.dtype == np.int16)
    ds.PixelData = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
    if modality == "MR":
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "NONE", ""
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle, ds.EchoNumbers = 500, 5, 15, 1
        ds.MagneticFieldStrength, ds.ImagingFrequency = 3, 123.2
        if acq:
            ds.MRAcquisitionType = acq
    return ds


def _uids(series_uid: str | None = None, study_uid: str | None = None) -> dict[str, str]:
    return {
        "study": study_uid or generate_uid(),
        "series": series_uid or generate_uid(),
        "frame": generate_uid(),
    }


def write_series(
    folder: str | Path,
    *,
    modality: str = "CT",
    shape: tuple[int, int, int] = (40, 48, 12),  # rows, columns, slices
    iop: Sequence[float] | None = None,
    plane: str = "axial",
    oblique_deg: tuple[float, float] = (0.0, 0.0),
    patient_position: str = "HFS",
    pixel_spacing: tuple[float, float] = (1.1, 0.9),  # DICOM order: between rows, between columns
    slice_spacing: float = 2.5,
    slice_offsets: Sequence[float] | None = None,
    centre: Sequence[float] = (5.0, -8.0, 12.0),
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    mr_acquisition_type: str | None = None,
    gantry_tilt: float | None = None,
    omit: Sequence[int] = (),
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_number: int = 1,
    shuffle_file_names: bool = True,
) -> SeriesInfo:
    """Write one single-frame series (CT or MR Image Storage) into ``folder``.

    Slices lie at ``slice_offsets`` mm (default ``k * slice_spacing``; negative
    spacing runs against the normal) along the normal, row x column. With
    ``gantry_tilt`` (degrees, HFS) the plane is tilted as on a GE head CT,
    IOP ``(1,0,0, 0,cos t,-sin t)``, and the table moves along z, so each slice
    is shifted along the column direction. CT defaults to slope 1, intercept
    -1024 (stored unsigned); MR writes rescale tags only when given. ``omit``
    drops slice indexes (InstanceNumber keeps counting, as on a scanner).
    Without ``shuffle_file_names`` files are named in reverse slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slope = 1.0 if rescale_slope is None else rescale_slope
    intercept = rescale_intercept if rescale_intercept is not None else -1024.0 if modality == "CT" else 0.0
    if gantry_tilt is not None:
        t = np.radians(gantry_tilt)
        iop = (1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(-np.sin(t)))
        step = np.array([0.0, 0.0, 1.0 / np.cos(t)])  # table motion; its normal component is 1
    else:
        iop = plane_iop(plane, patient_position, oblique_deg) if iop is None else tuple(iop)
        step = np.cross(iop[:3], iop[3:])
    n = shape[2]
    offsets = np.arange(n) * slice_spacing if slice_offsets is None else np.asarray(slice_offsets, float)
    geo, stored = _synthesize(modality, shape, iop, pixel_spacing, offsets, step, centre, (slope, intercept))
    uids = _uids(series_uid, study_uid)
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    files, kept = [], [k for k in range(n) if k not in omit]
    for k in kept:
        ds = _header(sop_class, modality, uids, patient_position, stored[k], mr_acquisition_type)
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.SeriesDescription = f"synthetic {modality} {plane}"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = _ds(geo.positions[k]), _ds(geo.iop)
        ds.PixelSpacing, ds.SliceThickness = _ds(geo.pixel_spacing), format_number_as_ds(abs(slice_spacing))
        ds.SliceLocation = format_number_as_ds(float(offsets[k]))
        if modality == "CT":
            ds.KVP, ds.GantryDetectorTilt = 120, format_number_as_ds(gantry_tilt or 0.0)
        else:
            ds.SpacingBetweenSlices = format_number_as_ds(abs(slice_spacing))
        if modality == "CT" or rescale_slope is not None or rescale_intercept is not None:
            ds.RescaleSlope, ds.RescaleIntercept = _ds((slope, intercept))
            ds.RescaleType = "HU" if modality == "CT" else "US"
        uid_hash = hashlib.sha1(ds.SOPInstanceUID.encode()).hexdigest()[:12]
        name = uid_hash if shuffle_file_names else f"{n - k:04d}"
        files.append(folder / f"IM_{name}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    kept_geo = dataclasses.replace(geo, positions=geo.positions[kept], values=geo.values[kept])
    return dataclasses.replace(kept_geo, folder=folder, files=tuple(files), series_uid=uids["series"])


def _item(**attributes: object) -> Dataset:
    ds = Dataset()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def _seq(**attributes: object) -> Seq:
    """A functional-group macro: a sequence of one item."""
    return Seq([_item(**attributes)])


def write_enhanced_mr(
    path: str | Path,
    *,
    shape: tuple[int, int, int] = (40, 48, 12),
    plane: str = "axial",
    oblique_deg: tuple[float, float] = (0.0, 0.0),
    patient_position: str = "HFS",
    pixel_spacing: tuple[float, float] = (1.1, 0.9),
    slice_spacing: float = 2.5,
    centre: Sequence[float] = (5.0, -8.0, 12.0),
    rescale_slope: float = 1.5,
    rescale_intercept: float = 0.0,
    mr_acquisition_type: str = "2D",
    frame_order: Sequence[int] | None = None,
) -> SeriesInfo:
    """One Enhanced MR Image Storage file, frames stored in ``frame_order`` (default: slice order).

    Spacing and orientation sit in SharedFunctionalGroupsSequence; position,
    rescaling and FrameContent (InStackPositionNumber, DimensionIndexValues,
    consistent with the positions) per frame, as scanners write them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iop = plane_iop(plane, patient_position, oblique_deg)
    n, step, rescale = shape[2], np.cross(iop[:3], iop[3:]), (rescale_slope, rescale_intercept)
    geo, stored = _synthesize(
        "MR", shape, iop, pixel_spacing, np.arange(n) * slice_spacing, step, centre, rescale
    )
    order = list(range(n)) if frame_order is None else list(frame_order)
    uids = _uids()
    ds = _header(ENHANCED_MR_IMAGE_STORAGE, "MR", uids, patient_position, stored[order], mr_acquisition_type)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 1, 1, "synthetic enhanced MR"
    ds.AcquisitionDateTime, ds.NumberOfFrames = "20240101120000", n
    thickness = format_number_as_ds(abs(slice_spacing))
    pixel_measures = _seq(PixelSpacing=_ds(geo.pixel_spacing), SliceThickness=thickness)
    pixel_measures[0].SpacingBetweenSlices = thickness
    ds.SharedFunctionalGroupsSequence = Seq([_item(
        PixelMeasuresSequence=pixel_measures,
        PlaneOrientationSequence=_seq(ImageOrientationPatient=_ds(geo.iop)),
    )])  # fmt: skip
    ds.PerFrameFunctionalGroupsSequence = Seq([_item(
        FrameContentSequence=_seq(StackID="1", InStackPositionNumber=k + 1, DimensionIndexValues=[1, k + 1]),
        PlanePositionSequence=_seq(ImagePositionPatient=_ds(geo.positions[k])),
        PixelValueTransformationSequence=_seq(
            RescaleSlope=_ds(rescale)[0], RescaleIntercept=_ds(rescale)[1], RescaleType="US"
        ),
    ) for k in order])  # fmt: skip
    ds.save_as(path, enforce_file_format=True)
    return dataclasses.replace(geo, folder=path.parent, files=(path,), series_uid=uids["series"])


def zip_folder(folder: str | Path, zip_path: str | Path) -> Path:
    """Zip every file of ``folder`` under a sub-folder of the archive, as users send them."""
    folder, zip_path = Path(folder), Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, Path("series") / f.relative_to(folder))
    return zip_path
