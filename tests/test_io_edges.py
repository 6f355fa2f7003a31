"""Edges of the file formats: MetaImage headers from SimpleITK, NIfTI data types, geometry
codes and spatial units, and a DICOM write refused on the volume's grid."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest
import SimpleITK as sitk

from mrct.errors import ReadError, WriteError
from mrct.io import read_volume, write_volume
from mrct.volume import Modality, Volume
from tests.bad_files import mhd_slices
from tests.phantoms import oblique_affine, phantom


def _sitk_image() -> tuple[sitk.Image, npt.NDArray[np.int16]]:
    """A 4x3x2 (i, j, k) int16 image, anisotropic, off the origin, with an LPS direction."""
    array = np.arange(24, dtype=np.int16).reshape(4, 3, 2) * 7 - 50
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))  # SimpleITK takes [z, y, x]
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image, array


@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
def test_metaimage_with_simpleitk_metadata_fields_is_read(tmp_path: Path, suffix: str) -> None:
    """SimpleITK writes an image's metadata dictionary (e.g. a NIfTI's "dim[0]", DICOM tags,
    names with spaces) as header fields of their own; MetaIO ignores them, and so must we."""
    image, array = _sitk_image()
    for key, value in {"dim[0]": "3", "pixdim[1]": "0.5", "0008|0060": "CT", "Some Key": "a b"}.items():
        image.SetMetaData(key, value)
    path = tmp_path / f"x{suffix}"
    sitk.WriteImage(image, str(path))
    header = path.read_bytes()[:2000]
    assert b"dim[0] = 3" in header and b"0008|0060 = CT" in header  # the fields this test is about

    vol = read_volume(path)

    np.testing.assert_array_equal(vol.array, array)
    # LPS columns direction * spacing: i -> (0, -0.5, 0), j -> (0.75, 0, 0), k -> (0, 0, 2);
    # RAS flips the sign of x and y, in the columns and in the origin.
    expected = np.array(
        [
            [0.0, -0.75, 0.0, -10.0],
            [0.5, 0.0, 0.0, 20.0],
            [0.0, 0.0, 2.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(vol.affine, expected, atol=1e-9)


def test_metaimage_from_a_nifti_is_read_on_the_same_grid(tmp_path: Path) -> None:
    """The real case: SimpleITK reads a NIfTI and writes it as MHA with its NIfTI fields."""
    vol = phantom(affine=oblique_affine())
    write_volume(vol, tmp_path / "v.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "v.nii.gz")), str(tmp_path / "v.mha"))
    assert b"qform_code_name" in (tmp_path / "v.mha").read_bytes()[:4000]

    back = read_volume(tmp_path / "v.mha")

    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


@pytest.mark.parametrize(
    "line",
    [
        b"NoEqualsSign 3\n",  # not a field at all
        b" = 3\n",  # a value with no name
        b"Bad\x01Key = 3\n",  # a control character
        b"Cl\xe9 = 3\n",  # a name that is not ASCII
    ],
)
def test_malformed_metaimage_header_is_still_refused(tmp_path: Path, line: bytes) -> None:
    image, _ = _sitk_image()
    sitk.WriteImage(image, str(tmp_path / "good.mha"))
    raw = (tmp_path / "good.mha").read_bytes()
    at = raw.index(b"DimSize")
    (tmp_path / "bad.mha").write_bytes(raw[:at] + line + raw[at:])

    with pytest.raises(ReadError, match="malformed MetaImage header") as info:
        read_volume(tmp_path / "bad.mha")
    assert info.value.path == str(tmp_path / "bad.mha")


def test_metaimage_slice_files_are_read_as_metaio_reads_them(tmp_path: Path) -> None:
    """ElementDataFile LIST (names one a line, "LIST 2D", ends stripped, extra names unread) and
    a file-name pattern read every slice; a last name without a line end, which MetaIO skips
    (it left that slice zero or uninitialised), is refused."""
    expected = (np.arange(60, dtype=np.int16).reshape(5, 3, 4) * 11 - 200).transpose(2, 1, 0)
    listed = "".join(f"s{k:03d}.raw \r\n" for k in range(5))
    forms = {
        "list": ("LIST\n" + listed + "extra.raw\n", "s%03d.raw", False),
        "list 2d": ("LIST 2D\n" + listed, "s%03d.raw", False),
        "pattern": ("s%03d.raw 0 4 1", "s%03d.raw", False),
        "pattern defaults": ("s%03d.raw", "s%03d.raw", False),  # numbered 1 to DimSize: s001 ...
        "spaces": ("slice %02d.raw 10 14 1", "slice %02d.raw", False),
        "compressed": ("z%d.raw 0", "z%d.raw", True),
    }
    for name, (data_file, names, compressed) in forms.items():
        folder = tmp_path / name
        folder.mkdir()
        if name == "pattern defaults":
            mhd_slices(folder, data_file, names)
            for k in reversed(range(5)):
                (folder / f"s{k:03d}.raw").rename(folder / f"s{k + 1:03d}.raw")
        elif name == "spaces":
            mhd_slices(folder, data_file, "tmp %02d.raw")
            for k in range(5):
                (folder / f"tmp {k:02d}.raw").rename(folder / f"slice {k + 10:02d}.raw")
        else:
            mhd_slices(folder, data_file, names, compressed)
        np.testing.assert_array_equal(read_volume(folder / "slices.mhd").array, expected, err_msg=name)

    mhd = mhd_slices(tmp_path, "LIST\n" + listed.removesuffix("\r\n"))
    mhd.write_bytes(mhd.read_bytes().removesuffix(b"\n"))
    with pytest.raises(ReadError, match=r"names 4 files, DimSize needs 5 slices \(the last line has no line"):
        read_volume(mhd)


@pytest.mark.parametrize(
    ("data_file", "fields", "message"),
    [
        ("LIST 3\ns000.raw", "", r"'LIST 3': each file must hold 1 to 2 dimensions"),
        ("LIST -1\ns000.raw", "", r"'LIST -1': each file must hold 1 to 2 dimensions"),
        ("s%03d.raw 4 0 1", "", r"names 0 files, DimSize needs 5 slices"),
        ("s%03d.raw 0 4 -1", "", r"step is -1"),
        ("s%s.raw 0 4 1", "", r"one conversion like %03d"),
        ("s%03d%d.raw 0 4 1", "", r"one conversion like %03d"),
        ("s%03d.raw 0 x 1", "", r"file numbers are not numbers"),
        ("s%03d.raw 0 4 1", "HeaderSize = 2\n", r"'s000.raw' is 24 bytes, one slice needs 24 after a 2-byte"),
        ("s%03d.raw 0 4 1", "CompressedData = True\n", r"corrupt compressed voxel data in the slice file"),
    ],
)
def test_metaimage_slice_files_that_itk_misreads_are_refused(
    tmp_path: Path, data_file: str, fields: str, message: str
) -> None:
    """Each of these read without an error, into slices of zeros or garbage (not a LIST of
    whole volumes, a negative file dimension, a backward range, a negative step, a
    pattern sprintf cannot fill with one int, a HeaderSize the files lack, raw slices
    read as compressed)."""
    mhd = mhd_slices(tmp_path, data_file)
    mhd.write_bytes(mhd.read_bytes().replace(b"ElementDataFile", fields.encode() + b"ElementDataFile"))
    with pytest.raises(ReadError, match=message) as info:
        read_volume(mhd)
    assert info.value.path == str(mhd)


@pytest.mark.parametrize(
    ("values", "on_disk"),
    [
        (np.array([-5, 0, 7, 2**31 - 1], dtype=np.int64), np.int32),
        (np.array([-5, 0, 7, 2**40], dtype=np.int64), np.int64),  # no int32 holds it: kept exact
        (np.array([0, 7, 2**31 - 1], dtype=np.uint64), np.int32),
        (np.array([0, 7, 2**32 - 1], dtype=np.uint64), np.uint32),
        (np.array([0, 7, 2**63 + 3], dtype=np.uint64), np.uint64),
        (np.array([True, False, True], dtype=bool), np.uint8),
        (np.array([-1.5, 0.0, 2.25], dtype=np.float16), np.float32),
    ],
)
def test_nifti_writes_numpy_types_it_has_no_code_for(
    tmp_path: Path, values: npt.NDArray, on_disk: type[np.generic]
) -> None:
    array = np.resize(values, (4, 3, 2))
    write_volume(Volume(array, oblique_affine()), tmp_path / "v.nii.gz")

    assert nib.load(tmp_path / "v.nii.gz").get_data_dtype() == np.dtype(on_disk)
    back = read_volume(tmp_path / "v.nii.gz")
    assert back.array.dtype == np.dtype(on_disk)
    np.testing.assert_array_equal(back.array, array)  # every value kept
    np.testing.assert_allclose(back.affine, oblique_affine(), atol=1e-4)


def test_nifti_without_geometry_codes_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    img = nib.Nifti1Image(np.zeros((4, 3, 2), np.int16), None)
    img.header.set_zooms((0.5, 0.75, 2.0))
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0
    nib.save(img, tmp_path / "nogeo.nii.gz")

    with caplog.at_level(logging.WARNING, logger="mrct.io.nifti"):
        vol = read_volume(tmp_path / "nogeo.nii.gz")

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(tmp_path / "nogeo.nii.gz") in warnings[0]
    assert "geometry is unknown" in warnings[0] and "voxel size" in warnings[0]
    np.testing.assert_allclose(np.abs(np.diag(vol.affine)), [0.5, 0.75, 2.0, 1.0])


def test_nifti_with_geometry_codes_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_volume(phantom(), tmp_path / "v.nii.gz")
    with caplog.at_level(logging.WARNING, logger="mrct.io.nifti"):
        read_volume(tmp_path / "v.nii.gz")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(("unit", "mm_per_unit"), [("meter", 1000.0), ("micron", 0.001), ("unknown", 1.0)])
def test_nifti_spatial_units_become_mm(
    tmp_path: Path, unit: str, mm_per_unit: float, caplog: pytest.LogCaptureFixture
) -> None:
    """Scaled as ITK does; said, since nibabel and FSL do not scale and outputs are in mm."""
    affine_mm = oblique_affine()
    in_unit = affine_mm.copy()
    in_unit[:3, :] /= mm_per_unit  # the same grid, written in metres or microns
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(4, 3, 2), in_unit)
    img.set_qform(in_unit, code=1)
    img.header.set_xyzt_units(xyz=unit, t="sec")
    nib.save(img, tmp_path / f"{unit}.nii")

    with caplog.at_level(logging.WARNING, logger="mrct"):
        vol = read_volume(tmp_path / f"{unit}.nii")

    np.testing.assert_allclose(vol.affine, affine_mm, rtol=1e-5, atol=1e-4)
    said = f"spatial unit is {unit.replace('meter', 'metres').replace('micron', 'micrometres')}"
    assert (said in caplog.text) == (mm_per_unit != 1.0), caplog.text


def test_dicom_write_of_a_sheared_grid_names_the_output(tmp_path: Path) -> None:
    sheared = oblique_affine()
    sheared[:3, 1] += 0.2 * sheared[:3, 0]
    out = tmp_path / "series"

    with pytest.raises(WriteError, match="orthogonal") as info:
        write_volume(Volume(phantom().array, sheared, Modality.CT), f"{out}/")

    assert info.value.path == str(out)
    assert str(info.value).startswith(f"{out}: ")
    assert not out.exists()


def test_series_given_for_a_single_volume_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--series picks among DICOM series; given with a NIfTI it was silently ignored."""
    path = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)
    read_volume(path, series="1.2.3")
    assert f"{path}: holds one volume; --series applies to DICOM folders and zips" in caplog.text


