"""The Python API as a researcher uses it: ``mrct.translate`` and friends, on Volumes built by hand."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import mrct
from mrct import Modality, Volume, api
from mrct.errors import CropOptionError, ModalityError, MrctError, ReadError
from mrct.io.orientation import closest_canonical
from tests.model_fixtures import write_tiny_model
from tests.test_prepare import write_head

LABEL = {"CT": "mrct synthetic CT – not for diagnosis", "MR": "mrct synthetic MR – not for diagnosis"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def mr(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    return mrct.read_volume(write_head(tmp_path_factory.mktemp("heads") / "mr.nii.gz", "mr", seed=1))


def test_the_package_exports_the_api_without_importing_it() -> None:
    """``mrct.translate(...)`` as the issue names it. It was a module (mrct/translate.py), so
    calling it raised "module is not callable"; importing mrct stays cheap for ``mrct --help``."""
    code = (
        "import sys, mrct\n"
        "assert 'numpy' not in sys.modules and 'torch' not in sys.modules\n"
        "import mrct.translation, mrct.batch, mrct.prepare, mrct.cli\n"  # submodules loaded first
        "from mrct import api, io, volume\n"
        "assert mrct.translate is api.translate and mrct.translate_file is api.translate_file\n"
        "assert mrct.read_volume is io.read_volume and mrct.write_volume is io.write_volume\n"
        "assert mrct.Volume is volume.Volume and mrct.Modality is volume.Modality\n"
        "assert set(mrct.__all__) <= set(dir(mrct))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = mrct.nothing  # type: ignore[attr-defined]


def _labels(path: Path) -> tuple[str, str]:
    """(SeriesDescription or header label, DerivationDescription or '') as other tools read them."""
    if path.is_dir():
        ds = pydicom.dcmread(next(path.iterdir()), stop_before_pixels=True)
        return str(ds.SeriesDescription), str(ds.DerivationDescription)
    if path.name.endswith(".nii.gz"):
        return bytes(nib.load(path).header["descrip"]).split(b"\0")[0].decode(), ""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData("Description"), ""


def test_a_translated_volume_stays_labelled_synthetic_however_it_is_written(
    tmp_path: Path, mr: Volume, tiny: Path
) -> None:
    """``write_volume(mrct.translate(...), "out/")`` wrote a DICOM series "mrct output",
    "Converted by mrct": nothing said synthetic or not for diagnosis."""
    sct = mrct.translate(mr, to="ct", model=tiny, crop_mm=(40, -40))
    assert sct.source.label == LABEL["CT"] and mr.source.label == ""  # the input is not changed
    for name in ("sct.nii.gz", "sct.nrrd", "sct_dicom/"):
        written = mrct.write_volume(sct, tmp_path / name)
        description, derivation = _labels(written)
        assert description.startswith("mrct synthetic CT"), (name, description)
        if written.is_dir():
            assert description == LABEL["CT"]
            assert derivation.startswith("Synthetic CT computed by mrct") and "tiny" in derivation
            assert derivation.endswith("not for diagnosis")
    mine = mrct.write_volume(sct, tmp_path / "mine/", series_description="my label")
    assert _labels(mine)[0] == "my label"  # an explicit label still wins
    ct = sct.replace(array=np.asarray(mr.array > 100, np.int16) * 1040 - 1000)
    smr = mrct.translate(ct, to="mr", model=tiny, crop_mm=(40, -40))
    assert smr.source.label == LABEL["MR"]


def test_modality_given_as_text_is_a_modality(mr: Volume, tiny: Path) -> None:
    """Volume(a, affine, "CT") kept the text: the check that refuses a CT with to="ct" compares
    by identity and let it through, and writing it raised AttributeError."""
    assert Volume(mr.array, mr.affine, "ct").modality is Modality.CT
    assert Volume(mr.array, mr.affine, "MR").modality is Modality.MR
    with pytest.raises(ValueError, match="modality is CT, MR or None, got 'PET'"):
        Volume(mr.array, mr.affine, "PET")  # type: ignore[arg-type]
    ct = Volume(np.where(mr.array > 100, 40, -1000).astype(np.int16), mr.affine, "CT")  # type: ignore[arg-type]
    with pytest.raises(ModalityError):
        mrct.translate(ct, to="ct", model=tiny)


@pytest.mark.parametrize("dtype", [np.float16, np.bool_, ">f4", ">i2", np.longdouble])
@pytest.mark.parametrize("name", ["v.nrrd", "v.mha", "v.nii.gz", "dicom/"])
def test_write_volume_takes_any_numeric_voxel_type(tmp_path: Path, dtype: object, name: str) -> None:
    """float16 DICOM came back with its largest values negated (int16 wrap-around); NRRD/MHA
    raised SimpleITK's TypeError for bool, float16 and big-endian arrays."""
    values = np.random.default_rng(0).normal(100, 20, (12, 10, 8))
    array = (values > 100) if dtype is np.bool_ else values.astype(dtype)  # type: ignore[call-overload]
    affine = np.diag([1.5, 1.2, 2.0, 1.0])
    written = mrct.write_volume(Volume(array, affine, Modality.MR), tmp_path / name)
    back = mrct.read_volume(written)
    got, got_affine = closest_canonical(back.array.astype(np.float64), back.affine)
    assert np.allclose(got_affine, affine, atol=1e-4)
    expected = array.astype(np.float64)
    # DICOM MR: int16 x slope; the readers give float64 (long double here) back as float32.
    tolerance = 0.01 if name == "dicom/" and expected.max() > 1 else 1e-4
    assert np.abs(got - expected).max() <= tolerance


