"""Training augmentations: sample-then-apply, seeds, geometry in mm, MR-only intensity."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from mrct.preprocessing.augment import (
    AugmentConfig,
    AugmentParams,
    apply_augmentation,
    apply_augmentation_to,
    sample_augmentation,
)

SHAPE = (16, 32, 32)
ISO = (1.0, 1.0, 1.0)
ALWAYS = AugmentConfig(
    affine_probability=1.0, elastic_probability=1.0, gamma_probability=1.0, bias_probability=1.0
)

Array = npt.NDArray[np.float32]


def head(shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, ...] = ISO) -> Array:
    """An off-centre ellipsoid 'head' in [-1, 1] with structure inside, background -1."""
    d, h, w = (np.arange(n) * s for n, s in zip(shape, spacing, strict=True))
    z, y, x = np.meshgrid(d - d.mean(), h - h.mean() + 1.5, w - w.mean() - 2.0, indexing="ij")
    inside = (z / 7) ** 2 + (y / 12) ** 2 + (x / 10) ** 2 < 1
    texture = 0.4 * np.sin(x / 3) * np.cos(y / 4) + 0.2 * z / 8
    return np.where(inside, np.clip(texture, -0.9, 0.9), -1.0).astype(np.float32)


def sphere(radius_mm: float, shape: tuple[int, int, int], spacing: tuple[float, ...]) -> Array:
    """Soft sphere (1 inside, -1 outside, 1 mm ramp) about the volume centre, in mm."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt(z**2 + y**2 + x**2)
    return np.clip(radius_mm - r, -1.0, 1.0).astype(np.float32)


def sample(seed: int, modality: str = "MR", config: AugmentConfig = ALWAYS) -> AugmentParams:
    rng = np.random.default_rng(seed)
    return sample_augmentation(config, rng, modality=modality, shape=SHAPE, spacing_mm=(2.0, 1.0, 1.0))


def test_same_seed_gives_same_params_and_output() -> None:
    a, b = sample(7), sample(7)
    assert a == b and a.to_dict() == b.to_dict()
    img = head()
    out_a = apply_augmentation(a, img, spacing_mm=(2.0, 1.0, 1.0))
    out_b = apply_augmentation(b, img, spacing_mm=(2.0, 1.0, 1.0))
    assert out_a.dtype == np.float32 and out_a.shape == img.shape
    np.testing.assert_array_equal(out_a, out_b)


def test_different_seeds_differ() -> None:
    a, b = sample(1), sample(2)
    assert a != b
    assert a.rotation_deg != b.rotation_deg and a.gamma != b.gamma
    img = head()
    assert not np.array_equal(
        apply_augmentation(a, img, spacing_mm=ISO), apply_augmentation(b, img, spacing_mm=ISO)
    )


