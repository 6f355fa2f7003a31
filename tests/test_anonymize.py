"""``--anonymize``: DICOM PS3.15 Annex E's Basic Profile on the series mrct writes."""

from __future__ import annotations

import stat
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from mrct.cli import app
from mrct.errors import ReadError
from mrct.io import read_volume
from mrct.io.anonymize import KEY_FILE, Anonymizer
from mrct.io.deid_profile import ACTIONS
from mrct.io.dicom_write import write_dicom_series
from mrct.labels import series_description
from mrct.volume import Modality
from tests.dicom_factory import write_series
from tests.external_tools import dciodvfy_errors, dcm2niix_read

runner = CliRunner()
# Distinctive values, none of which may survive (searched for in the files' bytes).
PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-SECRET-123",
    "PatientBirthDate": "19710203",
    "PatientAge": "052Y",
    "OtherPatientIDs": "OTHER-SECRET-77",
    "InstitutionName": "Secret General Hospital",
    "InstitutionAddress": "1 Hidden Lane",
    "ReferringPhysicianName": "House^Gregory",
    "PerformingPhysicianName": "Wilson^James",
    "OperatorsName": "Cuddy^Lisa",
    "AccessionNumber": "ACC-SECRET-42",
    "StudyDescription": "Jane Doe head",
    "StudyID": "STUDY-SECRET-9",
    "StationName": "SECRET-MR-3T",
    "DeviceSerialNumber": "SN-SECRET-555",
}
INVALID_BIRTH_DATE = "DOB-SECRET"  # not a DA: pydicom quotes it in a warning (tests/test_phi.py)
SECRETS = [v.encode() for v in (*PHI.values(), INVALID_BIRTH_DATE)]


def add_phi(files: tuple[Path, ...] | list[Path]) -> None:
    """Put the identifying values (and a private tag holding one) into existing DICOM files."""
    for f in files:
        ds = pydicom.dcmread(f)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20240317"
        block = ds.private_block(0x0029, "SECRET VENDOR", create=True)
        block.add_new(0x10, "LO", PHI["PatientID"])
        ds.save_as(f)


def leaks(folder: Path) -> list[str]:
    """``file: value`` for every identifying value found in any file under ``folder``."""
    found = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        found += [f"{f.relative_to(folder)}: {s.decode()}" for s in SECRETS if s in data]
    return found


def _rich_dataset() -> Dataset:
    ds = Dataset()
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.PatientSex, ds.StudyDate, ds.ContentDate, ds.AcquisitionDate = "F", "20240317", "20240317", "20240317"
    ds.SeriesDescription, ds.DerivationDescription = "mrct synthetic CT – not for diagnosis", "by mrct"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.FrameOfReferenceUID, ds.SOPClassUID = generate_uid(), "1.2.840.10008.5.1.4.1.1.2"
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = (
        "1.2.840.10008.5.1.4.1.1.4",
        generate_uid(),
    )
    ds.SourceImageSequence = [source]
    request = Dataset()
    request.RequestedProcedureID = "REQ-1"
    ds.RequestAttributesSequence = [request]
    ds.add_new(0x60003000, "OW", b"\x00\x01")  # overlay data
    ds.private_block(0x0029, "SECRET VENDOR", create=True).add_new(0x10, "LO", PHI["PatientID"])
    return ds


