"""``Volume``: the one image type inside mrct.

A Volume is a 3D voxel array indexed ``[i, j, k]``, a 4x4 affine mapping those
indices to RAS millimetres (as in NIfTI and nibabel), a modality, and where it
came from. Readers in :mod:`mrct.io` return Volumes and writers take them;
format conversions happen nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from mrct.io.orientation import axis_codes, voxel_spacing


class Modality(str, Enum):
    CT = "CT"
    MR = "MR"


# DICOM keywords copied from a source series into every series written from it,
# so that the output files under the same patient and study and shares the
# source's frame of reference (it then overlays the source in 3D Slicer).
PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
)
STUDY_KEYWORDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


@dataclass(frozen=True)
class DicomSource:
    """What a DICOM writer needs to file an output next to its source series.

    ``patient`` and ``study`` map DICOM keywords to values as read (strings);
    they are patient data and must never be logged.
    """

    series_instance_uid: str
    sop_class_uid: str
    frame_of_reference_uid: str | None
    modality: str
    patient: Mapping[str, str] = field(default_factory=dict)
    study: Mapping[str, str] = field(default_factory=dict)
    series_description: str = ""
    series_number: int | None = None
    manufacturer: str = ""
    patient_position: str = ""
    # The anatomical point the frame of reference is measured from (OM, NA, XY...): it belongs to
    # the frame, so it goes wherever the frame's UID goes.
    position_reference_indicator: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    # LossyImageCompression "01" somewhere in the source, with its methods (ISO_10918_1...) and
    # ratios: PS3.3 C.7.6.1.1.5 says an image derived from it must never reset that flag.
    lossy_methods: tuple[str, ...] | None = None  # None: never lossy compressed
    lossy_ratios: tuple[str, ...] = ()
    # "ph", "real" or "imag" for a part of complex MR data (mrct.io.dicom_split.complex_part):
    # not an image a model translates.
    complex_part: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "patient", MappingProxyType(dict(self.patient)))
        object.__setattr__(self, "study", MappingProxyType(dict(self.study)))


@dataclass(frozen=True)
class SourceInfo:
    """Provenance: the path read, its format, and DICOM identity when there is one.

    ``nifti_qform``, ``nifti_sform`` and ``nifti_codes`` (qform_code, sform_code) are a NIfTI
    input's two geometries (RAS mm) when readers may place it differently: a sheared sform (a
    gantry tilt that dcm2niix kept as shear; a qform cannot hold shear), a qform and sform that
    disagree (ITK and 3D Slicer then use the qform unless sform_code is 1, nibabel the sform), or
    neither code set (each reader has its own default). A NIfTI output on that same grid keeps
    the pair and codes, so that every reader places it where it places the input.
    """

    path: str = ""
    format: str = ""
    dicom: DicomSource | None = None
    nifti_qform: tuple[tuple[float, ...], ...] | None = None
    nifti_sform: tuple[tuple[float, ...], ...] | None = None
    nifti_codes: tuple[int, int] | None = None
    files: tuple[str, ...] = ()  # the files of a DICOM series read from a folder (not a zip)
    # Set on mrct's synthetic images (:mod:`mrct.labels`): the label every writer puts on them
    # unless told otherwise (DICOM SeriesDescription, NIfTI descrip, NRRD/MHA Description) and
    # the DICOM DerivationDescription, so a synthetic volume says what it is however it is written.
    label: str = ""
    derivation: str = ""
    # The header's own description, as read (NIfTI descrip, NRRD/MHA Description; DICOM's is
    # dicom.series_description): how an mrct synthetic image is recognised when read back.
    description: str = ""


# Above this, a grid counts as sheared: ITK (NRRD, MHA) refuses it, nibabel's qform rounds it.
SHEAR_TOL = 1e-6
# Up to this (about 0.06 degrees), a grid's shear is rounding in the header it came from: DICOM
# cosines written to 4 decimals, and dcm2niix's float32 affines of them, shear an oblique grid by
# up to a few 1e-5. Writers of formats that hold only rectilinear grids (NRRD, MHA, DICOM) square
# it up to the nearest one; beyond it, the shear is real (a gantry tilt) and they refuse it.
ROUNDING_SHEAR = 1e-3


def shear(affine: npt.NDArray[np.float64]) -> float:
    """How far the voxel axes are from orthogonal: the largest cosine between two of them
    (0 for a rectilinear grid). NRRD, MHA and DICOM can only store rectilinear grids."""
    cols = np.asarray(affine, dtype=np.float64)[:3, :3]
    unit = cols / np.linalg.norm(cols, axis=0)
    return float(np.max(np.abs(unit.T @ unit - np.eye(3))))


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image on a grid in patient space.

    Attributes:
        array: voxel values, shape ``(I, J, K)``. CT in HU; MR in scanner units
            with any DICOM or NIfTI rescaling applied.
        affine: 4x4 float64, voxel index ``(i, j, k, 1)`` -> RAS mm.
        modality: CT, MR, or None when the source does not say.
        source: where the volume came from.
    """

    array: npt.NDArray
    affine: npt.NDArray[np.float64]
    modality: Modality | None = None
    source: SourceInfo = field(default_factory=SourceInfo)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        affine = np.asarray(self.affine, dtype=np.float64)
        if array.ndim != 3:
            raise ValueError(f"a Volume array is 3D, got shape {array.shape}")
        if affine.shape != (4, 4):
            raise ValueError(f"a Volume affine is 4x4, got {affine.shape}")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "affine", affine)
        if self.modality is not None and not isinstance(self.modality, Modality):
            # "CT" or "mr" given as text: compared by identity (``is Modality.CT``) everywhere.
            try:
                modality = Modality(str(self.modality).upper())
            except ValueError:
                raise ValueError(f"a Volume's modality is CT, MR or None, got {self.modality!r}") from None
            object.__setattr__(self, "modality", modality)

    @property
    def shape(self) -> tuple[int, int, int]:
        i, j, k = self.array.shape
        return int(i), int(j), int(k)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in mm."""
        return voxel_spacing(self.affine)

    @property
    def orientation(self) -> str:
        """Axis code such as ``'LAS'`` (the RAS direction of i, j, k)."""
        return axis_codes(self.affine)

    def replace(self, **changes: object) -> Volume:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def guess_modality(volume: Volume) -> Modality | None:
    """CT or MR from the intensity distribution alone.

    CT is calibrated: air sits near -1000 HU and fills much of a head scan's
    field of view. MR has no negative unit and its background is near 0.
    """
    a = volume.array
    sample = a[:: max(1, a.shape[0] // 64), :: max(1, a.shape[1] // 64), :: max(1, a.shape[2] // 32)]
    p1 = float(np.percentile(sample, 1))
    if p1 <= -700 and np.mean(sample <= -500) > 0.05:
        return Modality.CT
    if p1 >= -50:
        return Modality.MR
    return None