def test_changing_one_probability_or_modality_keeps_the_other_values() -> None:
    mr = sample(3)
    no_gamma = sample(3, config=replace(ALWAYS, gamma_probability=0.0))
    assert no_gamma.gamma is None and no_gamma.bias_coefficients == mr.bias_coefficients
    ct = sample(3, "CT")
    assert ct.elastic_mm is not None and mr.elastic_mm is not None
    assert ct.rotation_deg == mr.rotation_deg and np.array_equal(ct.elastic_mm, mr.elastic_mm)


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(enabled=False),
        replace(ALWAYS, affine_probability=0, elastic_probability=0, gamma_probability=0, bias_probability=0),
    ],
)
def test_everything_off_is_exactly_the_identity(config: AugmentConfig) -> None:
    params = sample(5, config=config)
    assert params == AugmentParams()
    img = head() + np.float32(1e-7)  # any value, not only round ones
    out = apply_augmentation(params, img, spacing_mm=(4.0, 1.0, 1.0))
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_translation_along_w_moves_a_cube_by_voxels_at_1mm() -> None:
    img = np.full(SHAPE, -1.0, np.float32)
    img[6:10, 10:16, 8:14] = 1.0
    out = apply_augmentation(AugmentParams(translation_mm=(0, 0, 8)), img, spacing_mm=ISO)
    np.testing.assert_allclose(out, np.roll(img, 8, axis=2), atol=1e-5)
    # the same 8 mm along D at 2 mm slices is 4 slices
    out_d = apply_augmentation(AugmentParams(translation_mm=(8, 0, 0)), img, spacing_mm=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(out_d, np.roll(img, 4, axis=0), atol=1e-5)


@pytest.mark.parametrize("angle, k", [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotation_about_the_slice_axis_matches_rot90(angle: float, k: int) -> None:
    """+90 degrees about D turns H towards W, as np.rot90(a, 1, axes=(1, 2)) does."""
    img = head()
    out = apply_augmentation(AugmentParams(rotation_deg=(angle, 0, 0)), img, spacing_mm=ISO)
    np.testing.assert_allclose(out, np.rot90(img, k, axes=(1, 2)), atol=1e-4)


def test_rotation_and_scale_are_physical_on_anisotropic_spacing() -> None:
    """A sphere rotated about H (mixing 2.5 mm D with 1 mm W) and scaled stays a sphere in mm."""
    shape, spacing = (16, 40, 40), (2.5, 1.0, 1.0)
    params = AugmentParams(rotation_deg=(20.0, 35.0, -15.0), scale=1.2)
    out = apply_augmentation(params, sphere(10.0, shape, spacing), spacing_mm=spacing)
    expected = sphere(12.0, shape, spacing)
    inside, want = out > 0, expected > 0
    iou = (inside & want).sum() / (inside | want).sum()
    assert iou > 0.97
    # rotating in voxel units (spacing ignored) turns the 4:10 (D:W voxels) ellipsoid: IoU ~0.5
    wrong = apply_augmentation(params, sphere(10.0, shape, spacing), spacing_mm=ISO) > 0
    assert (wrong & want).sum() / (wrong | want).sum() < 0.7


def test_elastic_constant_displacement_is_a_translation() -> None:
    """B-spline weights sum to 1, and the field moves content the way translation_mm does."""
    field = np.zeros((3, 4, 5, 5))
    field[2] = 3.0  # +3 mm along W everywhere
    img = head()
    elastic = apply_augmentation(AugmentParams(elastic_mm=field), img, spacing_mm=ISO)
    shifted = apply_augmentation(AugmentParams(translation_mm=(0, 0, 3)), img, spacing_mm=ISO)
    np.testing.assert_allclose(elastic, shifted, atol=1e-5)


def test_random_elastic_is_mild_and_smooth() -> None:
    params = AugmentParams(elastic_mm=np.random.default_rng(0).uniform(-3, 3, (3, 5, 5, 5)))
    img = np.full(SHAPE, -1.0, np.float32)
    img[:, :, 16] = 1.0  # one plane; it may bend by at most 3 mm
    out = apply_augmentation(params, img, spacing_mm=ISO)
    cols = np.argmax(out, axis=2)
    assert np.abs(cols - 16).max() <= 3 and len(np.unique(cols)) > 1


@pytest.mark.parametrize("seed", range(6))
def test_mr_intensity_keeps_background_and_range(seed: int) -> None:
    params = sample(seed, config=replace(ALWAYS, affine_probability=0, elastic_probability=0))
    assert params.gamma is not None and params.bias_coefficients is not None
    img = head(spacing=(2.0, 1.0, 1.0))
    out = apply_augmentation(params, img, spacing_mm=(2.0, 1.0, 1.0))
    background = img == -1.0
    np.testing.assert_array_equal(out[background], -1.0)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert not np.allclose(out[~background], img[~background], atol=1e-3)


def test_gamma_acts_on_values_shifted_to_unit_range() -> None:
    img = head()
    out = apply_augmentation(AugmentParams(gamma=1.4), img, spacing_mm=ISO)
    fg = img > -1
    np.testing.assert_allclose(out[fg], 2 * ((img[fg] + 1) / 2) ** 1.4 - 1, atol=1e-6)


def test_ct_params_never_include_gamma_or_bias() -> None:
    for seed in range(20):
        params = sample(seed, "CT")
        assert params.gamma is None and params.bias_coefficients is None
        assert params.rotation_deg is not None and params.elastic_mm is not None


def test_params_round_trip_through_json() -> None:
    params = sample(11)
    data = json.loads(json.dumps(params.to_dict()))
    assert AugmentParams.from_dict(data) == params
    assert json.loads(json.dumps(AugmentParams().to_dict()))["gamma"] is None


def test_dict_and_batch_share_one_spatial_transform() -> None:
    params = AugmentParams(rotation_deg=(30, 0, 0), translation_mm=(0, 2, 3), gamma=1.3)
    img = head()
    mask = (img > -1).astype(np.float32)
    out = apply_augmentation_to(
        params, {"image": img, "mask": mask}, spacing_mm=ISO, modes={"mask": "nearest"}, fills={"mask": 0.0}
    )
    assert set(np.unique(out["mask"])) <= {0.0, 1.0}  # nearest, no gamma
    # nearest picks a head voxel only where trilinear gives it weight, so the image is head there
    assert (out["image"][out["mask"] == 1] > -1).all() and out["mask"].sum() > 0.5 * mask.sum()
    batch = apply_augmentation(params, np.stack([img, img[::-1].copy()]), spacing_mm=ISO)
    np.testing.assert_allclose(batch[0], apply_augmentation(params, img, spacing_mm=ISO), atol=1e-6)
    second = apply_augmentation(params, img[::-1].copy(), spacing_mm=ISO)
    np.testing.assert_allclose(batch[1], second, atol=1e-6)


@pytest.mark.parametrize(
    "field, value",
    [
        ("affine_probability", -0.1),
        ("bias_probability", 1.5),
        ("rotation_deg", (10.0, -1.0, 10.0)),
        ("scale_range", (1.1, 0.9)),
        ("scale_range", (0.0, 1.1)),
        ("translation_mm", (10.0, 10.0)),
        ("elastic_grid", (1, 5, 5)),
        ("elastic_max_mm", float("nan")),
        ("gamma_range", (-0.7, 1.5)),
        ("bias_order", 2.5),
        ("bias_max_coefficient", -0.3),
        ("enabled", "yes"),
        ("remap_probability", 1.5),
        ("remap_knots", 0),
        ("remap_max_shift", 0.6),
    ],
)
def test_config_rejects_nonsense_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})  # type: ignore[arg-type]


def test_config_accepts_lists_from_yaml_and_rejects_bad_calls() -> None:
    config = AugmentConfig(rotation_deg=[5, 5, 15], elastic_grid=[3, 4, 4])  # type: ignore[arg-type]
    assert config.rotation_deg == (5.0, 5.0, 15.0) and config.elastic_grid == (3, 4, 4)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="modality"):
        sample_augmentation(config, rng, modality="PET", shape=SHAPE, spacing_mm=ISO)
    with pytest.raises(ValueError, match="spacing_mm"):
        sample_augmentation(config, rng, modality="CT", shape=SHAPE, spacing_mm=(0.0, 1.0, 1.0))