def test_basic_profile_actions_on_a_dataset() -> None:
    original, anonymizer = _rich_dataset(), Anonymizer()
    ds = _rich_dataset()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, keyword, original[keyword].value)
    ds.SourceImageSequence[0].ReferencedSOPInstanceUID = original.SourceImageSequence[
        0
    ].ReferencedSOPInstanceUID
    anonymizer.apply(ds, clean=("SeriesDescription", "DerivationDescription"))

    removed = [
        "PatientAge", "OtherPatientIDs", "InstitutionName", "InstitutionAddress", "PerformingPhysicianName",
        "OperatorsName", "StudyDescription", "StationName", "DeviceSerialNumber", "AcquisitionDate",
        "RequestAttributesSequence",
    ]  # fmt: skip
    assert [k for k in removed if k in ds] == []
    assert (0x6000, 0x3000) not in ds and not [e for e in ds if e.tag.is_private]
    emptied = ["PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber", "StudyDate"]
    assert [str(ds[k].value) for k in [*emptied, "StudyID", "ContentDate"]] == [""] * 7  # Z, Z/D
    assert ds.PatientID == anonymizer.pseudonym(PHI["PatientID"]) == str(ds.PatientName).replace("^", "-")
    assert ds.PatientID.startswith("ANON-") and len(ds.PatientID) <= 64
    # Kept: what mrct wrote itself (Clean Descriptors Option), and the image type.
    assert ds.SeriesDescription == original.SeriesDescription and ds.DerivationDescription == "by mrct"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    # UIDs: replaced, the same for the same key, nested references included; class UIDs kept.
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        new = ds[keyword].value
        assert new == anonymizer.uid(original[keyword].value) != original[keyword].value
        assert new.startswith("2.25.") and len(new) <= 64
    ref, old_ref = ds.SourceImageSequence[0], original.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == anonymizer.uid(old_ref.ReferencedSOPInstanceUID)
    assert ref.ReferencedSOPClassUID == old_ref.ReferencedSOPClassUID
    assert Anonymizer().uid(original.StudyInstanceUID) != ds.StudyInstanceUID  # another key
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
    codes = [(c.CodeValue, c.CodingSchemeDesignator) for c in ds.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113105", "DCM")]

    strict = _rich_dataset()
    anonymizer.apply(strict)  # nothing vouched for: descriptors go, and no Clean Descriptors code
    assert "SeriesDescription" not in strict and "DerivationDescription" not in strict
    assert [c.CodeValue for c in strict.DeidentificationMethodCodeSequence] == ["113100"]


def test_profile_table_is_the_standards() -> None:
    """Spot checks of Table E.1-1's Basic Profile column, and no tag with two actions."""
    tags = [t for group in ACTIONS.values() for t in group]
    assert len(tags) == len(set(tags)) > 600
    assert 0x00100010 in ACTIONS["Z"] and 0x00100020 in ACTIONS["Z/D"]  # name, ID
    assert 0x0020000D in ACTIONS["U"] and 0x00080080 in ACTIONS["X/Z/D"]  # study UID, institution
    assert 0x00082112 in ACTIONS["X/Z/U*"] and 0x0008103E in ACTIONS["X"]  # source images, series desc.


def test_folder_key_is_private_and_reused(tmp_path: Path) -> None:
    first = Anonymizer.for_folder(tmp_path / "out")
    key = tmp_path / "out" / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Anonymizer.for_folder(tmp_path / "out").key == first.key and len(first.key) == 32
    assert [p.name for p in (tmp_path / "out").iterdir()] == [KEY_FILE]  # no temporary left
    key.write_text("not hex\n")
    with pytest.raises(ReadError):
        Anonymizer.for_folder(tmp_path / "out")


def test_anonymized_series_validate_and_stay_consistent(tmp_path: Path) -> None:
    """Two outputs of one source with one key: same new study and frame of reference, references
    mapped, labelling kept, nothing identifying left; dciodvfy and dcm2niix accept them."""
    source = write_series(tmp_path / "in", modality="MR", shape=(24, 20, 6))
    add_phi(source.files)
    volume = read_volume(source.folder)
    anonymizer, outs = Anonymizer(), [tmp_path / "out" / "a", tmp_path / "out" / "b"]
    label = series_description(Modality.CT)
    for out in outs:
        write_dicom_series(volume, out, series_description=label, modality=Modality.CT, anonymizer=anonymizer)
    assert leaks(tmp_path / "out") == []
    a, b = (pydicom.dcmread(sorted(out.iterdir())[0]) for out in outs)
    src = pydicom.dcmread(source.files[0])
    assert a.StudyInstanceUID == b.StudyInstanceUID == anonymizer.uid(src.StudyInstanceUID)
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID == anonymizer.uid(src.FrameOfReferenceUID)
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.ReferencedSeriesSequence[0].SeriesInstanceUID == anonymizer.uid(src.SeriesInstanceUID)
    mapped = {anonymizer.uid(str(pydicom.dcmread(f).SOPInstanceUID)) for f in source.files}
    assert {r.ReferencedSOPInstanceUID for r in a.SourceImageSequence} == mapped
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    uids = (a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID, a.FrameOfReferenceUID)
    assert all(str(u).startswith("2.25.") for u in uids), uids  # as README says, instances too
    assert a.SeriesDescription == label and list(a.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert a.DerivationDescription and a.PatientIdentityRemoved == "YES"
    assert a.PatientID == anonymizer.pseudonym(PHI["PatientID"]) and not a.PatientBirthDate
    for f in sorted(outs[0].iterdir())[:2]:
        assert dciodvfy_errors(f) == []
    data, _ = dcm2niix_read(outs[0], tmp_path / "d2n")
    assert data.shape == volume.shape


def test_convert_anonymize(tmp_path: Path) -> None:
    source = write_series(tmp_path / "in", modality="CT", shape=(24, 20, 6))
    add_phi(source.files)
    plain = runner.invoke(app, ["convert", str(source.folder), str(tmp_path / "plain") + "/"])
    assert plain.exit_code == 0, plain.output
    kept = pydicom.dcmread(next((tmp_path / "plain").iterdir()))
    assert kept.PatientName == PHI["PatientName"]  # by default the source's patient is kept
    result = runner.invoke(app, ["convert", str(source.folder), str(tmp_path / "anon") + "/", "--anonymize"])
    assert result.exit_code == 0, result.output
    assert leaks(tmp_path / "anon") == []
    assert pydicom.dcmread(next((tmp_path / "anon").iterdir())).PatientIdentityRemoved == "YES"
