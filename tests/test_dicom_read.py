"""DICOM reading on synthetic series: agreement with dcm2niix, resampling, and failures.

dcm2niix (default options, ``-p n``) is the reference for the voxel layout and
affine of ordinary series: i = DICOM column, j = reversed DICOM row, k along
the slice normal, 3D acquisitions rotated to the closest RAS orientation.
Tilted and unevenly spaced stacks are checked against the original slices in
patient space instead (see test_real_dicom.py for why not against dcm2niix).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from scipy.ndimage import map_coordinates

from mrct.errors import GeometryError, ReadError, SeriesSelectionError
from mrct.io import read_volume
from mrct.io.orientation import lps_to_ras
from mrct.volume import Modality, Volume
from tests.dicom_factory import SeriesInfo, pixel_centres, write_enhanced_mr
from tests.external_tools import dcm2niix_read

AFFINE_ATOL_MM = 1e-3

POSITIONS = ["HFS", "HFP", "FFS", "FFP", "HFDL", "HFDR", "FFDL", "FFDR"]
# (plane, (tilt about x, about y) deg, slice spacing); negative spacing = slices
# stored against the normal, as many scanners do for axial head stacks.
ORIENTATIONS = {
    "axial": ("axial", (0.0, 0.0), 2.5),
    "sagittal": ("sagittal", (0.0, 0.0), -3.0),
    "coronal": ("coronal", (0.0, 0.0), 2.0),
    "oblique": ("axial", (20.0, 15.0), -2.5),
}


def assert_matches_dcm2niix(
    vol: Volume,
    series: Path,
    work: Path,
    *,
    exact: bool,
    atol_mm: float = AFFINE_ATOL_MM,
    rtol: float = 1e-6,
) -> None:
    """Same shape, affine and values (equal, or to ``rtol``) as dcm2niix's NIfTI of ``series``."""
    ref, affine = dcm2niix_read(series, work)
    assert vol.shape == ref.shape, f"shape {vol.shape} != dcm2niix {ref.shape}"
    np.testing.assert_allclose(vol.affine, affine, rtol=0, atol=atol_mm)
    if exact:
        np.testing.assert_array_equal(vol.array, ref)
    else:
        np.testing.assert_allclose(vol.array, ref, rtol=rtol, atol=0)


def _name_order_is_not_slice_order(info: SeriesInfo) -> bool:
    by_name = sorted(range(len(info.files)), key=lambda n: info.files[n].name)
    return by_name != list(range(len(info.files))) and by_name != list(range(len(info.files)))[::-1]


@pytest.mark.tools
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_classic_series_matches_dcm2niix(
    make_series: Callable[..., SeriesInfo],
    tmp_path: Path,
    modality: str,
    position: str,
    orientation: str,
) -> None:
    plane, oblique, spacing = ORIENTATIONS[orientation]
    info = make_series(
        "in",
        modality=modality,
        plane=plane,
        oblique_deg=oblique,
        slice_spacing=spacing,
        patient_position=position,
        # CT: stored unsigned with intercept -1024; MR: a non-integer slope.
        rescale_slope=1.7 if modality == "MR" else None,
        mr_acquisition_type="2D" if modality == "MR" else None,
    )
    assert _name_order_is_not_slice_order(info)
    vol = read_volume(info.folder)
    assert vol.modality is Modality(modality)
    assert vol.source.dicom is not None and vol.source.dicom.series_instance_uid == info.series_uid
    assert_matches_dcm2niix(vol, info.folder, tmp_path / "d2n", exact=modality == "CT")
    if modality == "CT":
        assert np.issubdtype(vol.array.dtype, np.integer)
        assert vol.array.min() == info.values.min()  # stored unsigned, intercept -1024 applied
        assert pydicom.dcmread(info.files[0]).PixelRepresentation == 0


