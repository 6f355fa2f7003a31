"""QC pictures: true shape on oblique anisotropic grids, radiological orientation, slab rows, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from typer.testing import CliRunner

from mrct import api, qc
from mrct.cli import app
from mrct.errors import OutputExistsError
from mrct.io import write_volume
from mrct.prepare_outputs import failed_scan_image, prepared_scan_image
from mrct.volume import Modality, Volume
from tests.phantoms import oblique_affine, phantom

runner = CliRunner()

SHAPE = (80, 64, 26)  # 56 x 57.6 x 65 mm at the default (0.7, 0.9, 2.5) mm spacing

AFFINES = {
    "oblique anisotropic": oblique_affine(),
    "oblique, i flipped": oblique_affine(spacing=(0.8, 0.8, 2.0), angles=(-15.0, 25.0, -40.0), flip_i=True),
    "LPI like the real CT": np.diag([-0.7, -0.9, -2.5, 1.0]) + np.array([[0, 0, 0, 30.0]] * 3 + [[0] * 4]),
}


def voxel_centres_ras(
    shape: tuple[int, int, int], affine: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def ball(affine: npt.NDArray[np.float64], centre: npt.ArrayLike, radius_mm: float) -> Volume:
    """A ball (1000 inside, 0 outside) with a 3 mm linear edge, so its half-value contour is exact."""
    d = np.linalg.norm(voxel_centres_ras(SHAPE, affine) - np.asarray(centre), axis=-1)
    values = np.clip((radius_mm - d) / 3.0 + 0.5, 0.0, 1.0) * 1000
    return Volume(values.astype(np.float32), affine, Modality.MR)


def bright_region(image: npt.NDArray[np.uint8]) -> tuple[int, int, float, float]:
    """(height, width, centre row, centre col) of the pixels above half brightness."""
    rows, cols = np.nonzero(image > 127)
    assert rows.size, "nothing bright in the image"
    return (int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1, float(rows.mean()), float(cols.mean()))


@pytest.mark.parametrize("plane", qc.PLANES)
@pytest.mark.parametrize("name", sorted(AFFINES))
def test_sphere_renders_as_a_circle(name: str, plane: qc.Plane) -> None:
    affine = AFFINES[name]
    centre = affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + affine[:3, 3]
    vol = ball(affine, centre, radius_mm=15.0)
    image = qc.render_plane(vol, plane, window=(0.0, 1000.0))
    px = qc.default_pixel_mm(vol)
    assert qc.MIN_PIXEL_MM <= px <= min(vol.spacing)  # a small phantom is drawn enlarged
    height, width, _, _ = bright_region(image)
    assert abs(height - width) <= 1, (height, width)
    assert abs(width - 30.0 / px) <= 1.5, (width, 30.0 / px)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_orientation_conventions(name: str) -> None:
    """A blob at patient right, anterior, superior of the centre, seen in each plane."""
    affine = AFFINES[name]
    centre = affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + affine[:3, 3]
    blob = centre + np.array([10.0, 8.0, 9.0])  # R, A, S offsets in mm
    vol = ball(affine, blob, radius_mm=4.0)
    expected_side = {  # (row above the centre?, column left of the centre?) is always (True, True)
        "axial": "anterior at top, patient right on the left",
        "coronal": "superior at top, patient right on the left",
        "sagittal": "superior at top, anterior on the left",
    }
    for plane, normal in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        grid = qc.plane_grid(vol, plane, position_mm=blob[normal])
        image = qc.render_plane(vol, plane, position_mm=blob[normal], window=(0.0, 1000.0))
        _, _, row, col = bright_region(image)
        want_row, want_col = grid.world_to_pixel(blob)
        assert abs(row - want_row) < 1 and abs(col - want_col) < 1, (plane, row, col, want_row, want_col)
        centre_row, centre_col = grid.world_to_pixel(centre)
        assert row < centre_row - 5 and col < centre_col - 5, (plane, expected_side[plane])


def test_grid_is_world_aligned_with_square_pixels() -> None:
    vol = phantom(shape=SHAPE)
    lo, hi = qc.world_bounds(vol)
    for plane in qc.PLANES:
        grid = qc.plane_grid(vol, plane, pixel_mm=1.25)
        assert np.count_nonzero(grid.down) == 1 and np.count_nonzero(grid.right) == 1
        assert np.linalg.norm(grid.down) == np.linalg.norm(grid.right) == 1.25
        rows, cols = grid.shape
        assert rows * 1.25 == pytest.approx(np.abs(grid.down / 1.25) @ (hi - lo), abs=1.25)
        assert cols * 1.25 == pytest.approx(np.abs(grid.right / 1.25) @ (hi - lo), abs=1.25)


def test_default_windows() -> None:
    ct = phantom(shape=SHAPE)
    assert qc.default_window(ct) == qc.CT_WINDOW
    assert qc.default_window(ct.replace(modality=None)) == qc.CT_WINDOW  # HU-looking values
    mr = phantom(shape=SHAPE, modality=Modality.MR)
    lo, hi = qc.default_window(mr)
    nonzero = mr.array[mr.array != 0]
    assert lo == pytest.approx(np.percentile(nonzero, 1))
    assert hi == pytest.approx(np.percentile(nonzero, 99.5))
    assert qc.render_plane(mr, "axial").dtype == np.uint8


def test_mosaic_is_rgb_with_three_panels_at_one_pixel_size() -> None:
    vol = phantom(shape=SHAPE)
    mosaic = qc.three_plane_mosaic(vol)
    grids = [qc.plane_grid(vol, p) for p in qc.PLANES]
    assert mosaic.dtype == np.uint8 and mosaic.ndim == 3 and mosaic.shape[2] == 3
    assert mosaic.shape[0] == max(g.shape[0] for g in grids)
    assert mosaic.shape[1] == sum(g.shape[1] for g in grids) + 2 * 4
    assert {g.pixel_mm for g in grids} == {qc.default_pixel_mm(vol)}


@pytest.mark.parametrize("coronal", [True, False])
def test_slab_lines_land_on_their_rows(coronal: bool) -> None:
    vol = ball(oblique_affine(), qc.world_centre(phantom(shape=SHAPE)), radius_mm=20.0)
    centre = qc.world_centre(vol)
    superior, inferior = centre[2] + 10.3, centre[2] - 12.6
    image = qc.slab_qc_image(vol, superior, inferior, label="test slab", coronal=coronal)
    grid = qc.plane_grid(vol, "sagittal")
    rows, cols = grid.shape
    assert image.shape[0] > rows  # the text strip below
    panel_widths = [cols] + ([qc.plane_grid(vol, "coronal").shape[1]] if coronal else [])
    for level, colour in ((superior, qc.SUPERIOR_RGB), (inferior, qc.INFERIOR_RGB)):
        row = round(grid.world_to_pixel([*centre[:2], level])[0])
        assert row == round((grid.origin[2] - level) / grid.pixel_mm)
        x = 0
        for width in panel_widths:
            line = image[row, x + 20 : x + width - 20]  # clear of the edge letters
            assert (line == colour).all(axis=1).mean() > 0.95
            x += width + 4
        hits = np.nonzero((image[:rows, 20 : cols - 20] == colour).all(axis=2).mean(axis=1) > 0.5)[0]
        assert hits.tolist() == [row]


def test_slab_level_none_is_not_drawn() -> None:
    vol = phantom(shape=SHAPE)
    image = qc.slab_qc_image(vol, None, qc.world_centre(vol)[2])
    rows = qc.plane_grid(vol, "sagittal").shape[0]
    assert not (image[:rows] == qc.SUPERIOR_RGB).all(axis=2).any()
    assert (image[:rows] == qc.INFERIOR_RGB).all(axis=2).any()
    assert qc.slab_qc_image(vol, None, None).shape[0] == rows  # nothing to say: no text strip


def test_outside_the_slab_is_dimmed() -> None:
    vol = Volume(np.full(SHAPE, 1000.0, np.float32), oblique_affine(), Modality.MR)
    centre = qc.world_centre(vol)
    grid = qc.plane_grid(vol, "sagittal")
    r0, c0 = (round(v) for v in grid.world_to_pixel(centre))
    image = qc.slab_qc_image(vol, centre[2] + 3.0, centre[2] - 3.0, coronal=False, window=(0.0, 1000.0))
    plain = qc.render_plane(vol, "sagittal", window=(0.0, 1000.0))
    assert image[r0, c0, 0] == plain[r0, c0] == 255
    above, below = r0 - 10, r0 + 10  # 7 mm away: outside the 6 mm slab, still inside the volume
    assert plain[above, c0] == plain[below, c0] == 255
    assert image[above, c0, 0] == image[below, c0, 0] == round(255 * 0.45)


def failure_red(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Pixels of the (anti-aliased) FAILED text: red with less green than the superior level's."""
    r, g = image[..., 0].astype(float), image[..., 1].astype(float)
    return (r > 150) & (g < 0.2 * r) & (image[..., 2] == image[..., 1])


