"""Tests for mrct.io.dicom_write: validity (dciodvfy), geometry (dcm2niix), identity."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import generate_uid

from mrct.errors import OutputExistsError, WriteError
from mrct.io import dicom_identity, dicom_write, read_volume
from mrct.io.dicom_write import write_dicom_series
from mrct.io.orientation import closest_canonical, ras_to_lps
from mrct.volume import DicomSource, Modality, SourceInfo, Volume
from tests.external_tools import dciodvfy_errors, dcm2niix_read
from tests.phantoms import oblique_affine

SHAPE = (5, 6, 4)
SPACING = (0.7, 0.9, 2.5)


def _affine(flip_i: bool = False) -> npt.NDArray[np.float64]:
    """Oblique, anisotropic RAS affine; ``flip_i`` makes det(A) < 0 (a radiological layout)."""
    return oblique_affine(SPACING, (11.5, -8.6, 17.2), (12.5, -20.25, 31.0), flip_i=flip_i)


def _values(kind: str) -> npt.NDArray[np.float64]:
    base = np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE)
    if kind == "ct":
        return base * 37 - 1000  # HU, spans -1000..3403
    if kind == "mr_int":
        return base * 11
    return base * 1.37 + 0.25  # non-integer MR: needs a rescale


def _source(n_sop: int = 3) -> DicomSource:
    return DicomSource(
        series_instance_uid=generate_uid(),
        sop_class_uid=pydicom.uid.MRImageStorage,
        frame_of_reference_uid=generate_uid(),
        modality="MR",
        patient={
            "PatientName": "DOE^JANE",
            "PatientID": "P-42",
            "PatientBirthDate": "19700102",
            "PatientSex": "F",
        },
        study={
            "StudyInstanceUID": generate_uid(),
            "StudyDate": "20240102",
            "StudyTime": "101112",
            "StudyID": "77",
            "AccessionNumber": "ACC9",
            "ReferringPhysicianName": "",
            "StudyDescription": "Head",
        },
        patient_position="HFS",
        sop_instance_uids=tuple(generate_uid() for _ in range(n_sop)),
    )


def _volume(kind: str = "ct", *, flip_i: bool = True, source: DicomSource | None = None) -> Volume:
    """``flip_i`` (the default): a layout a scanner writes, so the files hold the array as it lies."""
    modality = Modality.CT if kind == "ct" else Modality.MR
    info = SourceInfo(path="/data/sub-01/t1.nii.gz", format="nifti", dicom=source)
    return Volume(_values(kind), _affine(flip_i), modality, info)


@pytest.mark.parametrize("kind", ["ct", "mr_int", "mr_float"])
@pytest.mark.parametrize("with_source", [False, True])
def test_every_file_passes_dciodvfy(tmp_path: Path, kind: str, with_source: bool) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    volume = _volume(kind, source=_source() if with_source else None)
    paths = write_dicom_series(volume, tmp_path / "series", series_description="t")
    assert [p.name for p in paths] == [f"IM_{k:04d}.dcm" for k in range(1, SHAPE[2] + 1)]
    for path in paths:
        assert dciodvfy_errors(path) == [], path.name


@pytest.mark.parametrize("kind", ["ct", "mr_int"])
@pytest.mark.parametrize("flip_i", [False, True])
def test_dcm2niix_reads_same_grid(tmp_path: Path, kind: str, flip_i: bool) -> None:
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix not installed")
    volume = _volume(kind, flip_i=flip_i)
    series = tmp_path / "series"
    write_dicom_series(volume, series, series_description="t")
    out = tmp_path / "nii"
    out.mkdir()
    cmd = ["dcm2niix", "-z", "n", "-b", "n", "-x", "i", "-p", "n", "-f", "out", "-o", str(out)]
    subprocess.run([*cmd, str(series)], capture_output=True, check=True)
    niftis = sorted(out.glob("*.nii"))
    assert len(niftis) == 1, niftis
    img = nib.nifti1.load(niftis[0])
    got_data, got_affine = closest_canonical(np.asarray(img.get_fdata()), img.affine)
    want_data, want_affine = closest_canonical(volume.array, volume.affine)
    np.testing.assert_allclose(got_affine, want_affine, atol=1e-4)
    assert got_data.shape == want_data.shape
    assert np.array_equal(got_data, want_data)


@pytest.mark.parametrize("flip_i", [False, True])
def test_geometry_attributes_match_spec(tmp_path: Path, flip_i: bool) -> None:
    volume = _volume("ct", flip_i=flip_i)
    paths = write_dicom_series(volume, tmp_path / "s", series_description="t")
    array, affine = volume.array, volume.affine.copy()
    if not flip_i:  # right-handed: written with i reversed, so that the patient's right is on the left
        array = array[::-1]
        affine[:3, 3] += affine[:3, 0] * (SHAPE[0] - 1)
        affine[:3, 0] *= -1
    lps = ras_to_lps(affine)
    n_i, n_j, _ = SHAPE
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.InstanceNumber == k + 1
        assert (ds.Rows, ds.Columns) == (n_j, n_i)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        np.testing.assert_allclose(iop[:3], lps[:3, 0] / SPACING[0], atol=1e-9)
        np.testing.assert_allclose(iop[3:], -lps[:3, 1] / SPACING[1], atol=1e-9)
        np.testing.assert_allclose(
            np.array(ds.ImagePositionPatient, dtype=float),
            (lps @ [0, n_j - 1, k, 1])[:3],
            atol=1e-6,
        )
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.9, 0.7])
        assert float(ds.SliceThickness) == pytest.approx(2.5)
        # pixel (row, col) of slice k holds array[col, J-1-row, k]
        assert np.array_equal(ds.pixel_array, array[:, ::-1, k].T)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert (ds.PixelRepresentation, ds.BitsStored, ds.RescaleType) == (1, 16, "HU")


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_ct_values_rounded_and_clipped(tmp_path: Path, dtype: type) -> None:
    array: npt.NDArray = np.zeros(SHAPE, dtype=dtype)
    array[0, 0, 0], array[1, 0, 0], array[2, 0, 0] = 1.6, 40000.0, -40000.0
    volume = Volume(array, _affine(flip_i=True), Modality.CT)
    paths = write_dicom_series(volume, tmp_path / "s", series_description="t")
    ds = pydicom.dcmread(paths[0])
    col0 = ds.pixel_array[::-1, :].T[:3, 0]  # back to array[i, j=0]
    assert col0.tolist() == [2 if dtype is np.float32 else 1, 32767, -32768]
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)


def test_mr_values_exact_or_rescaled(tmp_path: Path) -> None:
    exact = write_dicom_series(_volume("mr_int"), tmp_path / "a", series_description="t")
    ds = pydicom.dcmread(exact[1])
    assert "RescaleSlope" not in ds
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert np.array_equal(ds.pixel_array, _values("mr_int")[:, ::-1, 1].T)

    volume = _volume("mr_float")
    scaled = write_dicom_series(volume, tmp_path / "b", series_description="t")
    ds = pydicom.dcmread(scaled[1])
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert intercept == 0.0
    real = ds.pixel_array * slope + intercept
    np.testing.assert_allclose(real, volume.array[:, ::-1, 1].T, atol=slope / 2 + 1e-9)
    assert float(ds.WindowWidth) >= 1.0


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_mr_integers_past_int16_are_stored_exactly(tmp_path: Path, dtype: type) -> None:
    """A uint16 MR (0..65535) was stored with RescaleSlope 1.996, changing nearly every voxel by up
    to 1; an integer intercept stores it exactly, as dcm2niix and mrct read it back."""
    values = np.linspace(0, 65535, int(np.prod(SHAPE))).round().reshape(SHAPE).astype(dtype)
    source = SourceInfo(path="/data/t1.nii.gz", format="nifti")
    volume = Volume(values, _affine(flip_i=True), Modality.MR, source)  # a layout read back as is
    paths = write_dicom_series(volume, tmp_path / "s", series_description="t")
    ds = pydicom.dcmread(paths[0])
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 32768.0)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(paths[0]) == []
    np.testing.assert_array_equal(read_volume(tmp_path / "s").array, values)
    if shutil.which("dcm2niix"):
        data, _ = dcm2niix_read(tmp_path / "s", tmp_path / "d2n", rotate_3d=False)
        np.testing.assert_array_equal(np.sort(data, axis=None), np.sort(values, axis=None))


def test_integers_too_large_for_an_exact_intercept_take_a_slope() -> None:
    """From review: an intercept past about 1e13 does not fit a 16-character DS exactly, and the
    file would have said "exact" while every voxel was thousands off."""
    values = np.array([10**15 + 12345, 10**15 + 13345, 10**15 + 77880], np.int64).reshape(1, 1, 3)
    stored, slope, intercept = dicom_write._quantize(values, Modality.MR)
    assert intercept == 0.0 and slope > 1.0  # the slope path: within half a step, as documented
    np.testing.assert_allclose(stored * slope + intercept, values, rtol=0, atol=slope / 2 + 1)


def test_source_identity_copied(tmp_path: Path) -> None:
    source = _source(n_sop=3)
    paths = write_dicom_series(
        _volume("ct", source=source), tmp_path / "s", series_description="sCT", series_number=7
    )
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        for keyword, value in {**source.patient, **source.study}.items():
            assert str(ds[keyword].value) == value, keyword
        assert ds.FrameOfReferenceUID == source.frame_of_reference_uid
        assert ds.SeriesInstanceUID != source.series_instance_uid
        assert (ds.SeriesDescription, ds.SeriesNumber, ds.Manufacturer) == ("sCT", 7, "mrct")
        assert ds.PatientPosition == "HFS"
        refs = [item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence]
        assert refs == list(source.sop_instance_uids)
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_instance_uid
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    # Without a number given: the source's plus 1000, so it is listed by its source (was 999).
    numbered = dataclasses.replace(source, series_number=5)
    path = write_dicom_series(_volume("ct", source=numbered), tmp_path / "n", series_description="sCT")[0]
    assert pydicom.dcmread(path).SeriesNumber == 1005
    path = write_dicom_series(_volume("ct"), tmp_path / "none", series_description="sCT")[0]
    assert pydicom.dcmread(path).SeriesNumber == 999


@pytest.mark.parametrize("kind", ["ct", "mr_float"])
def test_files_are_the_bytes_pydicom_writes(tmp_path: Path, kind: str) -> None:
    """The shared part of a series is encoded once (mrct.io.dicom_encode); every file must still
    be exactly what pydicom's dcmwrite makes of the same dataset (lengths, order, padding,
    file meta group length), here with a non-ASCII name in UTF-8 and source references."""
    source = _source(n_sop=5)
    source = dataclasses.replace(source, patient={**source.patient, "PatientName": "Müller^Zoë"})
    paths = write_dicom_series(_volume(kind, source=source), tmp_path / "s", series_description="sCT ü")
    for path in paths:
        ds = pydicom.dcmread(path)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        assert buffer.getvalue() == path.read_bytes(), path.name
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert str(pydicom.dcmread(paths[0]).PatientName) == "Müller^Zoë"


def test_placeholders_without_dicom_source(tmp_path: Path) -> None:
    volume = _volume("mr_int")
    first = pydicom.dcmread(write_dicom_series(volume, tmp_path / "a", series_description="t")[0])
    second = pydicom.dcmread(write_dicom_series(volume, tmp_path / "b", series_description="t")[0])
    digest = hashlib.sha1(os.path.abspath(volume.source.path).encode()).hexdigest()[:12]
    assert str(first.PatientName) == dicom_identity.PLACEHOLDER_PATIENT_NAME
    assert first.PatientID == dicom_identity.PLACEHOLDER_PATIENT_ID_PREFIX + digest
    relative = volume.replace(
        source=dataclasses.replace(volume.source, path=os.path.relpath(volume.source.path))
    )
    third = pydicom.dcmread(write_dicom_series(relative, tmp_path / "c", series_description="t")[0])
    assert third.PatientID == first.PatientID  # the file as typed relatively: the same patient
    assert (first.PatientBirthDate, first.PatientSex, first.AccessionNumber) == ("", "", "")
    assert first.StudyID == dicom_identity.PLACEHOLDER_STUDY_ID
    assert first.SeriesNumber == dicom_write.DEFAULT_SERIES_NUMBER
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.FrameOfReferenceUID != second.FrameOfReferenceUID
    assert "SourceImageSequence" not in first


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "s"
    old = write_dicom_series(_volume("ct"), out, series_description="old")
    old_uid = pydicom.dcmread(old[0]).SOPInstanceUID
    with pytest.raises(OutputExistsError):
        write_dicom_series(_volume("ct"), out, series_description="new")
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in old]
    assert pydicom.dcmread(old[0]).SOPInstanceUID == old_uid
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp folder left
    new = write_dicom_series(_volume("ct"), out, series_description="new", overwrite=True)
    assert pydicom.dcmread(new[0]).SeriesDescription == "new"


def test_rejects_bad_input(tmp_path: Path) -> None:
    sheared = _affine()
    sheared[:3, 1] += 0.2 * sheared[:3, 0]
    with pytest.raises(WriteError, match="orthogonal"):
        write_dicom_series(
            Volume(_values("ct"), sheared, Modality.CT), tmp_path / "a", series_description="t"
        )
    nan = _values("ct")
    nan[0, 0, 0] = np.nan
    with pytest.raises(WriteError, match="NaN"):
        write_dicom_series(Volume(nan, _affine(), Modality.CT), tmp_path / "c", series_description="t")
    with pytest.raises(WriteError, match="64 characters"):
        write_dicom_series(_volume("ct"), tmp_path / "d", series_description="x" * 65)
    with pytest.raises(WriteError, match="modality"):
        write_dicom_series(Volume(_values("ct"), _affine()), tmp_path / "b", series_description="t")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_keeps_a_folder_holding_other_files(tmp_path: Path) -> None:
    out = tmp_path / "s"
    write_dicom_series(_volume("ct"), out, series_description="old")
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(OutputExistsError, match=r"'notes\.txt'"):
        write_dicom_series(_volume("ct"), out, series_description="new", overwrite=True)
    (out / "notes.txt").unlink()
    (out / "sub").mkdir()
    with pytest.raises(OutputExistsError, match="'sub'"):
        write_dicom_series(_volume("ct"), out, series_description="new", overwrite=True)
    assert pydicom.dcmread(out / "IM_0001.dcm").SeriesDescription == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp folder left
    (out / "sub").rmdir()
    (out / "Thumbs.db").mkdir()  # a folder under a litter name is the user's
    (out / "Thumbs.db" / "plan.txt").write_text("mine\n")
    with pytest.raises(OutputExistsError, match=r"'Thumbs\.db'"):
        write_dicom_series(_volume("ct"), out, series_description="new", overwrite=True)
    shutil.rmtree(out / "Thumbs.db")
    (out / ".DS_Store").write_bytes(b"\0")  # the desktop's litter does not make a folder the user's
    write_dicom_series(_volume("ct"), out, series_description="new", overwrite=True)
    assert pydicom.dcmread(out / "IM_0001.dcm").SeriesDescription == "new"

    # A file where the series folder goes is not replaced either; a link to an earlier
    # series folder is replaced by the new folder, leaving the linked folder as it was.
    notes = tmp_path / "notes"
    notes.write_text("mine\n")
    with pytest.raises(OutputExistsError, match="is not a folder"):
        write_dicom_series(_volume("ct"), notes, series_description="new", overwrite=True)
    assert notes.read_text() == "mine\n"
    link = tmp_path / "link"
    link.symlink_to(out)
    write_dicom_series(_volume("ct"), link, series_description="newer", overwrite=True)
    assert not link.is_symlink() and pydicom.dcmread(link / "IM_0001.dcm").SeriesDescription == "newer"
    assert pydicom.dcmread(out / "IM_0001.dcm").SeriesDescription == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "notes", "s"]


def test_nominal_sizes_are_not_printed_at_float32_noise(tmp_path: Path) -> None:
    # NIfTI pixdim is float32, so a 4.8 mm slice reads back as 4.79999991...; SliceThickness
    # printed "4.79999991024241" before. ImagePositionPatient keeps full precision.
    volume = _volume("ct")
    affine = volume.affine.copy()
    affine[:3, 2] *= float(np.float32(4.8)) / np.linalg.norm(affine[:3, 2])
    volume = dataclasses.replace(volume, affine=affine)
    ds = pydicom.dcmread(write_dicom_series(volume, tmp_path / "s", series_description="t")[0])
    assert str(ds.SliceThickness) == "4.8"


@pytest.mark.parametrize(
    "missing",
    [
        {"sop_class_uid": ""},
        {"series_instance_uid": ""},
        {"sop_instance_uids": ("", "1.2.3.abc")},
    ],
)
def test_a_source_without_valid_uids_is_not_referenced(tmp_path: Path, missing: dict) -> None:
    # Some exports drop SOP class or instance UIDs: the references were written empty (type 1),
    # 70 dciodvfy errors per file.
    source = dataclasses.replace(_source(), **missing)
    path = write_dicom_series(_volume("mr_int", source=source), tmp_path / "s", series_description="t")[0]
    ds = pydicom.dcmread(path)
    assert "SourceImageSequence" not in ds and "ReferencedSeriesSequence" not in ds
    assert ds.FrameOfReferenceUID == source.frame_of_reference_uid
    assert dciodvfy_errors(path) == []


def test_a_lossy_compressed_source_keeps_its_flag(tmp_path: Path) -> None:
    """PS3.3 C.7.6.1.1.5: once LossyImageCompression is 01 it is never reset, also in images
    derived from it (it was dropped, by convert as by translate)."""
    from mrct.io import read_volume
    from tests.dicom_factory import write_series

    series = write_series(tmp_path / "src", modality="MR", shape=(20, 24, 6))
    for f in series.files:
        ds = pydicom.dcmread(f)
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = "12.5"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.save_as(f)
    volume = read_volume(tmp_path / "src")
    out = pydicom.dcmread(write_dicom_series(volume, tmp_path / "out", series_description="t")[0])
    assert out.LossyImageCompression == "01"
    assert (out.LossyImageCompressionMethod, float(out.LossyImageCompressionRatio)) == ("ISO_10918_1", 12.5)
    plain = pydicom.dcmread(write_dicom_series(_volume("mr_int"), tmp_path / "o2", series_description="t")[0])
    assert "LossyImageCompression" not in plain


def test_multi_valued_names_and_acr_nema_dates_of_a_source_are_written_as_dicom_values(
    tmp_path: Path,
) -> None:
    """From a hunt: a source's PatientName "Last^First\\Alias^Name" became "[Last^First, Alias^Name]"
    (a Python list, silently), and its StudyDate "2022-04-07" and StudyTime "15:01:38" (ACR-NEMA
    forms some exporters write) were copied, failing dciodvfy."""
    from mrct.io import read_volume
    from tests.dicom_factory import write_series

    series = write_series(tmp_path / "src", modality="MR", shape=(32, 32, 6))
    for f in series.files:
        ds = pydicom.dcmread(f)
        ds.PatientName = "Last^First\\Alias^Name"
        ds.StudyDescription = "KOPF\\HALS"
        ds.StudyDate, ds.StudyTime, ds.PatientBirthDate = "2022-04-07", "15:01:38", "not a date"
        ds.save_as(f)
    volume = read_volume(series.files[0].parent)
    out = pydicom.dcmread(write_dicom_series(volume, tmp_path / "out", series_description="t")[0])
    assert [str(n) for n in out.PatientName] == ["Last^First", "Alias^Name"]
    assert list(out.StudyDescription) == ["KOPF", "HALS"]
    assert (out.StudyDate, out.StudyTime, out.PatientBirthDate) == ("20220407", "150138", "")
    # A name or description is copied with all its values, as the source has it (a PACS matches
    # the patient by it), though the dictionary allows one: dciodvfy's only complaint is that.
    errors = dciodvfy_errors(tmp_path / "out" / "IM_0001.dcm")
    assert errors and all("Value Multiplicity" in e for e in errors), errors


@pytest.mark.parametrize(
    ("keyword", "value", "written"),
    [
        ("StudyDate", "2022.04.07", "20220407"),
        ("StudyDate", "20221399", None),  # month 13
        ("StudyDate", "2022-0407", None),  # two separators or none
        ("StudyTime", "15:01:38.5", "150138.5"),
        ("StudyTime", "1501", "1501"),
        ("StudyTime", "256199", None),
        ("StudyID", "A-1", "A-1"),  # other attributes as given
    ],
)
def test_source_dates_and_times_are_valid_or_left_out(keyword: str, value: str, written: str | None) -> None:
    from mrct.io.dicom_identity import _valid_date_or_time

    assert _valid_date_or_time(keyword, value) == written


def test_a_grid_sheared_by_rounding_is_written_with_orthogonal_cosines(tmp_path: Path) -> None:
    """A shear of 4e-4 (within the rounding tolerance) went into ImageOrientationPatient as it was:
    dciodvfy's "Orientation vectors are not orthogonal", and each reader squared it its own way."""
    volume = _volume("ct")
    affine = volume.affine.copy()
    affine[:3, 1] += 4e-4 * affine[:3, 0]
    paths = write_dicom_series(volume.replace(affine=affine), tmp_path / "s", series_description="t")
    ds = pydicom.dcmread(paths[0])
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    assert abs(iop[:3] @ iop[3:]) < 1e-9
    np.testing.assert_allclose(np.linalg.norm(iop.reshape(2, 3), axis=1), 1.0, atol=1e-9)
    lps = ras_to_lps(affine)  # the cosines move by no more than the shear
    assert np.abs(iop[:3] - lps[:3, 0] / np.linalg.norm(lps[:3, 0])).max() < 4e-4
    if shutil.which("dciodvfy"):
        assert not [e for e in dciodvfy_errors(paths[0]) if "orthogonal" in e]


def test_position_reference_indicator_goes_with_the_frame_of_reference(tmp_path: Path) -> None:
    """From a hunt: the output kept the GE source's FrameOfReferenceUID but blanked its
    PositionReferenceIndicator (OM), which names the point that very frame is measured from."""
    from tests.bad_files import good_series

    series = good_series(tmp_path / "src")
    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PositionReferenceIndicator = "OM"
        ds.save_as(f)
    volume = read_volume(series)
    assert volume.source.dicom is not None and volume.source.dicom.position_reference_indicator == "OM"
    written = pydicom.dcmread(write_dicom_series(volume, tmp_path / "out", series_description="t")[0])
    assert (written.FrameOfReferenceUID, written.PositionReferenceIndicator) == (
        volume.source.dicom.frame_of_reference_uid,
        "OM",
    )
    no_frame = dataclasses.replace(volume.source.dicom, frame_of_reference_uid=None)  # a new frame
    lone = volume.replace(source=dataclasses.replace(volume.source, dicom=no_frame))
    assert (
        pydicom.dcmread(write_dicom_series(lone, tmp_path / "new", series_description="t")[0]).get(
            "PositionReferenceIndicator"
        )
        == ""
    )
