"""The deterministic chain and its inverse, on synthetic oblique, anisotropic phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from mrct.errors import ConfigError, CropError
from mrct.preprocessing.chain import invert, preprocess
from mrct.preprocessing.config import GridConfig, IntensityConfig, PreprocessConfig
from mrct.preprocessing.crop import CropRequest
from mrct.preprocessing.intensity import ct_map
from mrct.preprocessing.record import PreprocessRecord
from mrct.volume import Modality, Volume
from tests.phantoms import oblique_affine

SMALL = PreprocessConfig(grid=GridConfig(depth=12, height=64, width=64, inplane_mm=3.0))


def head_phantom(
    modality: Modality, spacing=(0.9, 1.1, 2.5), angles=(12.0, -20.0, 31.0), shape=(170, 150, 80)
):
    """An ellipsoidal 'head' (semi-axes 70, 90, 100 mm) whose values vary smoothly in world space."""
    affine = oblique_affine(spacing=spacing, angles=angles, origin=(0.0, 0.0, 0.0))
    centre_index = (np.array(shape) - 1) / 2
    affine[:3, 3] = -affine[:3, :3] @ centre_index  # the grid's centre at the world origin
    idx = np.indices(shape).reshape(3, -1).astype(np.float64)
    world = (affine[:3, :3] @ idx + affine[:3, 3:]).reshape((3, *shape))
    x, y, z = world
    inside = (x / 70) ** 2 + (y / 90) ** 2 + (z / 100) ** 2 <= 1
    smooth = 40 + 2.0 * x - 1.5 * y + 1.0 * z  # HU-like, linear in world mm
    if modality is Modality.CT:
        arr = np.where(inside, smooth, -1000.0).astype(np.float32)
    else:
        arr = np.where(inside, 400 + smooth, 5.0).astype(np.float32)
    return Volume(arr, affine, modality), inside, world


@pytest.mark.parametrize("modality", [Modality.CT, Modality.MR])
def test_forward_then_inverse_restores_geometry_and_values(modality: Modality) -> None:
    vol, inside, world = head_phantom(modality)
    out = preprocess(vol, SMALL, CropRequest.millimetres(60, -30), modality=modality)
    assert out.image.shape == (12, 64, 64) and out.image.dtype == np.float32
    assert out.image.min() >= -1 and out.image.max() <= 1
    back = invert(out.record, out.image)
    # The geometry is the input's, bit for bit.
    assert back.shape == vol.shape
    assert np.array_equal(back.affine, vol.affine)
    assert back.spacing == vol.spacing and back.orientation == vol.orientation
    # Inside the slab and well inside the head, values agree within interpolation error.
    z = world[2]
    core = inside & (z < 50) & (z > -20)
    from scipy.ndimage import binary_erosion

    core &= binary_erosion(inside, iterations=6)
    tolerance = 12.0  # scanner units, on a ramp of up to 2 units/mm sampled with 3-7.5 mm voxels
    err = np.abs(back.array[core] - vol.array[core])
    assert np.median(err) < tolerance / 3 and np.percentile(err, 99) < tolerance
    # Outside the slab: the background value of the map.
    outside = (z > 75) | (z < -45)
    assert np.allclose(back.array[outside], out.record.intensity.background)


def test_model_grid_spans_the_slab_with_fixed_inplane_size() -> None:
    vol, _, _ = head_phantom(Modality.CT)
    out = preprocess(vol, SMALL, CropRequest.millimetres(60, -30))
    aff = out.record.grid_affine_array
    # D runs inferior -> superior and its voxel edges are the slab's levels.
    assert aff[2, 0] == pytest.approx(90 / 12)
    first = aff @ np.array([-0.5, 0, 0, 1])
    last = aff @ np.array([11.5, 0, 0, 1])
    assert first[2] == pytest.approx(-30) and last[2] == pytest.approx(60)
    assert np.linalg.norm(aff[:3, 1]) == pytest.approx(3.0) and np.linalg.norm(aff[:3, 2]) == pytest.approx(
        3.0
    )
    from mrct.io.orientation import axis_codes

    assert axis_codes(aff) == "SPL"
    # The head (centred at the origin) is centred in-plane.
    centre = aff @ np.array([5.5, 31.5, 31.5, 1])
    assert abs(centre[0]) < 6 and abs(centre[1]) < 6


def test_ct_maps_and_background_masking() -> None:
    vol, _, _ = head_phantom(Modality.CT)
    lin = preprocess(vol, SMALL, CropRequest.millimetres(60, -30))
    assert lin.record.intensity == ct_map("linear") or lin.record.intensity.kind == "ct_linear"
    soft = preprocess(
        vol,
        PreprocessConfig(grid=SMALL.grid, intensity=IntensityConfig(ct_map="soft_tissue")),
        CropRequest.millimetres(60, -30),
    )
    head = lin.mask
    # Soft tissue (the phantom is ~ -200..250 HU) spreads over more of [-1, 1] with the soft-tissue map.
    assert np.ptp(soft.image[head]) > 2 * np.ptp(lin.image[head])
    assert np.all(lin.image[~lin.mask] == -1.0)


def test_mr_statistics_are_recorded_and_inverted() -> None:
    vol, _, _ = head_phantom(Modality.MR)
    out = preprocess(vol, SMALL, CropRequest.millimetres(60, -30))
    stats = out.record.intensity.stats
    assert {"p0.5", "p99.5", "median", "mean", "std", "voxels"} <= set(stats)
    assert out.record.intensity.source == (stats["p0.5"], stats["p99.5"])
    assert np.isclose(out.image[out.mask].min(), -1, atol=0.05) and np.isclose(out.image.max(), 1)


def test_record_round_trips_through_json() -> None:
    vol, _, _ = head_phantom(Modality.MR)
    out = preprocess(vol, SMALL, CropRequest.millimetres(60, -30))
    again = PreprocessRecord.from_json(out.record.to_json())
    assert again.to_dict() == out.record.to_dict()
    assert np.array_equal(invert(again, out.image).array, invert(out.record, out.image).array)


def test_no_crop_spans_the_whole_field_of_view() -> None:
    vol, _, _ = head_phantom(Modality.CT)
    out = preprocess(vol, SMALL, CropRequest.none())
    from mrct.preprocessing.grid import world_extent

    lo, hi = world_extent(vol.shape, vol.affine)
    assert out.record.slab.source == "full-fov"
    assert out.record.slab.superior_mm == pytest.approx(
        hi[2]
    ) and out.record.slab.inferior_mm == pytest.approx(lo[2])


def test_a_slab_outside_the_scan_is_refused() -> None:
    vol, _, _ = head_phantom(Modality.CT)
    with pytest.raises(CropError, match=r"misses the scan.*--crop-mm"):
        preprocess(vol, SMALL, CropRequest.millimetres(900, 800))


def test_a_slab_just_beyond_the_scan_is_refused_by_the_scans_own_extent() -> None:
    """The working grid's top lies 3 mm above this scan's (101 mm rounded up to 104): a slab
    starting 1 mm above the scan was accepted."""
    vol, _, _ = head_phantom(
        Modality.CT, spacing=(1.0, 1.0, 1.0), angles=(0.0, 0.0, 0.0), shape=(170, 150, 101)
    )
    with pytest.raises(CropError, match=r"misses the scan \(S=-50\.\.50 mm\)"):
        preprocess(vol, SMALL, CropRequest.millimetres(75, 51.5))
    out = preprocess(vol, SMALL, CropRequest.millimetres(70, 49.5))  # 1 mm inside: accepted
    assert out.record.slab.inferior_mm == 49.5


def test_empty_scan_is_not_a_head() -> None:
    vol = Volume(np.full((40, 40, 30), -1000, np.int16), np.diag([2.0, 2.0, 2.0, 1.0]), Modality.CT)
    with pytest.raises(CropError, match="no head found"):
        preprocess(vol, SMALL, CropRequest.millimetres(20, -20))


def test_invert_rejects_a_wrong_shape() -> None:
    vol, _, _ = head_phantom(Modality.CT)
    out = preprocess(vol, SMALL, CropRequest.millimetres(60, -30))
    with pytest.raises(ValueError, match="model grid's shape"):
        invert(out.record, np.zeros((30, 256, 256)))


def test_config_loads_from_yaml_and_names_bad_keys(tmp_path) -> None:
    from mrct.config import load_yaml

    good = tmp_path / "good.yaml"
    good.write_text(
        "preprocessing:\n  grid: {depth: 16, inplane_mm: 1.5}\n  intensity: {ct_map: soft_tissue}\n"
    )
    cfg = load_yaml(PreprocessConfig, good, "preprocessing")
    assert (
        cfg.grid.shape == (16, 256, 256)
        and cfg.grid.inplane_mm == 1.5
        and cfg.intensity.ct_map == "soft_tissue"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocessing:\n  grid: {depht: 16}\n")
    with pytest.raises(ConfigError, match=r"grid\.depht: unknown key"):
        load_yaml(PreprocessConfig, bad, "preprocessing")
    bad.write_text("preprocessing:\n  intensity: {ct_map: log}\n")
    with pytest.raises(ConfigError, match="ct_map: 'log' is not one of linear, soft_tissue"):
        load_yaml(PreprocessConfig, bad, "preprocessing")


@pytest.mark.parametrize("fill", [0.0, -1000.0])
def test_resample_of_a_sub_box_matches_smoothing_the_whole_source(fill: float) -> None:
    """resample() smooths and samples only the part of the source the destination reads; the
    result must be that of smoothing the whole source (scipy, independently of MONAI)."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    from mrct.preprocessing.grid import AA_TRUNCATE, anti_alias_sigmas, resample

    rng = np.random.default_rng(0)
    source = rng.normal(size=(60, 50, 40)).astype(np.float32)
    src_affine = oblique_affine((0.9, 1.1, 1.3), (10.0, -5.0, 20.0), (-20.0, 30.0, -15.0))
    # A coarser, rotated grid well inside the source: strong smoothing, partial coverage.
    voxel = np.diag([2.7, 3.1, 3.6, 1.0])
    rotation = oblique_affine((1.0, 1.0, 1.0), (25.0, 10.0, -30.0), (0.0, 0.0, 0.0))
    dst_affine = (
        src_affine @ np.array([[1, 0, 0, 22], [0, 1, 0, 18], [0, 0, 1, 14], [0, 0, 0, 1]]) @ rotation @ voxel
    )
    dst_shape = (5, 4, 3)
    out = resample(source, src_affine, dst_affine, dst_shape, fill=fill, anti_alias=True)
    sigmas = anti_alias_sigmas(src_affine, dst_affine)
    assert max(sigmas) > 0.25
    smooth = gaussian_filter(source, sigmas, mode="nearest", truncate=AA_TRUNCATE)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in dst_shape], indexing="ij"), -1).reshape(-1, 3)
    points = (np.linalg.inv(src_affine) @ dst_affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3]
    assert points.min() > 0 and (points.max(axis=1) < np.array(source.shape) - 1).all()
    expected = map_coordinates(smooth, points, order=1).reshape(dst_shape)
    # float32 rounding only: sampling runs on (value - fill), a few ulps of |fill| apart
    np.testing.assert_allclose(out, expected, atol=1e-4 + 4 * np.spacing(np.float32(abs(fill))))
    outside = resample(source, src_affine, src_affine @ _shift(500.0), dst_shape, fill=fill, anti_alias=True)
    np.testing.assert_array_equal(outside, np.full(dst_shape, fill, dtype=np.float32))