def test_an_empty_zip_says_so(tmp_path: Path) -> None:
    """It said "folder is empty", of a file the user gave as a zip."""
    import zipfile

    from mrct.errors import InputNotFoundError

    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("study/", "")  # a folder entry only
    with pytest.raises(InputNotFoundError, match=r"empty\.zip: zip is empty \(no files in it\)"):
        read_volume(path)


def test_a_zip_of_a_nifti_says_to_unzip_it(tmp_path: Path) -> None:
    """From a hunt: it said "no DICOM image files found in folder" of a zip holding a NIfTI."""
    import zipfile

    nifti = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), nifti)
    path = tmp_path / "scan.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(nifti, "sub/one.nii.gz")
        zf.writestr("sub/readme.txt", "not an image")
    with pytest.raises(
        ReadError, match=r"scan\.zip: the zip holds no DICOM series but a scan file \(sub/one"
    ):
        read_volume(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not an image")
    with pytest.raises(ReadError, match=r"scan\.zip: no DICOM image files in the zip$"):
        read_volume(path)
    # From review: a damaged slice in a zip is reported as it is, not as "no DICOM image files".
    from tests.dicom_factory import write_series

    series = write_series(tmp_path / "s", modality="MR", shape=(8, 8, 4))
    cut = series.files[0]
    cut.write_bytes(cut.read_bytes()[:200])
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(cut, "s/a.dcm")
    with pytest.raises(ReadError, match=r"incomplete DICOM|truncated|cut short"):
        read_volume(path)


def test_ct_values_beyond_int16_are_clipped_with_a_warning_naming_the_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CT written as DICOM stores int16 HU (slope 1); values beyond were clipped silently."""
    array = np.full((8, 8, 4), -1000.0, np.float32)
    array[2:4, 2:4, 1] = 40000.0
    out = tmp_path / "ct_dicom"
    write_volume(Volume(array, np.eye(4), Modality.CT), f"{out}/")
    assert f"{out}: 4 voxel(s) outside -32768..32767 HU (up to 40000) are clipped" in caplog.text
    assert read_volume(out).array.max() == 32767
    caplog.clear()
    write_volume(Volume(np.clip(array, -1024, 3071), np.eye(4), Modality.CT), f"{tmp_path / 'fine'}/")
    assert "clipped" not in caplog.text


@pytest.fixture
def full_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MB tmpfs (needs root, as in CI and here); skipped where it cannot be mounted."""
    import shutil
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    if (
        not shutil.which("mount")
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True
        ).returncode
    ):
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield small
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.parametrize("name", ["big.nii.gz", "big.nii", "big.nrrd"])
def test_a_full_disk_is_a_write_error_naming_the_output(full_disk: Path, name: str) -> None:
    """From a hunt: "unexpected OSError: [Errno 28] No space left on device", exit 70, naming
    no file, for NIfTI (NRRD/MHA and DICOM were already WriteErrors); nothing is left behind."""
    rng = np.random.default_rng(0)
    noise = Volume(rng.normal(size=(80, 80, 80)).astype(np.float32), np.eye(4))  # 2 MB, incompressible
    with pytest.raises(WriteError, match="cannot write") as caught:
        write_volume(noise, full_disk / name)
    assert str(full_disk / name) in str(caught.value) and caught.value.exit_code == 5
    assert list(full_disk.iterdir()) == []


