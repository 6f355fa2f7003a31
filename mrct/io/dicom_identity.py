"""Whom and what a written DICOM series belongs to: the patient, study and frame of reference
(copied from a DICOM source, or placeholders for a NIfTI/NRRD/MHA one) and the references to the
source's instances."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mrct.volume import PATIENT_KEYWORDS, STUDY_KEYWORDS, Volume

PLACEHOLDER_PATIENT_NAME = "MRCT^ANONYMOUS"
"""PatientName written when the volume did not come from DICOM."""

PLACEHOLDER_PATIENT_ID_PREFIX = "MRCT-"
"""PatientID prefix for non-DICOM sources; followed by the first 12 hex digits of
the SHA-1 of the source's absolute path (of a random UID when the path is unknown)."""

PLACEHOLDER_STUDY_ID = "1"
"""StudyID written for non-DICOM sources. A new StudyInstanceUID and
FrameOfReferenceUID are generated on every call, StudyDate/StudyTime are the
time of writing, and PatientBirthDate, PatientSex, AccessionNumber and
ReferringPhysicianName are present but empty (DICOM type 2)."""

# Type 2 patient/study attributes: written empty when the source lacks them.
_TYPE2_PATIENT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
_TYPE2_STUDY = ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


_DATE = re.compile(r"(\d{4})([-.]?)(\d{2})\2(\d{2})")  # one separator, or none
_TIME = re.compile(r"(\d{2})(?:(:?)(\d{2})(?:\2(\d{2})(\.\d{1,6})?)?)?")
_DATES, _TIMES = ("StudyDate", "PatientBirthDate"), ("StudyTime",)


def _valid_date_or_time(keyword: str, value: str | None) -> str | None:
    """A source's date or time in DICOM's form: the old ACR-NEMA ``2022-04-07`` and ``15:01:38``
    (which some exporters still write, and dciodvfy refuses) without their separators; anything
    else that is not a valid date or time is left out (these are type 2: written empty). Other
    attributes as given."""
    if not value or keyword not in _DATES + _TIMES:
        return value
    text = value.strip()
    if keyword in _DATES:
        found = _DATE.fullmatch(text)
        if not found:
            return None
        digits = found[1] + found[3] + found[4]
        try:
            _dt.datetime.strptime(digits, "%Y%m%d")
        except ValueError:  # month 13, 30 February
            return None
        return digits
    found = _TIME.fullmatch(text)
    if not found:
        return None
    hours, minutes, seconds, fraction = found[1], found[3] or "", found[4] or "", found[5] or ""
    if int(hours) > 23 or (minutes and int(minutes) > 59) or (seconds and int(seconds) > 60):
        return None  # 60: a leap second, which DICOM's TM allows
    return hours + minutes + seconds + fraction


def patient_study(ds: Dataset, volume: Volume, now: _dt.datetime) -> None:
    """Patient, study and frame-of-reference attributes: copied or placeholders."""
    src = volume.source.dicom
    if src is not None:
        for keyword in PATIENT_KEYWORDS + STUDY_KEYWORDS:
            # Empty source values are skipped: type 2 ones are written empty
            # anyway, and an empty type 1C one (DeidentificationMethod) is invalid.
            value = _valid_date_or_time(keyword, src.patient.get(keyword) or src.study.get(keyword))
            if value:
                setattr(ds, keyword, value)
        if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" and not ds.get(
            "DeidentificationMethod"
        ):
            ds.DeidentificationMethod = "Source marked de-identified; method not stated"
        if not ds.get("StudyInstanceUID"):
            ds.StudyInstanceUID = generate_uid()
        ds.FrameOfReferenceUID = src.frame_of_reference_uid or generate_uid()
        # Type 2 and part of the frame: kept with the source's frame, empty for a new one.
        ds.PositionReferenceIndicator = src.position_reference_indicator if src.frame_of_reference_uid else ""
        ds.PatientPosition = src.patient_position
    else:
        # The absolute path: a file named relatively or absolutely is one patient, not two.
        seed = os.path.abspath(volume.source.path) if volume.source.path else generate_uid()
        digest = hashlib.sha1(seed.encode("utf-8")).hexdigest()[:12]
        ds.PatientName = PLACEHOLDER_PATIENT_NAME
        ds.PatientID = PLACEHOLDER_PATIENT_ID_PREFIX + digest
        ds.StudyInstanceUID = generate_uid()
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.StudyID = PLACEHOLDER_STUDY_ID
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = ""
    # Type 2 attributes: present even when unknown.
    for keyword in _TYPE2_PATIENT + _TYPE2_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")


def source_references(ds: Dataset, volume: Volume) -> None:
    """Reference the source series' instances, when they are known.

    Each output slice derives from the whole source volume (3D processing), so
    every source instance is listed in SourceImageSequence; the Common Instance
    Reference module (ReferencedSeriesSequence) then says which series they are
    in. Without known SOP instances nothing is written: ReferencedSeriesSequence
    requires at least one referenced instance. Invalid UIDs are left out.
    """
    from pydicom.uid import UID

    src = volume.source.dicom
    if src is None:
        return
    # A source without (valid) SOP class or series UIDs, as some exports have, cannot be
    # referenced: empty or malformed type 1 references fail dciodvfy on every output file.
    known = [uid for uid in src.sop_instance_uids if UID(uid).is_valid]
    series_uid, class_uid = UID(src.series_instance_uid or ""), UID(src.sop_class_uid or "")
    if not known or not class_uid.is_valid or not series_uid.is_valid:
        return
    # Two lists of the same references: Dataset items must not be shared.
    sources: list[Dataset] = []
    instances: list[Dataset] = []
    for uid in known:
        for items in (sources, instances):
            item = Dataset()
            item.ReferencedSOPClassUID = src.sop_class_uid
            item.ReferencedSOPInstanceUID = uid
            items.append(item)
    ds.SourceImageSequence = sources
    series = Dataset()
    series.SeriesInstanceUID = src.series_instance_uid
    series.ReferencedInstanceSequence = instances
    ds.ReferencedSeriesSequence = [series]