def _shift(voxels: float) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = voxels
    return out


@pytest.mark.parametrize("modality", [Modality.MR, Modality.CT])
def test_the_model_grid_mask_keeps_a_thin_scalp_and_leaves_a_head_rest_out(modality: Modality) -> None:
    """From a hunt: the mask, drawn on a 4 mm grid after an opening, set the thin bright MR scalp
    outside the dark skull to background (up to 16 mm deep on real IXI heads, whose synthetic CT
    then lacked the occipital scalp and skull), and CT ears. The model grid's own mask keeps them,
    and still leaves out a head rest a few mm below the head."""
    spacing = 1.0
    shape = (180, 220, 120)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
    x, y, z = (np.indices(shape).reshape(3, -1).T * spacing + affine[:3, 3]).T.reshape(3, *shape)
    r = np.sqrt((x / 70) ** 2 + (y / 90) ** 2 + (z / 100) ** 2)
    scalp = (r > 1.07) & (r <= 1.11)  # 3-4 mm thick, 5-7 mm outside the brain
    rest = (np.abs(x + 85) <= 1.0) & (np.abs(y) <= 40)  # a 2 mm plate 4-5 mm below the scalp (R-L)
    if modality is Modality.MR:  # bright brain and scalp, dark skull and air; a rest MR cannot see
        array = np.where(r <= 1.0, 400.0, 5.0) + np.where(scalp, 500.0, 0.0)
    else:  # skull and scalp one dense body; a plastic rest above the body threshold
        array = np.where(r <= 1.0, 40.0, -1000.0) + np.where((r > 1.0) & (r <= 1.11), 1800.0, 0.0)
        array = np.where(rest, 200.0, array)
    config = PreprocessConfig(grid=GridConfig(depth=12, height=224, width=224, inplane_mm=1.0))
    out = preprocess(
        Volume(array.astype(np.float32), affine, modality), config, CropRequest.millimetres(40, -40)
    )
    grid = out.record.grid_affine_array
    points = np.indices(out.mask.shape).reshape(3, -1).T @ grid[:3, :3].T + grid[:3, 3]
    gx, gy, gz = points.T.reshape(3, *out.mask.shape)
    gr = np.sqrt((gx / 70) ** 2 + (gy / 90) ** 2 + (gz / 100) ** 2)
    rim = (gr > 1.075) & (gr <= 1.105)  # the scalp's middle, away from its blurred edges
    assert out.mask[rim].mean() > 0.99, out.mask[rim].mean()
    assert not out.mask[gr > 1.2].any()  # nor a 4 mm stair step of air beyond it
    if modality is Modality.CT:
        assert not out.mask[(np.abs(gx + 85) <= 1.0) & (np.abs(gy) <= 40)].any()