REMAP = replace(ALWAYS, affine_probability=0, elastic_probability=0, gamma_probability=0, bias_probability=0)


@pytest.mark.parametrize("seed", range(6))
def test_contrast_remap_is_monotone_and_keeps_background(seed: int) -> None:
    params = sample(seed, config=replace(REMAP, remap_probability=1.0, remap_max_shift=0.2))
    assert params.remap_knots is not None and len(params.remap_knots) == 4
    assert params.gamma is None and params.is_spatial_identity
    img = head()
    out = apply_augmentation(params, img, spacing_mm=ISO)
    background = img == -1.0
    np.testing.assert_array_equal(out[background], -1.0)
    order = np.argsort(img[~background], kind="stable")
    assert (np.diff(out[~background][order]) >= -1e-6).all()  # tissue order is kept
    assert not np.allclose(out[~background], img[~background], atol=1e-3)


def test_contrast_remap_follows_its_knots() -> None:
    img = head()
    fg = img > -1
    same = apply_augmentation(AugmentParams(remap_knots=(0.25, 0.5, 0.75)), img, spacing_mm=ISO)
    np.testing.assert_allclose(same, img, atol=1e-6)  # knots on the diagonal: the identity
    out = apply_augmentation(AugmentParams(remap_knots=(0.7,)), img, spacing_mm=ISO)
    u = (img[fg] + 1) / 2  # [0, 0.5] -> [0, 0.7] and [0.5, 1] -> [0.7, 1]
    expected = np.where(u < 0.5, 1.4 * u, 0.7 + 0.6 * (u - 0.5))
    np.testing.assert_allclose(out[fg], 2 * expected - 1, atol=1e-5)
    with pytest.raises(ValueError, match="remap_knots"):
        AugmentParams(remap_knots=(0.6, 0.4))


def test_remap_off_draws_nothing_so_older_runs_replay() -> None:
    def next_draw(config: AugmentConfig) -> float:
        rng = np.random.default_rng(5)
        sample_augmentation(config, rng, modality="MR", shape=SHAPE, spacing_mm=ISO)
        return float(rng.random())

    off = next_draw(ALWAYS)
    assert next_draw(replace(ALWAYS, remap_knots=9, remap_max_shift=0.3)) == off
    assert next_draw(replace(ALWAYS, remap_probability=0.5)) != off
    assert sample(3, "CT", replace(ALWAYS, remap_probability=1.0)).remap_knots is None
    on, before = sample(5, config=replace(ALWAYS, remap_probability=1.0)), sample(5)
    assert on.remap_knots is not None  # drawn last: the other values are those drawn without it
    assert on == AugmentParams(**{**before.to_dict(), "remap_knots": on.remap_knots})