def test_in_memory_volumes_of_no_intensities_are_refused(mr: Volume, tiny: Path) -> None:
    for array in (mr.array > 100, mr.array.astype(np.complex64)):
        with pytest.raises(ReadError, match=f"voxels of type {array.dtype} are no scan's intensities"):
            mrct.translate(Volume(array, mr.affine), model=tiny)


def test_api_options_take_python_values(mr: Volume, tiny: Path) -> None:
    """crop_mm as two numbers and device=None raised AttributeError/TypeError."""
    text = mrct.translate(mr, model=tiny, crop_mm="40,-40")
    numbers = mrct.translate(mr, model=tiny, crop_mm=[40, -40.0], device=None)
    assert np.array_equal(text.array, numbers.array)
    with pytest.raises(CropOptionError, match=r"two numbers SUP,INF.*got \(40,\)"):
        mrct.translate(mr, model=tiny, crop_mm=(40,))
    with pytest.raises(MrctError, match="a Volume is read already"):
        mrct.translate(mr, model=tiny, series="1.2.3")


def test_translate_warns_of_a_slab_outside_the_scan(
    mr: Volume, tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``mrct translate`` warned; ``mrct.translate`` did not, and returns no slab to check."""
    top = float((mr.affine @ [0, 0, mr.shape[2] - 0.5, 1])[2])  # the scan's top (S, mm)
    with caplog.at_level(logging.WARNING, logger="mrct"):
        mrct.translate(mr, model=tiny, crop_mm=(top + 10, top - 60))
    assert "10.0 mm of the brow-to-jaw slab lies outside the scan" in caplog.text
    assert "the report" not in caplog.text  # the API writes none


def test_translate_reads_one_series_of_a_folder(tmp_path: Path, tiny: Path) -> None:
    from tests.dicom_factory import write_series

    # Head-sized: at the default 1 mm pixels the field of view (0.37 L) was smaller than a head,
    # and passed the head-volume check only while the MR threshold took in all of it.
    big = {"slice_spacing": 4.0, "pixel_spacing": (4.0, 4.0)}
    write_series(tmp_path / "study" / "a", modality="MR", shape=(48, 48, 40), **big)
    write_series(tmp_path / "study" / "b", modality="MR", shape=(44, 48, 36), **big)
    uids = [s.uid for s in api.info(tmp_path / "study").series]
    with pytest.raises(MrctError, match="--series"):
        mrct.translate(tmp_path / "study", model=tiny, crop_mm="20,-20")
    for uid in uids:
        one = mrct.translate(tmp_path / "study", model=tiny, crop_mm="20,-20", series=uid)
        assert one.source.dicom is not None and one.source.dicom.series_instance_uid == uid
        assert one.shape == mrct.read_volume(tmp_path / "study", series=uid).shape


def test_a_synthetic_image_read_back_stays_labelled(tmp_path: Path, mr: Volume, tiny: Path) -> None:
    """read_volume of mrct's own output, written again, became "mrct output, Converted by mrct"."""
    sct = mrct.translate(mr, to="ct", model=tiny, crop_mm="40,-40")
    again = mrct.read_volume(mrct.write_volume(sct, tmp_path / "sct.nii.gz"))
    assert again.source.label == LABEL["CT"] and again.modality is Modality.CT
    description, derivation = _labels(mrct.write_volume(again, tmp_path / "dicom/"))
    assert description == LABEL["CT"] and derivation == "Derived from an mrct synthetic CT; not for diagnosis"
    assert mrct.read_volume(tmp_path / "dicom").source.label == LABEL["CT"]
    for name in ("sct.nrrd", "sct.mha"):  # an MHA's label was not looked for ("metaimage")
        assert mrct.read_volume(mrct.write_volume(sct, tmp_path / name)).source.label == LABEL["CT"]
    assert mr.source.label == "" and mrct.read_volume(mr.source.path).source.label == ""
    blank = mrct.write_volume(sct, tmp_path / "blank/", series_description="")  # asked for: none
    assert _labels(blank)[0] == "mrct output"
