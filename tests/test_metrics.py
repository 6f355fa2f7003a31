"""mrct/metrics.py comparisons with ground truth, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrct import metrics

SHAPE = (3, 4, 5)


def _ct(value: float = 0.0) -> np.ndarray:
    return np.full(SHAPE, value, dtype=np.float64)


# ---------------------------------------------------------------- MAE and PSNR


def test_mae_inside_the_mask() -> None:
    gt, pred = _ct(), _ct()
    pred[0, 0, :] = [10, 20, 30, 40, 50]  # 5 voxels off by 10..50 HU
    pred[2, 3, 4] = 1000  # outside the mask below
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[0, 0, :] = 1
    mask[1] = 1  # 20 voxels, all exact
    # (10 + 20 + 30 + 40 + 50) / 25 voxels
    assert metrics.mae(pred, gt, mask) == pytest.approx(150 / 25)
    # without a mask: (150 + 1000) / 60 voxels
    assert metrics.mae(pred, gt) == pytest.approx(1150 / 60)


def test_mask_is_binarised_at_zero() -> None:
    gt, pred = _ct(), _ct(8.0)
    mask = np.zeros(SHAPE)
    mask[0] = 0.3  # > 0 counts, as in SynthRAD2023's np.where(mask > 0, 1, 0)
    mask[1] = -5.0  # does not
    assert metrics.mae(pred, gt, mask) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="selects no voxel"):
        metrics.mae(pred, gt, np.zeros(SHAPE))


def test_clipping_to_the_synthrad_range() -> None:
    gt = _ct(3000.0)
    gt[0] = -1024.0
    pred = _ct(5000.0)  # clipped to 3000: no error where gt is 3000
    pred[0] = -3000.0  # clipped to -1024: no error where gt is -1024
    assert metrics.mae(pred, gt) == 0.0
    assert metrics.psnr(pred, gt) == math.inf
    # unclipped: 2000 HU on 40 voxels and 1976 HU on 20 voxels
    assert metrics.mae(pred, gt, clip=False) == pytest.approx((2000 * 40 + 1976 * 20) / 60)


def test_psnr_with_data_range_4024() -> None:
    gt, pred = _ct(), _ct()
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1] = True
    pred[1] = 10.0  # MSE inside the mask: 100 HU^2
    pred[0] = 500.0  # outside the mask: ignored
    expected = 10 * math.log10(4024**2 / 100)  # = 20 log10(402.4) = 52.0931 dB
    assert metrics.psnr(pred, gt, mask) == pytest.approx(expected)
    assert expected == pytest.approx(52.0931, abs=1e-4)
    pred[1, 0, 0] = 30.0  # MSE (19 * 100 + 900) / 20 = 140
    assert metrics.psnr(pred, gt, mask) == pytest.approx(10 * math.log10(4024**2 / 140))
    assert metrics.psnr(pred, gt, mask, data_range=1000) == pytest.approx(10 * math.log10(1000**2 / 140))


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.mae(np.zeros((3, 4, 5)), np.zeros((3, 4, 6)))
    with pytest.raises(ValueError, match="mask shape"):
        metrics.psnr(_ct(), _ct(), np.ones((3, 4, 6)))


# ---------------------------------------------------------------- SSIM


def test_ssim_of_identical_images_is_one() -> None:
    rng = np.random.default_rng(0)
    ct = rng.normal(0, 300, (8, 9, 10))
    mask = np.zeros(ct.shape, dtype=bool)
    mask[2:7, 3:8, 1:9] = True
    assert metrics.ssim(ct, ct) == pytest.approx(1.0)
    assert metrics.ssim(ct, ct, mask) == pytest.approx(1.0)


def test_ssim_of_constant_images_by_hand() -> None:
    # Constant images have zero variance everywhere, so every voxel's SSIM is the luminance
    # term (2 a b + C1) / (a^2 + b^2 + C1) on the shifted values a = 0 + 1024, b = 100 + 1024.
    shape = (7, 8, 9)
    gt, pred = np.zeros(shape), np.full(shape, 100.0)
    a, b, c1 = 1024.0, 1124.0, (0.01 * 4024) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert metrics.ssim(pred, gt) == pytest.approx(expected, abs=1e-9)
    # HU above 3000 are clipped first: 3000 vs 5000 is a perfect match.
    assert metrics.ssim(np.full(shape, 5000.0), np.full(shape, 3000.0)) == pytest.approx(1.0)


def _ssim_by_windows(x: np.ndarray, y: np.ndarray, data_range: float, win: int = 7) -> np.ndarray:
    """An independent SSIM map: explicit 7^3 windows over symmetrically padded arrays."""
    pad = win // 2
    xp, yp = np.pad(x, pad, mode="symmetric"), np.pad(y, pad, mode="symmetric")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = np.empty(x.shape)
    for idx in np.ndindex(*x.shape):
        window = tuple(slice(i, i + win) for i in idx)
        px, py = xp[window].ravel(), yp[window].ravel()
        mx, my = px.mean(), py.mean()
        vx, vy = px.var(ddof=1), py.var(ddof=1)
        cxy = np.cov(px, py, ddof=1)[0, 1]
        out[idx] = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return out


def test_ssim_matches_an_independent_implementation() -> None:
    rng = np.random.default_rng(3)
    shape = (8, 9, 10)
    gt = rng.normal(40, 400, shape)
    pred = gt + rng.normal(0, 120, shape)
    pred[0, 0, 0] = 4000.0  # clipped
    mask = np.zeros(shape, dtype=bool)
    mask[1:7, 2:8, 2:9] = True
    # SynthRAD2023's recipe, written out: clip, background to -1024, shift to [0, 4024],
    # SSIM map, mean over the masked voxels at least 3 voxels from every border.
    g, p = np.clip(gt, -1024, 3000), np.clip(pred, -1024, 3000)
    g, p = np.where(mask, g, -1024) + 1024, np.where(mask, p, -1024) + 1024
    s = _ssim_by_windows(p, g, 4024.0)
    assert metrics.ssim_map(p, g, 4024.0) == pytest.approx(s, abs=1e-10)
    inner = (slice(3, -3),) * 3
    assert metrics.ssim(pred, gt, mask) == pytest.approx(s[inner][mask[inner]].mean(), abs=1e-10)
    # without a mask: no background is set, the mean is over the whole interior
    s_all = _ssim_by_windows(np.clip(pred, -1024, 3000) + 1024, np.clip(gt, -1024, 3000) + 1024, 4024.0)
    assert metrics.ssim(pred, gt) == pytest.approx(s_all[inner].mean(), abs=1e-10)
    assert metrics.ssim(pred, gt) < 1.0


def test_ssim_matches_scikit_image_when_installed() -> None:
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(5)
    gt = rng.normal(0, 500, (10, 11, 12))
    pred = gt + rng.normal(0, 200, gt.shape)
    x, y = np.clip(pred, -1024, 3000) + 1024, np.clip(gt, -1024, 3000) + 1024
    expected = skm.structural_similarity(y, x, data_range=4024.0)
    assert metrics.ssim(pred, gt) == pytest.approx(expected, abs=1e-10)


def test_ssim_needs_seven_voxels_per_axis() -> None:
    with pytest.raises(ValueError, match="at least 7 voxels"):
        metrics.ssim(_ct(), _ct())


# ---------------------------------------------------------------- MNIST L2, cycle, flicker


def test_volumetric_mnist_l2_on_the_unit_scale() -> None:
    gt = -np.ones(SHAPE)
    pred = gt.copy()
    pred[0, :2, :2] = 1.0  # 4 voxels fully wrong: 1 each on the [0, 1] scale
    pred[2, 3, 4] = 0.0  # half wrong: 0.5
    assert metrics.volumetric_mnist_l2(pred, gt) == pytest.approx(math.sqrt(4 + 0.25))
    assert metrics.volumetric_mnist_l2(gt, gt) == 0.0
    unit = (pred + 1) / 2, (gt + 1) / 2
    assert metrics.volumetric_mnist_l2(*unit, value_range=(0.0, 1.0)) == pytest.approx(math.sqrt(4.25))


def test_cycle_error() -> None:
    x = np.zeros(SHAPE)
    cycled = x.copy()
    cycled[0] = 0.6  # 20 voxels
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:2] = True  # 40 voxels, 20 of them off by 0.6
    assert metrics.cycle_error(x, cycled) == pytest.approx(0.6 * 20 / 60)
    assert metrics.cycle_error(x, cycled, mask) == pytest.approx(0.6 * 20 / 40)


def test_slice_flicker_by_hand() -> None:
    ramp = np.broadcast_to(np.arange(5.0)[:, None, None] * 7, (5, 3, 4))
    assert metrics.slice_flicker(ramp) == 0.0  # smooth change: no flicker
    assert metrics.slice_flicker(ramp.transpose(1, 0, 2), axis=1) == 0.0
    alternating = np.broadcast_to(np.array([0.0, 1, 0, 1, 0])[:, None, None], (5, 3, 4))
    assert metrics.slice_flicker(alternating) == pytest.approx(2.0)  # |1 - 0 + 1| each time
    v = np.zeros((4, 2, 2))
    v[1, 0, 0] = 3.0  # second differences at t = 1, 2: -6 and 3 on voxel (0, 0), 0 elsewhere
    assert metrics.slice_flicker(v) == pytest.approx((6 + 3) / 8)
    mask = np.zeros((4, 2, 2), dtype=bool)
    mask[:, 0, 0] = True
    assert metrics.slice_flicker(v, mask) == pytest.approx(4.5)
    mask[0, 0, 0] = False  # (0, 0) now lies in 3 masked consecutive slices only at t = 2
    assert metrics.slice_flicker(v, mask) == pytest.approx(3.0)


def test_relative_flicker() -> None:
    rng = np.random.default_rng(1)
    smooth = np.broadcast_to(np.linspace(0, 1, 10)[:, None, None] ** 2, (10, 6, 6)).copy()
    noisy = smooth + rng.normal(0, 0.05, smooth.shape)
    assert metrics.relative_flicker(smooth, smooth) == pytest.approx(1.0)
    assert metrics.relative_flicker(noisy, smooth) > 2  # about 4: noise of 0.05 vs a 2nd difference of 0.025
    flat = np.zeros((3, 2, 2))
    assert metrics.relative_flicker(flat, flat) == 0.0
    with pytest.raises(ValueError, match="at least 3 slices"):
        metrics.slice_flicker(np.zeros((2, 4, 4)))


def test_quality_checks_do_not_depend_on_voxel_order() -> None:
    """The head outline fills holes axially (an airway open to the outside below counts as head):
    across the voxel axis closest to S, whatever order the file stores them in (IXI is PSR)."""
    from mrct.volume import Volume

    shape = (60, 70, 50)
    x, y, z = np.indices(shape, dtype=np.float32) - ((np.array(shape) - 1) / 2)[:, None, None, None]
    head = (x / 25) ** 2 + (y / 30) ** 2 + (z / 22) ** 2 <= 1
    airway = (x**2 + (y - 8) ** 2 <= 9) & (z < 5)  # a tube open at the bottom, closed above
    mr = np.where(head & ~airway, 600.0, 0.0).astype(np.float32)
    sct = np.where(head & ~airway, 40.0, -1000.0).astype(np.float32)
    sct[head & ~airway & (np.abs(x) > 20)] = 900.0  # some "bone"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1.0)  # centred on 0 mm
    ras = metrics.synthetic_ct_checks(Volume(mr, affine), Volume(sct, affine), 30.0, -30.0)
    # The same voxels stored P, S, R (as IXI): stored[i, j, k] = ras[k, n1 - 1 - i, j].
    stored = [np.flip(np.transpose(a, (1, 2, 0)), axis=0).copy() for a in (mr, sct)]
    index = np.zeros((4, 4))  # stored index -> RAS-stored index
    index[:, 0], index[:, 1], index[:, 2] = [0, -1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]
    index[:, 3] = [0, shape[1] - 1, 0, 1]
    psr = affine @ index
    again = metrics.synthetic_ct_checks(Volume(stored[0], psr), Volume(stored[1], psr), 30.0, -30.0)
    assert again.to_dict() == pytest.approx(ras.to_dict())
    # The airway, open below, is inside the axial outline: the sCT's outline matches the MR's.
    assert ras.head_dice > 0.99 and ras.air_median_hu == -1000.0