def test_a_failed_safetensors_write_is_an_os_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """safetensors raises its own SafetensorError for a full disk: export said "unexpected
    SafetensorError", exit 70, and a checkpoint write escaped the trainer's WriteError."""
    import errno

    import safetensors.torch
    import torch
    from safetensors import SafetensorError

    from mrct.tensor_files import save_tensors

    def full(*_args: object, **_kwargs: object) -> None:
        raise SafetensorError(
            "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
            'message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        save_tensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "w.safetensors")


@pytest.mark.parametrize(
    ("flag", "method", "said"),
    [
        (1, 0, r"the zip is encrypted \(password-protected\); unzip it first"),
        (0, 9, r"compression Python cannot unpack \(Deflate64\); unzip it with another tool"),
    ],
)
def test_a_zip_python_cannot_unpack_says_why(tmp_path: Path, flag: int, method: int, said: str) -> None:
    """Encrypted zips printed a ZipInfo's repr; Deflate64 ones "That compression method is not
    supported", naming neither the method nor what to do."""
    import zipfile

    path = tmp_path / "study.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("IM_0001.dcm", b"\0" * 256)
    raw = bytearray(path.read_bytes())
    for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        start = raw.index(signature)
        raw[start + at : start + at + 2] = flag.to_bytes(2, "little")
        raw[start + at + 2 : start + at + 4] = method.to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(ReadError, match=said) as err:
        read_volume(path)
    assert "ZipInfo" not in str(err.value) and "\n" not in str(err.value)
