"""NIfTI and NRRD/MHA: round trips, scaling, and agreement with SimpleITK."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mrct.errors import MrctError, OutputExistsError, ReadError, WriteError
from mrct.io import OutputFormat, read_volume, write_volume
from mrct.io.leftovers import TMP_MARK
from mrct.io.orientation import axis_codes, lps_to_ras
from mrct.volume import Modality
from tests.phantoms import oblique_affine, phantom


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.nrrd", "v.mha"])
@pytest.mark.parametrize("flip", [False, True])
def test_round_trip_keeps_affine_and_values(tmp_path: Path, name: str, flip: bool) -> None:
    vol = phantom(affine=oblique_affine(flip_i=flip))
    out = write_volume(vol, tmp_path / name)
    back = read_volume(out)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.array.dtype == vol.array.dtype


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nrrd", "v.mha"])
def test_simpleitk_reads_our_files_onto_the_same_grid(tmp_path: Path, name: str) -> None:
    """An independent reader (ITK, LPS) sees the same physical grid we wrote."""
    vol = phantom()
    write_volume(vol, tmp_path / name)
    img = sitk.ReadImage(str(tmp_path / name))
    lps = np.eye(4)
    lps[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    np.testing.assert_allclose(lps_to_ras(lps), vol.affine, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).transpose(2, 1, 0), vol.array)


def test_nifti_header_has_qform_sform_and_mm(tmp_path: Path) -> None:
    write_volume(phantom(), tmp_path / "v.nii.gz")
    hdr = nib.load(tmp_path / "v.nii.gz").header
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    assert hdr.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(hdr.get_qform(), hdr.get_sform(), atol=1e-4)


def test_a_sheared_nifti_keeps_its_qform_on_its_own_grid_only(tmp_path: Path) -> None:
    sform = np.diag([1.0, 1.0, 2.0, 1.0])
    sform[1, 2] = 0.5  # y moves with k: a gantry tilt kept as shear
    qform = np.diag([1.0, 1.0, 2.0, 1.0])
    img = nib.Nifti1Image(np.zeros((6, 7, 8), np.float32), sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=1)
    nib.save(img, tmp_path / "tilt.nii.gz")
    vol = read_volume(tmp_path / "tilt.nii.gz")
    write_volume(vol, tmp_path / "same.nii.gz")
    np.testing.assert_allclose(nib.load(tmp_path / "same.nii.gz").get_qform(), qform, atol=1e-6)
    moved = vol.affine.copy()
    moved[:3, 3] += [5.0, 7.0, 9.0]  # a crop: another grid, so the input's qform no longer applies
    write_volume(vol.replace(affine=moved), tmp_path / "crop.nii.gz")
    origin = nib.load(tmp_path / "crop.nii.gz").get_qform()[:3, 3]
    np.testing.assert_allclose(origin, [5.0, 7.0, 9.0], atol=1e-6)


def test_nifti_scaling_is_applied(tmp_path: Path) -> None:
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(raw, oblique_affine())
    img.header.set_slope_inter(2.5, -10.0)
    nib.save(img, tmp_path / "s.nii.gz")
    vol = read_volume(tmp_path / "s.nii.gz")
    np.testing.assert_allclose(vol.array, raw * 2.5 - 10.0)


def test_axis_codes() -> None:
    assert axis_codes(np.diag([-1.0, 1.0, 1.0, 1.0])) == "LAS"
    assert axis_codes(np.eye(4)) == "RAS"


def test_existing_output_is_kept_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "v.nii.gz"
    write_volume(phantom(seed=1), out)
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        write_volume(phantom(seed=2), out)
    assert out.read_bytes() == before
    write_volume(phantom(seed=2), out, overwrite=True)
    assert out.read_bytes() != before


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(WriteError, match=r"v\.nii\.gz: cannot write \(disk full\)"):
        write_volume(phantom(), tmp_path / "v.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_truncated_gzip_is_a_read_error(tmp_path: Path) -> None:
    write_volume(phantom(shape=(40, 40, 30)), tmp_path / "v.nii.gz")
    data = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError, match=r"truncated|corrupt|not a readable"):
        read_volume(tmp_path / "t.nii.gz")


def test_modality_override(tmp_path: Path) -> None:
    write_volume(phantom(), tmp_path / "v.nii.gz")
    assert read_volume(tmp_path / "v.nii.gz", modality=Modality.MR).modality is Modality.MR
    assert not any(TMP_MARK in p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_a_description_is_one_line_of_ascii_in_every_header(tmp_path: Path, suffix: str) -> None:
    """A newline in an API caller's description once became a header field of its own in MHA
    (a file mrct's reader then refused); non-ASCII went in raw."""
    out = write_volume(
        phantom(), tmp_path / f"o{suffix}", series_description="café\r\nElementType = MET_UCHAR – x"
    )
    expected = "caf?  ElementType = MET_UCHAR - x"
    if suffix == ".nii.gz":
        assert nib.load(out).header["descrip"].tobytes().rstrip(b"\0").decode("ascii") == expected
    else:
        assert sitk.ReadImage(str(out)).GetMetaData("Description") == expected
    assert np.array_equal(read_volume(out).array, phantom().array)


def test_an_output_folder_that_cannot_be_replaced_is_a_write_error_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An immutable or read-only parent made the final renames raise PermissionError (exit 70);
    and had the old folder been moved aside, it stayed hidden under a temporary name."""
    import os
    import re

    from mrct.errors import WriteError
    from mrct.io import atomic

    owned = atomic.Owned(re.compile(r"[a-z]+\.txt"))
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_replace, calls = os.replace, []

    def refuse_second(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2:  # the new folder onto the output, after the old one moved aside
            raise PermissionError(1, "Operation not permitted")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic.os, "replace", refuse_second)
    with (
        pytest.raises(WriteError, match="cannot write here"),
        atomic.atomic_dir(out, owned, overwrite=True) as tmp,
    ):
        (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
    assert (out / "old.txt").read_text() == "old"


def _itk_corners(path: Path) -> np.ndarray:
    """Where SimpleITK (3D Slicer's reader) puts the 8 corner voxels, LPS mm."""
    image = sitk.ReadImage(str(path))
    size = image.GetSize()
    ends = [(0, n - 1) for n in size]
    return np.array(
        [image.TransformIndexToPhysicalPoint((i, j, k)) for i in ends[0] for j in ends[1] for k in ends[2]]
    )


@pytest.mark.parametrize("codes", [(1, 2), (2, 3), (0, 0)])
def test_nifti_outputs_land_where_itk_and_nibabel_put_the_input(
    tmp_path: Path, codes: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    """A qform and sform that disagree (ITK then reads the qform unless sform_code is 1; nibabel
    the sform), or no geometry at all (each reader its own default): the output was written with
    qform = sform = nibabel's choice, codes 1, and landed up to 350 mm off the input in Slicer."""
    sform = oblique_affine()
    qform = sform.copy()
    qform[:3, 3] += [30.0, -20.0, 10.0]
    img = nib.Nifti1Image(phantom().array.astype(np.int16), sform)
    img.set_qform(qform, code=codes[0])
    img.set_sform(sform, code=codes[1])
    nib.save(img, tmp_path / "in.nii.gz")
    volume = read_volume(tmp_path / "in.nii.gz")
    assert "3D Slicer" in caplog.text
    write_volume(volume, tmp_path / "out.nii.gz")
    np.testing.assert_allclose(
        _itk_corners(tmp_path / "out.nii.gz"), _itk_corners(tmp_path / "in.nii.gz"), atol=1e-3
    )
    out = nib.load(tmp_path / "out.nii.gz")
    np.testing.assert_allclose(out.affine, nib.load(tmp_path / "in.nii.gz").affine, atol=1e-4)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == codes
    moved = volume.affine.copy()
    moved[:3, 3] += 5.0  # another grid (a crop): the input's forms no longer apply
    write_volume(volume.replace(affine=moved), tmp_path / "crop.nii.gz")
    crop = nib.load(tmp_path / "crop.nii.gz").header
    assert (int(crop["qform_code"]), int(crop["sform_code"])) == (1, 1)
    # A crop that keeps the affine: with no codes, readers' defaults depend on the shape.
    fewer = volume.replace(array=volume.array[:, :, :3])
    write_volume(fewer, tmp_path / "fewer.nii.gz")
    np.testing.assert_allclose(read_volume(tmp_path / "fewer.nii.gz").affine, fewer.affine, atol=1e-4)


def test_big_endian_nifti_converts_to_nrrd_and_mha(tmp_path: Path) -> None:
    """ITK takes native byte order only: exit 70, "dtype: >i2 is not supported"."""
    volume = phantom()
    img = nib.Nifti1Image(volume.array.astype(np.int16), volume.affine, nib.Nifti1Header(endianness=">"))
    nib.save(img, tmp_path / "be.nii")
    assert nib.load(tmp_path / "be.nii").get_data_dtype().byteorder == ">"
    for name in ("be.nrrd", "be.mha"):
        write_volume(read_volume(tmp_path / "be.nii"), tmp_path / name)
        assert (read_volume(tmp_path / name).array == volume.array.astype(np.int16)).all()


def test_a_nifti_pair_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """The .hdr was told to be renamed .nii (then "truncated"), the .img "not a recognised image"."""
    volume = phantom()
    nib.save(nib.Nifti1Pair(volume.array.astype(np.int16), volume.affine), tmp_path / "pair.hdr")
    for name in ("pair.hdr", "pair.img"):
        with pytest.raises(ReadError, match=r"half of a NIfTI .hdr/.img pair.*save it as one .nii.gz first"):
            read_volume(tmp_path / name)


@pytest.mark.parametrize("kind", ["4d_mha", "4d_nrrd", "one_component_nrrd"])
def test_a_singleton_axis_in_nrrd_or_mha_reads_as_3d(tmp_path: Path, kind: str) -> None:
    """As NIfTI (x, y, z, 1) does; NRRD/MHA said "got a 4D image" or "unsupported pixel type"."""
    volume = phantom()
    write_volume(volume, tmp_path / "v.nrrd")
    image = sitk.ReadImage(str(tmp_path / "v.nrrd"))
    odd = sitk.Compose([image]) if kind == "one_component_nrrd" else sitk.JoinSeries([image])
    path = tmp_path / ("odd.mha" if kind == "4d_mha" else "odd.nrrd")
    sitk.WriteImage(odd, str(path))
    got = read_volume(path)
    assert (got.array == volume.array).all()
    np.testing.assert_allclose(got.affine, volume.affine, atol=1e-6)


def test_a_zeroed_sform_falls_back_to_the_qform_as_itk_does(tmp_path: Path) -> None:
    """It was refused as "zero or degenerate voxel spacing in the header", with pixdim fine."""
    volume = phantom()
    header = nib.Nifti1Header()
    header.set_qform(volume.affine, code=1)
    header.set_sform(np.zeros((4, 4)), code=1)
    nib.save(nib.Nifti1Image(volume.array.astype(np.int16), None, header), tmp_path / "zero.nii.gz")
    assert int(nib.load(tmp_path / "zero.nii.gz").header["sform_code"]) == 1
    got = read_volume(tmp_path / "zero.nii.gz")
    np.testing.assert_allclose(got.affine, volume.affine, atol=1e-5)
    np.testing.assert_allclose(
        _itk_corners(tmp_path / "zero.nii.gz")[0], (got.affine @ [0, 0, 0, 1])[:3] * [-1, -1, 1], atol=1e-3
    )


def test_a_header_itk_places_elsewhere_is_warned_of_with_itks_own_distance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """sform_code 1 with a sheared sform (dcm2niix's gantry-tilt output) or one scaled unlike
    pixdim: ITK rejects that sform, and 3D Slicer showed a real head 26-190 mm away, silently."""
    sform = oblique_affine()
    sheared = sform.copy()
    sheared[:3, 2] += 0.3 * sheared[:3, 1]
    data = phantom().array.astype(np.int16)
    for name, (qform, s_form, zooms) in {
        "sheared": (sform, sheared, None),
        "scaled": (sform, sform, (1.0, 1.0, 1.0)),
    }.items():
        img = nib.Nifti1Image(data, s_form)
        img.set_qform(qform, code=1)
        img.set_sform(s_form, code=1)
        if zooms is not None:
            img.header["pixdim"][1:4] = zooms
        nib.save(img, tmp_path / f"{name}.nii.gz")
        caplog.clear()
        capfd.readouterr()
        volume = read_volume(tmp_path / f"{name}.nii.gz")
        assert "unexpected scales" not in capfd.readouterr().err  # ITK's own warning kept quiet
        itk_ras = _itk_corners(tmp_path / f"{name}.nii.gz") * [-1, -1, 1]
        ends = [(0, n - 1) for n in data.shape]
        ours = np.array([volume.affine @ [i, j, k, 1.0] for i in ends[0] for j in ends[1] for k in ends[2]])
        off = float(np.max(np.linalg.norm(ours[:, :3] - itk_ras, axis=1)))
        assert off > 1.0  # a small phantom: on a real head, 26-190 mm
        assert f"ITK and 3D Slicer place this image up to {off:.1f} mm from where mrct does" in caplog.text
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # ITK's switch put back
    img = nib.Nifti1Image(data, sform)
    nib.save(img, tmp_path / "plain.nii.gz")
    caplog.clear()
    read_volume(tmp_path / "plain.nii.gz")
    assert "ITK and 3D Slicer" not in caplog.text


def test_a_qform_that_is_no_rotation_beside_a_sform_reads_by_the_sform(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """quatern_b, c, d whose squares sum over 1 are no rotation: nibabel's get_qform raised
    ValueError ("w2 should be positive"), which ended as "unexpected ValueError", exit 70, though
    the sform (which mrct uses) was whole. Found by tests/test_fuzz.py."""
    vol = phantom()
    path = write_volume(vol, tmp_path / "q.nii")
    raw = bytearray(path.read_bytes())
    raw[260:264] = np.float32(2.0).tobytes()  # quatern_c; qform_code and sform_code stay 1
    path.write_bytes(bytes(raw))
    back = read_volume(path)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    assert "its qform is not a rotation" in caplog.text
    out = write_volume(back, tmp_path / "out.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)


@pytest.mark.parametrize("sform_code", [1, 2])
def test_a_sform_alone_scaled_unlike_pixdim_keeps_its_header_in_outputs(
    tmp_path: Path, sform_code: int
) -> None:
    """From a hunt: qform_code 0, sform 2 mm, pixdim 1 mm. ITK (so 3D Slicer) reads pixdim, and mrct
    warned that NIfTI outputs keep both forms; they got codes (1, 1) and pixdim 2, so Slicer put
    the output 2 mm a voxel and the input 1 mm: they no longer overlaid."""

    def itk_corner(path: Path) -> np.ndarray:
        return np.array(sitk.ReadImage(str(path)).TransformIndexToPhysicalPoint([5, 6, 7]))

    sform = np.diag([2.0, 2.0, 2.0, 1.0])
    sform[:3, 3] = [-20.0, -30.0, -40.0]
    img = nib.Nifti1Image(np.arange(12 * 13 * 14, dtype=np.float32).reshape(12, 13, 14), None)
    img.set_qform(None, code=0)
    img.set_sform(sform, code=sform_code)
    nib.save(img, tmp_path / "in.nii.gz")
    assert np.allclose(nib.load(tmp_path / "in.nii.gz").header["pixdim"][1:4], 1.0)
    vol = read_volume(tmp_path / "in.nii.gz")
    np.testing.assert_allclose(vol.affine, sform)
    write_volume(vol, tmp_path / "out.nii.gz")
    out = nib.load(tmp_path / "out.nii.gz")
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (0, sform_code)
    np.testing.assert_allclose(out.affine, sform)  # nibabel: the sform
    np.testing.assert_allclose(
        itk_corner(tmp_path / "out.nii.gz"), itk_corner(tmp_path / "in.nii.gz"), atol=1e-4
    )


def test_a_detached_nrrd_reads_and_a_key_value_named_datafile_is_not_its_data(tmp_path: Path) -> None:
    """The data-file check (a pipe named there blocked mrct) takes the field alone: a key/value
    pair ``datafile:=...`` is not it, and a relative name is read beside the header."""
    import numpy as np

    from mrct.io import read_volume

    data = np.arange(4 * 4 * 2, dtype="<i2")
    (tmp_path / "vox els.raw").write_bytes(data.tobytes())
    (tmp_path / "d.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 2\nspace: left-posterior-superior\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: raw\n"
        "datafile:=a note\ndata file: vox els.raw\n"
    )
    volume = read_volume(tmp_path / "d.nhdr")
    assert volume.array.shape == (4, 4, 2) and int(volume.array.max()) == 31


@pytest.mark.parametrize("name", ["v.nrrd", "v.mha"])
def test_a_grid_sheared_by_rounding_is_squared_up_for_itk_formats(tmp_path: Path, name: str) -> None:
    """From a hunt: a NIfTI that dcm2niix made from cosines written to 4 decimals is sheared by
    2e-5 (0.001 degrees). DICOM output squared it up; NRRD and MHA refused it as "a gantry tilt"."""
    from mrct.translation import check_grid_fits
    from mrct.volume import shear

    vol = phantom(affine=oblique_affine())
    rounded = vol.affine.copy()
    rounded[:3, 1] += 2e-5 * rounded[:3, 0]
    assert shear(rounded) > 1e-5
    check_grid_fits(vol.replace(affine=rounded), OutputFormat.NRRD, tmp_path / name)  # no error
    write_volume(vol.replace(affine=rounded), tmp_path / name)
    img = sitk.ReadImage(str(tmp_path / name))
    direction = np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    corners = np.array([[i, j, k, 1] for i in (0, 11) for j in (0, 9) for k in (0, 6)], float).T
    assert np.abs(lps_to_ras(lps) @ corners - rounded @ corners).max() < 0.01  # mm
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).transpose(2, 1, 0), vol.array)

    tilted = vol.affine.copy()
    tilted[:3, 1] += 5e-3 * tilted[:3, 0]  # 0.3 degrees: a real shear, refused
    with pytest.raises(WriteError, match="sheared"):
        write_volume(vol.replace(affine=tilted), tmp_path / f"t{name}")
    with pytest.raises(MrctError, match="grid is sheared"):
        check_grid_fits(vol.replace(affine=tilted), OutputFormat.MHA, tmp_path / f"t{name}")


def test_the_square_up_warning_gives_the_distance_the_far_corner_moves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From review: the warning gave the largest single coordinate of the move (0.07 mm where the
    far corner moved 0.101 mm), so moves up to about 0.087 mm passed the 0.05 mm threshold unsaid."""
    import logging
    import re

    vol = phantom(shape=(300, 300, 20), affine=oblique_affine())
    sheared = vol.affine.copy()
    sheared[:3, 1] += 8e-4 * sheared[:3, 0]
    with caplog.at_level(logging.WARNING):
        write_volume(vol.replace(affine=sheared), tmp_path / "v.nrrd")
    img = sitk.ReadImage(str(tmp_path / "v.nrrd"))
    lps = np.eye(4)
    lps[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    corners = np.array([[i, j, k, 1] for i in (0, 299) for j in (0, 299) for k in (0, 19)], float).T
    moved = float(np.max(np.linalg.norm((lps_to_ras(lps) @ corners - sheared @ corners)[:3], axis=0)))
    (said,) = [float(m) for m in re.findall(r"moving voxels up to ([0-9.]+) mm", caplog.text)]
    assert moved > 0.05 and said >= round(moved, 2) - 0.005