def _mr_3d_series(
    make_series: Callable[..., SeriesInfo],
    plane: str,
    oblique: tuple[float, float],
    position: str,
    shape: tuple[int, int, int],
    pixel_spacing: tuple[float, float],
    slice_spacing: float,
) -> SeriesInfo:
    """A 3D-acquisition MR series (MRAcquisitionType 3D), which dcm2niix rotates."""
    return make_series(
        "in",
        modality="MR",
        shape=shape,
        plane=plane,
        oblique_deg=oblique,
        patient_position=position,
        pixel_spacing=pixel_spacing,
        slice_spacing=slice_spacing,
        mr_acquisition_type="3D",
    )


@pytest.mark.tools
@pytest.mark.parametrize(
    ("plane", "oblique", "position"),
    [
        ("sagittal", (18.0, -22.0), "HFS"),
        ("sagittal", (18.0, -22.0), "FFS"),
        ("sagittal", (-15.0, 20.0), "HFP"),
        ("sagittal", (18.0, -22.0), "HFDL"),
        ("sagittal", (10.0, 12.0), "FFDR"),
        ("axial", (20.0, 15.0), "HFS"),
        ("coronal", (-12.0, 17.0), "FFP"),
    ],
)
def test_3d_acquisition_is_rotated_like_dcm2niix(
    make_series: Callable[..., SeriesInfo],
    tmp_path: Path,
    plane: str,
    oblique: tuple[float, float],
    position: str,
) -> None:
    info = _mr_3d_series(make_series, plane, oblique, position, (36, 44, 14), (1.0, 1.0), 1.2)
    vol = read_volume(info.folder)
    assert vol.orientation == "RAS"
    assert_matches_dcm2niix(vol, info.folder, tmp_path / "d2n", exact=True)


@pytest.mark.tools
@pytest.mark.parametrize(
    ("plane", "oblique", "position"),
    [
        ("coronal", (28.8, 33.9), "FFP"),
        ("axial", (9.8, -41.0), "FFDL"),
        ("sagittal", (42.2, -26.6), "FFDR"),
        ("axial", (39.3, 40.6), "HFDR"),
        ("coronal", (-41.7, -4.7), "FFS"),
    ],
)
def test_steep_3d_obliques_are_rotated_like_dcm2niix(
    make_series: Callable[..., SeriesInfo],
    tmp_path: Path,
    plane: str,
    oblique: tuple[float, float],
    position: str,
) -> None:
    """Past ~35 deg a greedy "closest to RAS" choice of flips and axis order differs
    from dcm2niix's (corner- and trace-based); these cases once did."""
    info = _mr_3d_series(make_series, plane, oblique, position, (20, 24, 8), (1.1, 0.9), 2.0)
    assert_matches_dcm2niix(read_volume(info.folder), info.folder, tmp_path / "d2n", exact=True)


@pytest.mark.tools
@pytest.mark.parametrize(
    ("plane", "oblique", "acquisition", "order"),
    [
        ("axial", (0.0, 0.0), "2D", None),
        ("sagittal", (15.0, -20.0), "2D", list(range(11, -1, -1))),
        ("axial", (20.0, 15.0), "3D", [3, 1, 0, 2, 5, 4, 7, 6, 9, 8, 11, 10]),
    ],
)
def test_enhanced_multiframe_matches_dcm2niix(
    tmp_path: Path,
    plane: str,
    oblique: tuple[float, float],
    acquisition: str,
    order: list[int] | None,
) -> None:
    # dcm2niix orders enhanced frames by DimensionIndexValues / InStackPositionNumber;
    # we order them by PlanePositionSequence. The factory keeps the two consistent
    # (as scanners do), so both must give the same volume for any frame order.
    info = write_enhanced_mr(
        tmp_path / "in" / "mr.dcm",
        plane=plane,
        oblique_deg=oblique,
        mr_acquisition_type=acquisition,
        frame_order=order,
        rescale_slope=1.5,
    )
    vol = read_volume(info.files[0])
    assert vol.modality is Modality.MR
    assert_matches_dcm2niix(vol, info.folder, tmp_path / "d2n", exact=False)
    # The folder holding the file reads the same.
    np.testing.assert_array_equal(read_volume(info.folder).array, vol.array)