def test_failure_and_outside_levels_are_written_below() -> None:
    vol = phantom(shape=SHAPE)
    lo, hi = qc.world_bounds(vol)
    rows = qc.plane_grid(vol, "sagittal").shape[0]
    plain = qc.slab_qc_image(vol, hi[2] - 5, lo[2] - 12.5)
    failed = qc.slab_qc_image(vol, hi[2] - 5, lo[2] - 12.5, failure="the jaw is below " * 12)
    assert failed.shape[0] > plain.shape[0] + 10  # the reason, wrapped over several lines
    assert failure_red(failed[rows:]).sum() > 50
    assert not failure_red(plain[rows:]).any()
    assert failed_scan_image(None, (None, None), "x", "unreadable") is None
    nothing = failed_scan_image(vol, (None, None), "x", "no head found")
    assert nothing is not None and failure_red(nothing[rows:]).sum() > 20
    noted = prepared_scan_image(vol, (hi[2] - 5, lo[2] - 12.5), "x", outside_fov_mm=12.5)
    assert noted.shape[0] > plain.shape[0]  # "12.5 mm of the slab is outside the scan"


def test_write_png_is_atomic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = qc.write_png(np.zeros((5, 7), np.uint8), tmp_path / "a.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (7, 5) and im.mode == "L"
    with pytest.raises(OutputExistsError):
        qc.write_png(np.zeros((5, 7, 3), np.uint8), out)
    qc.write_png(np.zeros((5, 7, 3), np.uint8), out, overwrite=True)
    with Image.open(out) as im:
        assert im.mode == "RGB"
    with pytest.raises(ValueError):
        qc.write_png(np.zeros((5, 7), np.float32), tmp_path / "b.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


# --- the command --------------------------------------------------------------------


def test_preview_command(tmp_path: Path) -> None:
    src = write_volume(phantom(shape=SHAPE), tmp_path / "ct.nii.gz")
    out = tmp_path / "out" / "ct.png"
    res = runner.invoke(app, ["preview", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size[0] > 2 * im.size[1]
    stamp = out.read_bytes()
    res = subprocess.run(
        [sys.executable, "-m", "mrct", "preview", str(src), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 4 and "--overwrite" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == stamp
    res2 = runner.invoke(app, ["preview", str(src), "--output", str(out), "--overwrite"])
    assert res2.exit_code == 0, res2.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["ct.png"]


def test_preview_needs_a_png_output(tmp_path: Path) -> None:
    src = write_volume(phantom(shape=SHAPE), tmp_path / "ct.nii.gz")
    res = subprocess.run(
        [sys.executable, "-m", "mrct", "preview", str(src), "-o", str(tmp_path / "ct.jpg")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "ct.jpg" in lines[0] and ".png" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_preview_requires_output_and_has_help(tmp_path: Path) -> None:
    assert runner.invoke(app, ["preview", "--help"]).exit_code == 0
    src = write_volume(phantom(shape=SHAPE), tmp_path / "ct.nii.gz")
    assert runner.invoke(app, ["preview", str(src)]).exit_code == 2  # usage error: -o is required


@pytest.mark.realdata
def test_preview_real_ct(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "ct" / "unc_cthead_cadaver_hu.nii.gz"
    out = api.preview(src, tmp_path / "cthead.png")
    with Image.open(out) as im:
        width, height = im.size
        assert im.mode == "RGB"
    # 256 x 256 x 113 voxels of 1 x 1 x 2 mm: three panels 256 mm wide, at most 256 mm tall, 1 mm pixels
    assert 200 <= height <= 300
    assert 2.8 < width / height < 3.2


def test_a_coarse_scan_is_drawn_large_enough_to_read() -> None:
    """A 2 mm IXI head made 120-pixel panels, with labels over the anatomy."""
    volume = Volume(np.zeros((120, 120, 90), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), Modality.MR)
    grid = qc.plane_grid(volume, "axial")
    assert max(grid.shape) >= qc.MIN_SIDE and grid.pixel_mm < 2.0


def test_preview_of_a_synthetic_image_says_so(tmp_path: Path) -> None:
    """From a docs walk: ``mrct preview`` of a synthetic CT wrote a PNG with no label, where
    translate's preview and every converted format keep "not for diagnosis"."""
    sct = write_volume(
        phantom(shape=SHAPE),
        tmp_path / "sct.nii.gz",
        series_description="mrct synthetic CT – not for diagnosis",
    )
    plain = write_volume(phantom(shape=SHAPE), tmp_path / "ct.nii.gz")
    for src, label in ((sct, "mrct synthetic CT – not for diagnosis"), (plain, None)):
        out = api.preview(src, tmp_path / f"{src.name}.png")
        with Image.open(out) as im:
            assert im.text.get("Description") == label
    with Image.open(tmp_path / "sct.nii.gz.png") as labelled, Image.open(tmp_path / "ct.nii.gz.png") as bare:
        assert labelled.size[1] > bare.size[1]  # the caption under the planes


def test_preview_takes_allow_gaps_as_its_advice_says(gappy_ct: object, tmp_path: Path) -> None:
    """From a docs walk: preview said "pass --allow-gaps" and then refused that option."""
    folder = str(gappy_ct.folder)  # type: ignore[attr-defined]
    refused = runner.invoke(app, ["preview", folder, "-o", str(tmp_path / "a.png")])
    assert refused.exit_code == 3 and "pass --allow-gaps" in refused.stderr
    done = runner.invoke(app, ["preview", folder, "-o", str(tmp_path / "a.png"), "--allow-gaps"])
    assert done.exit_code == 0, done.output


def test_prepare_does_not_advise_an_option_it_lacks(gappy_ct: object) -> None:
    """From a docs walk: a scan with a missing slice failed in prepare with "pass --allow-gaps",
    an option prepare does not have (and should not: interpolated slices are no training data)."""
    from mrct.prepare import NO_GAPS, ScanInput, prepare_scan
    from mrct.preprocessing.config import PreprocessConfig
    from mrct.preprocessing.crop import CropRequest

    folder = gappy_ct.folder  # type: ignore[attr-defined]
    scan = ScanInput("ct", folder, None, tuple(sorted(folder.iterdir())), "gappy")
    outcome = prepare_scan(scan, PreprocessConfig(), CropRequest())
    assert outcome.error is not None and "missing slice" in outcome.error
    assert NO_GAPS in outcome.error and "--allow-gaps" not in outcome.error