def test_the_model_grid_mask_keeps_every_part_of_the_coarse_mask() -> None:
    """From review: only the body holding most of the coarse mask was kept, so a part that fell
    apart on the model grid (a tile's edge cutting a chin off the neck) became background."""
    from mrct.preprocessing.mask import mask_on_grid

    image = np.zeros((10, 64, 64), np.float32)
    coarse = np.zeros(image.shape, bool)
    for box in ((slice(None), slice(10, 30), slice(10, 30)), (slice(None), slice(40, 50), slice(40, 50))):
        image[box], coarse[box] = 100.0, True
    mask = mask_on_grid(image, coarse, 50.0, (4.0, 1.0, 1.0), Modality.MR)
    assert not (coarse & ~mask).any()
    assert not mask_on_grid(image, np.zeros_like(coarse), 50.0, (4.0, 1.0, 1.0), Modality.MR).any()


def test_a_ct_head_rest_touching_the_head_stays_out_of_the_grid_mask() -> None:
    """From a hunt: with a 2-voxel opening, a 7 mm plate (+200 HU) touching the occiput joined the
    CT head mask on the model grid for 12 mm, and the synthetic MR drew it as tissue; the coarse
    mask's opening had left it out."""
    from mrct.preprocessing.mask import mask_on_grid

    yy, xx = np.mgrid[0:128, 0:128]
    head = (yy - 64) ** 2 + (xx - 64) ** 2 <= 40**2
    plate = (yy >= 105) & (yy < 112) & (np.abs(xx - 64) <= 40)  # touches the head at row 104
    image = np.where(head, 40.0, -1000.0) + np.where(plate & ~head, 1200.0, 0.0)
    image = np.repeat(image[None], 6, axis=0).astype(np.float32)
    coarse = np.repeat(head[None], 6, axis=0)
    mask = mask_on_grid(image, coarse, -500.0, (4.0, 1.0, 1.0), Modality.CT)
    assert not mask[:, 108:112].any()  # at most a fillet where it touches
    assert (mask & ~coarse).sum() < 0.02 * coarse.sum()