def test_enhanced_fixture_reads(enhanced_mr: SeriesInfo) -> None:
    vol = read_volume(enhanced_mr.files[0])
    assert vol.shape == (48, 40, 12)
    assert np.allclose(vol.spacing, (0.9, 1.1, 2.5), atol=1e-6)
    _assert_samples_original(vol, enhanced_mr, range(12), interior=False, atol=1e-3)


def test_zip_reads_like_the_folder(zipped_series: tuple[Path, Path]) -> None:
    folder, archive = zipped_series
    a, b = read_volume(folder), read_volume(archive)
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(a.array, b.array)
    assert b.source.format == "dicom-zip" and b.source.path == str(archive)
    assert b.modality is Modality.MR


# --- resampled stacks: compare with the original slices in patient space ----------------


def sample_at_original_pixels(vol: Volume, info: SeriesInfo, slice_index: int) -> npt.NDArray[np.float64]:
    """Our volume, trilinearly sampled at the pixel centres of one original slice [row, col]."""
    lps = pixel_centres(info, slice_index)
    ras = lps_to_ras(lps.reshape(-1, 3))
    ijk = (np.linalg.inv(vol.affine) @ np.c_[ras, np.ones(len(ras))].T)[:3]
    out = map_coordinates(vol.array.astype(np.float64), ijk, order=1, mode="nearest")
    return np.asarray(out.reshape(lps.shape[:2]))


def _assert_samples_original(
    vol: Volume, info: SeriesInfo, slices: range | list[int], *, interior: bool, atol: float
) -> None:
    # Resampled slices are shifted in-plane onto a common lattice; the lattice points
    # just outside a shifted slice hold the fill value, so its outermost ring of pixels
    # cannot be recovered by interpolation and is left out (interior=True).
    trim = (slice(1, -1), slice(1, -1)) if interior else (slice(None), slice(None))
    for k in slices:
        got = sample_at_original_pixels(vol, info, k)[trim]
        want = info.values[k][trim]
        err = np.abs(got - want)
        assert err.max() <= atol, f"slice {k}: max error {err.max():.3f} > {atol}"


def _assert_orthogonal(affine: npt.NDArray[np.float64]) -> None:
    m = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-9)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("position", ["HFS", "HFP", "FFDL", "HFDR"])
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_every_pixel_lands_at_its_patient_position(
    make_series: Callable[..., SeriesInfo], modality: str, position: str, orientation: str
) -> None:
    """Independent of dcm2niix: the affine puts each original pixel exactly on a voxel."""
    plane, oblique, spacing = ORIENTATIONS[orientation]
    info = make_series(
        modality=modality,
        plane=plane,
        oblique_deg=oblique,
        slice_spacing=spacing,
        patient_position=position,
        mr_acquisition_type="3D" if modality == "MR" else None,  # rotated to RAS as well
    )
    vol = read_volume(info.folder)
    assert vol.orientation == "RAS" or modality == "CT"
    _assert_samples_original(vol, info, range(len(info.files)), interior=False, atol=1e-3)


def test_tilted_ct_is_resampled_in_patient_space(
    tilted_ct: SeriesInfo, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        vol = read_volume(tilted_ct.folder)
    assert any("gantry tilt of 18.5 deg" in r.getMessage() for r in caplog.records)
    _assert_orthogonal(vol.affine)
    np.testing.assert_allclose(vol.spacing, (0.8, 0.9, 3.0), atol=1e-6)
    assert vol.shape[2] == 14 and vol.shape[0] == 56 and vol.shape[1] > 48  # widened along rows
    assert vol.modality is Modality.CT
    # Slice 0 lies on the output lattice: exact. Others are shifted by a fraction of
    # a pixel (bilinear in the reader, again here) on a smooth phantom: ~1 HU.
    _assert_samples_original(vol, tilted_ct, [0], interior=False, atol=1e-3)
    _assert_samples_original(vol, tilted_ct, range(1, 14), interior=True, atol=3.0)


def test_uneven_spacing_is_resampled_on_a_regular_grid(
    uneven_ct: SeriesInfo, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        vol = read_volume(uneven_ct.folder)
    assert any("uneven slice spacing" in r.getMessage() for r in caplog.records)
    _assert_orthogonal(vol.affine)
    extent = float(np.ptp(uneven_ct.positions @ np.cross(uneven_ct.iop[:3], uneven_ct.iop[3:])))
    dz = vol.spacing[2]
    assert dz == pytest.approx(2.0, abs=1e-6)  # the thin spacing that dominates
    assert (vol.shape[2] - 1) * dz <= extent + 1e-6 < vol.shape[2] * dz
    # k runs along the normal, monotonically: slice centres strictly increase.
    normal_ras = lps_to_ras(np.cross(uneven_ct.iop[:3], uneven_ct.iop[3:]))
    ks = np.arange(vol.shape[2])
    centres = vol.affine[:3, :3] @ np.stack([0 * ks, 0 * ks, ks]) + vol.affine[:3, 3:]
    assert np.all(np.diff(normal_ras @ centres) > 0)
    # Slices 0..8 (2 mm apart) are output slices: exact. Slices 9..14 lie between output
    # slices that blend neighbours up to 3.5 mm apart: a few HU on the smooth phantom.
    # The last slice (37.7 mm) is past the last whole 2 mm step (36 mm) and not kept.
    _assert_samples_original(vol, uneven_ct, range(9), interior=False, atol=1e-3)
    _assert_samples_original(vol, uneven_ct, range(9, 15), interior=False, atol=10.0)


def test_missing_slice_fails_unless_gaps_are_allowed(
    gappy_ct: SeriesInfo, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(GeometryError, match="--allow-gaps") as refused:
        read_volume(gappy_ct.folder)
    # From a hunt: "(at -4.8-4.8 mm)" did not read as a range.
    assert re.search(r"between the slices at -?\d+\.\d and -?\d+\.\d mm along", str(refused.value))
    with caplog.at_level(logging.WARNING):
        vol = read_volume(gappy_ct.folder, allow_gaps=True)
    assert caplog.records, "interpolating across a gap must be logged"
    assert vol.shape == (48, 40, 12)
    np.testing.assert_allclose(vol.spacing, (0.9, 1.1, 2.5), atol=1e-6)
    # The present slices are on the grid (the slice k=5 is missing from info.values).
    for n, k in enumerate([0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]):
        got = sample_at_original_pixels(vol, gappy_ct, n)
        np.testing.assert_allclose(got, gappy_ct.values[n], atol=1e-3, err_msg=f"slice {k}")


def test_two_series_need_a_choice(two_series_folder: tuple[Path, SeriesInfo, SeriesInfo]) -> None:
    folder, ct, mr = two_series_folder
    with pytest.raises(SeriesSelectionError) as err:
        read_volume(folder)
    assert ct.series_uid in str(err.value) and mr.series_uid in str(err.value)
    got_ct = read_volume(folder, series=ct.series_uid)
    got_mr = read_volume(folder, series=mr.series_uid)
    assert got_ct.modality is Modality.CT and got_ct.shape == (48, 40, 12)
    assert got_mr.modality is Modality.MR and got_mr.shape == (36, 32, 9)
    with pytest.raises(SeriesSelectionError, match="no series"):
        read_volume(folder, series="1.2.3.4")


def test_duplicate_positions_fail(make_series: Callable[..., SeriesInfo]) -> None:
    info = make_series(shape=(40, 48, 6), slice_offsets=[0.0, 2.5, 5.0, 5.0, 7.5, 10.0])
    with pytest.raises(GeometryError, match="2 slices share a position"):
        read_volume(info.folder)
    twice = make_series("twice", shape=(40, 48, 6), slice_offsets=[0.0, 0.0, 2.5, 2.5, 5.0, 5.0])
    with pytest.raises(GeometryError, match="6 slices share 3 positions"):  # said "4 slices"
        read_volume(twice.folder)


def test_single_slice_fails(make_series: Callable[..., SeriesInfo]) -> None:
    info = make_series(shape=(40, 48, 1))
    with pytest.raises(ReadError, match="3D volume is needed"):
        read_volume(info.folder)


def test_file_without_pixel_data_fails(make_series: Callable[..., SeriesInfo]) -> None:
    info = make_series(shape=(40, 48, 5))
    ds = pydicom.dcmread(info.files[2])
    del ds.PixelData
    ds.save_as(info.files[2])
    with pytest.raises(ReadError, match="no pixel data"):
        read_volume(info.folder)


def test_each_file_is_parsed_once(
    make_series: Callable[..., SeriesInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The headers read to group a folder into series also give the pixel data (deferred in the
    file): no file is parsed twice. (The values are checked against dcm2niix above.)"""
    info = make_series(shape=(40, 48, 6))
    expected = read_volume(info.folder).array
    calls: list[object] = []
    real = pydicom.dcmread

    def counting(path: object, *args: object, **kwargs: object) -> object:
        calls.append(path)
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pydicom, "dcmread", counting)
    volume = read_volume(info.folder)
    assert len(calls) == len(info.files) == len(set(map(str, calls)))
    np.testing.assert_array_equal(volume.array, expected)


def test_headers_hold_no_pixel_data(make_series: Callable[..., SeriesInfo]) -> None:
    """A batch keeps the headers of every file it found: even a small image's pixel data (under
    pydicom's deferral size) stays in the file until the series is read."""
    from pydicom.dataelem import RawDataElement

    from mrct.io.dicom_scan import find_series

    info = make_series(shape=(40, 48, 4))
    (series,) = find_series(info.folder)
    for header in series.headers:
        element = header.get_item("PixelData", keep_deferred=True)
        assert isinstance(element, RawDataElement) and element.value is None and element.length > 0
    read_volume(info.folder)
    assert all(h.get_item("PixelData", keep_deferred=True).value is None for h in series.headers)


def test_a_file_rewritten_after_its_header_was_read_is_read_again(
    make_series: Callable[..., SeriesInfo],
) -> None:
    import os

    from mrct.io.dicom_read import read_series_files
    from mrct.io.dicom_scan import find_series

    info = make_series(shape=(40, 48, 4))
    (series,) = find_series(info.folder)
    before = read_series_files(series, info.folder, None, False).array
    ds = pydicom.dcmread(info.files[0])
    ds.PixelData = (ds.pixel_array * 0 + 7).astype(ds.pixel_array.dtype).tobytes()
    ds.ImageComments = "re-exported " * 20  # moves the pixel data: the old offset is stale
    ds.save_as(info.files[0])
    stat = os.stat(info.files[0])
    os.utime(info.files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = read_series_files(series, info.folder, None, False).array
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, read_volume(info.folder).array)  # as a fresh search reads it


def test_pixel_spacing_rounded_otherwise_is_one_grid(make_series: Callable[..., SeriesInfo]) -> None:
    """Exporters round PixelSpacing differently from slice to slice (1e-7 mm apart): dcm2niix
    reads that as one grid; mrct refused it. A real difference is still refused."""
    info = make_series(shape=(40, 48, 6), pixel_spacing=(1.1, 0.9))
    first = pydicom.dcmread(info.files[0])
    first.PixelSpacing = ["1.1000001", "0.9"]
    first.save_as(info.files[0])
    assert read_volume(info.folder).shape == (48, 40, 6)
    first.PixelSpacing = ["1.1", "0.95"]
    first.save_as(info.files[0])
    with pytest.raises(GeometryError, match="different PixelSpacing"):
        read_volume(info.folder)


def test_a_slice_without_orientation_is_named_not_split_off(make_series: Callable[..., SeriesInfo]) -> None:
    """It was a 1-slice second series, and choosing the first one reported a gap with the hint
    --allow-gaps, which would interpolate over a slice that is in the folder."""
    info = make_series(shape=(40, 48, 6))
    ds = pydicom.dcmread(info.files[3])
    del ds.ImageOrientationPatient
    ds.save_as(info.files[3])
    with pytest.raises(ReadError, match="missing ImageOrientationPatient") as caught:
        read_volume(info.folder)
    assert caught.value.path == str(info.files[3])


def test_orientation_print_noise_across_a_rounding_boundary_is_one_stack(
    make_series: Callable[..., SeriesInfo],
) -> None:
    """From a hunt: slices whose ImageOrientationPatient differs by 2e-9 (print noise) either side
    of 0.0125 were rounded to 0.012 and 0.013 for grouping, so one oblique stack became two
    interleaved half-volumes at twice the spacing, each read (and in a batch translated) without
    a word; dcm2niix reads one. Orientations a degree apart still split."""
    from mrct.io.dicom_scan import find_series

    info = make_series(modality="MR", shape=(40, 48, 10), slice_spacing=2.0)
    files = _along_normal(info)
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        s = 0.0125 + (1e-9 if k % 2 else -1e-9)
        c = np.sqrt(1 - s * s)
        turn = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        iop = np.array(ds.ImageOrientationPatient, float)
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in np.r_[turn @ iop[:3], turn @ iop[3:]]]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in turn @ np.array(ds.ImagePositionPatient, float)]
        ds.save_as(f)
    assert [s.n_frames for s in find_series(info.folder)] == [10]
    vol = read_volume(info.folder)
    assert vol.shape[2] == 10 and np.allclose(vol.spacing[2], 2.0, atol=1e-3)

    ds = pydicom.dcmread(files[0])  # a localiser-like slice turned by a degree: its own stack
    t = np.radians(1.0)
    turn = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    iop = np.array(ds.ImageOrientationPatient, float)
    ds.ImageOrientationPatient = [f"{v:.10f}" for v in np.r_[turn @ iop[:3], turn @ iop[3:]]]
    ds.save_as(files[0])
    assert sorted(s.n_frames for s in find_series(info.folder)) == [1, 9]


def _along_normal(info: SeriesInfo) -> list[Path]:
    """The series' files in slice order."""
    normal = np.cross(info.iop[:3], info.iop[3:])
    return sorted(
        info.files, key=lambda f: float(np.array(pydicom.dcmread(f).ImagePositionPatient, float) @ normal)
    )


def _move(file: Path, by: np.ndarray) -> None:
    """Shift one slice's ImagePositionPatient by ``by`` (LPS mm)."""
    ds = pydicom.dcmread(file)
    ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array(ds.ImagePositionPatient, dtype=float) + by]
    ds.save_as(file)


@pytest.mark.parametrize(("iop_decimals", "ipp_decimals"), [(4, 2), (6, 1)])
def test_positions_rounded_in_the_header_are_the_scanners_grid(
    make_series: Callable[..., SeriesInfo],
    caplog: pytest.LogCaptureFixture,
    iop_decimals: int,
    ipp_decimals: int,
) -> None:
    """From a hunt: an oblique stack whose header rounds ImageOrientationPatient to 4 decimals (or
    ImagePositionPatient to 0.1 mm) drifts off its normal by about 0.01 mm (0.1 mm), which mrct
    took for a gantry tilt (and uneven spacing): it resampled, widened the grid by two pixels (a
    1 mm stack lost a slice), where dcm2niix reads the scanner's grid. Positions scattering less
    than a fifth of a voxel about a regular grid are that grid; a tilt of half a degree over 59 mm
    (0.5 mm) and one slice 0.3 voxel off its place are still resampled."""
    info = make_series(
        modality="MR",
        shape=(64, 64, 60),
        pixel_spacing=(1.0, 1.0),
        slice_spacing=1.0,
        oblique_deg=(17.0, -23.0),
    )
    exact = read_volume(info.folder)
    for f in info.files:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [f"{v:.{iop_decimals}f}" for v in ds.ImageOrientationPatient]
        ds.ImagePositionPatient = [f"{v:.{ipp_decimals}f}" for v in ds.ImagePositionPatient]
        ds.save_as(f)
    with caplog.at_level(logging.WARNING):
        rounded = read_volume(info.folder)
    assert not [r.getMessage() for r in caplog.records if "resampled" in r.getMessage()]
    assert rounded.shape == exact.shape
    np.testing.assert_array_equal(rounded.array, exact.array)
    corners = np.array([[0, 0, 0, 1], [63, 63, 59, 1]], dtype=float).T
    assert np.max(np.abs(rounded.affine @ corners - exact.affine @ corners)) < 0.1  # mm

    tilt = make_series(  # 0.5 degrees over 59 mm: 0.5 mm, half a voxel
        "tilt",
        modality="MR",
        shape=(64, 64, 60),
        pixel_spacing=(1.0, 1.0),
        slice_spacing=1.0,
        oblique_deg=(17.0, -23.0),
    )
    for k, f in enumerate(_along_normal(tilt)):
        shift = np.array(tilt.iop[3:]) * k * np.tan(np.radians(0.5))  # slides along columns: a shear
        _move(f, shift)
    with caplog.at_level(logging.WARNING):
        read_volume(tilt.folder)
    assert any("gantry tilt of 0.5 deg" in r.getMessage() for r in caplog.records)

    shifted = make_series(
        "uneven", modality="MR", shape=(64, 64, 20), pixel_spacing=(1.0, 1.0), slice_spacing=2.0
    )
    _move(_along_normal(shifted)[10], 0.6 * np.cross(shifted.iop[:3], shifted.iop[3:]))  # 0.3 voxel along
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_volume(shifted.folder)
    assert any("uneven slice spacing" in r.getMessage() for r in caplog.records)


def test_float_pixel_data_keeps_its_fractions(tmp_path: Path) -> None:
    """FloatPixelData (parametric maps) with RescaleSlope 1 was cast to integers: -4.7 read as -4."""
    info = write_enhanced_mr(tmp_path / "in" / "mr.dcm", shape=(6, 7, 5), rescale_slope=1.0)
    ds = pydicom.dcmread(info.files[0])
    values = np.random.default_rng(0).uniform(-5, 5, (5, ds.Rows, ds.Columns)).astype("<f4")
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated, ds.FloatPixelData = 32, values.tobytes()
    ds.save_as(info.files[0])
    vol = read_volume(info.files[0])
    assert vol.array.dtype.kind == "f"
    np.testing.assert_array_equal(np.sort(vol.array, axis=None), np.sort(values, axis=None))


def test_unsigned_values_past_int32_are_not_wrapped() -> None:
    from mrct.io.dicom_pixels import rescale

    pixels = np.full((2, 3, 4), 3_000_000_000, np.uint32)
    pixels[0, 0, 0] = 7
    out = rescale(pixels, np.ones(2), np.zeros(2))
    assert out.min() == 7 and np.isclose(out.max(), 3e9, rtol=1e-7)
    small = rescale(pixels.clip(max=60000), np.ones(2), np.full(2, -1000.0))  # still integers
    assert small.dtype == np.int32 and small.max() == 59000
