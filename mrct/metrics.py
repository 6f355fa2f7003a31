"""Image metrics: plausibility checks without ground truth, and comparisons with it.

Plausibility checks (on the input grid, inside the brow-to-jaw slab) are what a bundled model
must pass on held-out scans: the synthetic CT's head should be where the MR's head is, air
should be air, soft tissue near water, and a skull should appear. Units: HU for CT; the
synthetic MR's arbitrary 0..1000 scale for MR. Levels are RAS mm along S.

A "head" is always an outline, the radiotherapy BODY contour: the largest body above the
threshold, holes filled (:func:`mrct.preprocessing.mask.head_mask`), for the synthetic image
exactly as for the source. A bare threshold would count the sinuses, the airway and, in an
MR, the dark cortical bone as outside the head, so a real image would fail its own check:
a real T1 MR's thresholded voxels reach Dice 0.92-0.94 with its own head outline in this
slab (seven IXI heads), a real CT's 0.96.

Comparisons with ground truth: the SynthRAD2023 challenge's masked CT metrics (:func:`mae`,
:func:`psnr`, :func:`ssim`, HU clipped to [-1024, 3000]), the Volumetric MNIST L2 of the
paper's Table 2 (:func:`volumetric_mnist_l2`), the cycle error, and slice-to-slice flicker
(:func:`slice_flicker`), which frame-wise (2D) translation shows and volumetric translation
should not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from mrct.preprocessing.grid import in_slab
from mrct.preprocessing.mask import CT_BODY_HU, axial_axis, head_mask, mr_body_threshold, otsu_threshold
from mrct.volume import Volume

BONE_HU = 300.0


class MaskError(ValueError):
    """The mask leaves a metric nothing to measure (the caller names the mask file)."""


def slab_voxels(volume: Volume, superior_mm: float, inferior_mm: float) -> npt.NDArray[np.bool_]:
    """Voxels whose centre's S coordinate (RAS mm) lies within [inferior, superior]."""
    return in_slab(volume.affine, volume.shape, superior_mm, inferior_mm)


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def mr_head_mask(mr: Volume) -> npt.NDArray[np.bool_]:
    """The MR head on its own grid: above halfway from the floor to Otsu's threshold, largest
    body, holes filled (the rule preprocessing uses on its 4 mm working grid)."""
    array = np.asarray(mr.array, dtype=np.float32)
    return head_mask(array, mr_body_threshold(array), axial_axis(mr.affine))


def ct_head_mask(ct: Volume) -> npt.NDArray[np.bool_]:
    return head_mask(np.asarray(ct.array, dtype=np.float32), CT_BODY_HU, axial_axis(ct.affine))


@dataclass(frozen=True)
class SyntheticCTChecks:
    """Inside the slab: Dice of the sCT head outline (HU > -500, as :func:`ct_head_mask`) with the
    MR head mask, the median HU of air outside the MR head, the median HU inside it, and the
    fraction of head voxels above 300 HU."""

    head_dice: float
    air_median_hu: float
    head_median_hu: float
    bone_fraction: float

    def passes(self) -> bool:
        return (
            self.head_dice >= 0.95
            and self.air_median_hu <= -950
            and 0 <= self.head_median_hu <= 100
            and 0.05 <= self.bone_fraction <= 0.35
        )

    def to_dict(self) -> dict[str, float | bool]:
        return {**asdict(self), "passes": self.passes()}


def synthetic_ct_checks(mr: Volume, sct: Volume, superior_mm: float, inferior_mm: float) -> SyntheticCTChecks:
    slab = slab_voxels(mr, superior_mm, inferior_mm)
    head = mr_head_mask(mr) & slab
    hu = np.asarray(sct.array, dtype=np.float32)
    synthetic_head = head_mask(hu, CT_BODY_HU, axial_axis(sct.affine)) & slab
    air = slab & ~head
    return SyntheticCTChecks(
        head_dice=dice(synthetic_head, head),
        air_median_hu=float(np.median(hu[air])) if air.any() else float("nan"),
        head_median_hu=float(np.median(hu[head])) if head.any() else float("nan"),
        bone_fraction=float((hu[head] > BONE_HU).mean()) if head.any() else float("nan"),
    )


@dataclass(frozen=True)
class SyntheticMRChecks:
    """Inside the slab: Dice of the sMR head outline (above half of its own Otsu threshold in the
    slab, holes filled) with the CT head mask, and how dark the background is (median outside
    the CT head over median inside it)."""

    head_dice: float
    background_median: float
    head_median: float

    @property
    def background_ratio(self) -> float:
        return self.background_median / max(self.head_median, 1e-6)

    def passes(self) -> bool:
        return self.head_dice >= 0.95 and self.background_ratio <= 0.05

    def to_dict(self) -> dict[str, float | bool]:
        return {**asdict(self), "background_ratio": self.background_ratio, "passes": self.passes()}


def synthetic_mr_checks(ct: Volume, smr: Volume, superior_mm: float, inferior_mm: float) -> SyntheticMRChecks:
    slab = slab_voxels(ct, superior_mm, inferior_mm)
    head = ct_head_mask(ct) & slab
    values = np.asarray(smr.array, dtype=np.float32)
    inside = values[slab]
    # The synthetic MR's scale is mrct's own, its air at 0 (MR_OUTPUT_RANGE): half of Otsu's.
    threshold = 0.5 * otsu_threshold(inside) if inside.size else 0.0
    synthetic_head = head_mask(values, threshold, axial_axis(smr.affine)) & slab
    background = slab & ~head
    return SyntheticMRChecks(
        head_dice=dice(synthetic_head, head),
        background_median=float(np.median(values[background])) if background.any() else float("nan"),
        head_median=float(np.median(values[head])) if head.any() else float("nan"),
    )


# ---------------------------------------------------------------- comparisons with ground truth

HU_RANGE = (-1024.0, 3000.0)  # SynthRAD2023's fixed dynamic range (4024 HU)
SSIM_WINDOW = 7  # skimage's default window (uniform, sample covariance), as SynthRAD2023 uses it
ArrayLike = npt.ArrayLike


def _pair(pred: ArrayLike, gt: ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    a, b = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: prediction {a.shape}, ground truth {b.shape}")
    return a, b


def _mask(mask: ArrayLike | None, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """``mask > 0`` (SynthRAD2023 binarises this way), or everything; it must select a voxel."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask) > 0
    if m.shape != shape:
        raise MaskError(f"mask shape {m.shape} differs from the image shape {shape}")
    if not m.any():
        raise MaskError("the mask selects no voxel")
    return m


def clip_hu(array: ArrayLike) -> npt.NDArray[np.float64]:
    """HU clipped to SynthRAD2023's range [-1024, 3000], as float64."""
    return np.clip(np.asarray(array, dtype=np.float64), *HU_RANGE)


def mae(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None, *, clip: bool = True) -> float:
    """Mean absolute error (HU) over the voxels where ``mask > 0`` (all voxels without a mask).

    Both images are clipped to [-1024, 3000] HU first (``clip=False`` skips this: the
    SynthRAD2023 reference ``mae`` does not clip; its PSNR and SSIM do).
    """
    a, b = _pair(pred, gt)
    if clip:
        a, b = clip_hu(a), clip_hu(b)
    m = _mask(mask, a.shape)
    return float(np.abs(a[m] - b[m]).mean())


def psnr(
    pred: ArrayLike,
    gt: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    data_range: float = HU_RANGE[1] - HU_RANGE[0],
    clip: bool = True,
) -> float:
    """Peak signal-to-noise ratio (dB) over the masked voxels: 10 log10(data_range^2 / MSE).

    SynthRAD2023 (``use_population_range``): both images clipped to [-1024, 3000] HU and
    ``data_range`` 4024 HU. Identical images give ``inf``.
    """
    a, b = _pair(pred, gt)
    if clip:
        a, b = clip_hu(a), clip_hu(b)
    m = _mask(mask, a.shape)
    mse = float(np.mean((a[m] - b[m]) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim_map(
    a: ArrayLike, b: ArrayLike, data_range: float, *, win_size: int = SSIM_WINDOW
) -> npt.NDArray[np.float64]:
    """The SSIM of every voxel, as ``skimage.metrics.structural_similarity(a, b, data_range=...,
    full=True)`` returns it with its defaults (Wang et al. 2004 formula).

    Local statistics over a ``win_size``-wide uniform window on every axis (``scipy.ndimage.
    uniform_filter``, borders mirrored as d c b a | a b c d), sample covariances (the window's
    N / (N - 1) correction), C1 = (0.01 R)^2, C2 = (0.03 R)^2 with R = ``data_range``. Computed in
    float64.
    """
    from scipy.ndimage import uniform_filter

    x, y = _pair(a, b)
    if min(x.shape) < win_size:
        raise ValueError(f"SSIM needs at least {win_size} voxels along every axis, got {x.shape}")
    n = win_size**x.ndim
    cov_norm = n / (n - 1)
    ux, uy = uniform_filter(x, win_size), uniform_filter(y, win_size)
    vx = cov_norm * (uniform_filter(x * x, win_size) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, win_size) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, win_size) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return np.asarray(((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2)))


def ssim(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Structural similarity as SynthRAD2023 computes it (``ImageMetrics.ssim`` of
    github.com/SynthRAD2023/metrics, ``functions/image_metrics.py``).

    Both images are clipped to [-1024, 3000] HU; voxels outside ``mask > 0`` are set to -1024
    in both; both are shifted by +1024 (to [0, 4024]); :func:`ssim_map` with data range 4024;
    then the mean of the map over the masked voxels at least ``(win_size - 1) / 2`` = 3 voxels
    from every border (skimage's ``crop(S, 3)``). Without a mask: the mean over that interior.
    Every axis needs at least 7 voxels.
    """
    low, high = HU_RANGE
    a, b = (clip_hu(x) for x in _pair(pred, gt))
    m = _mask(mask, a.shape)
    a, b = np.where(m, a, low) - low, np.where(m, b, low) - low
    pad = (SSIM_WINDOW - 1) // 2
    inner = tuple(slice(pad, n - pad) for n in a.shape)
    values = ssim_map(a, b, high - low)[inner][m[inner]]
    if values.size == 0:
        raise MaskError(f"the mask selects no voxel {pad} or more voxels from the borders")
    return float(values.mean(dtype=np.float64))


def volumetric_mnist_l2(
    pred: ArrayLike, gt: ArrayLike, *, value_range: tuple[float, float] = (-1.0, 1.0)
) -> float:
    """The L2 of the paper's Table 2 for one Volumetric MNIST volume.

    Both volumes are mapped from ``value_range`` (the prepared sets' [-1, 1]) to [0, 1]
    (background 0, stroke 1); the result is the Euclidean norm of their difference over all
    voxels, ``sqrt(sum((p - g)^2))``, for the whole 30 x 84 x 84 volume. Table 2's number is
    its mean over the test volumes. On this scale a wrong voxel costs at most 1, so the value
    is about the square root of the number of wrong voxels: for the builder's volumes,
    returning the input unchanged scores about 145, another digit about 190, the right digit
    with its stroke radius off by a random 0.5 px per slice about 38 (paper: 27 to 73).
    """
    a, b = _pair(pred, gt)
    low, high = value_range
    return float(np.linalg.norm((a - b) / (high - low)))


def cycle_error(x: ArrayLike, x_cycled: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean absolute difference between an input and its cycle ``G(F(x))`` (the input's units),
    over the voxels where ``mask > 0`` (all voxels without a mask)."""
    a, b = _pair(x, x_cycled)
    m = _mask(mask, a.shape)
    return float(np.abs(a[m] - b[m]).mean())


def slice_flicker(volume: ArrayLike, mask: ArrayLike | None = None, *, axis: int = 0) -> float:
    """Slice-to-slice flicker: the mean absolute second difference along the slice axis,
    ``|v[t+1] - 2 v[t] + v[t-1]|``, in the volume's units.

    Anatomy (or a digit's stroke) changes smoothly from slice to slice, so its second
    difference is small even where the first is not; a frame-wise translator that decides each
    slice on its own adds independent errors per slice, which the second difference amplifies
    (i.i.d. noise of variance s^2 per slice gives a second difference of variance 6 s^2, a
    linear ramp gives 0). Averaged over the voxels whose three slices t-1, t, t+1 are all in
    ``mask > 0`` (all voxels without a mask). Compare methods on the same test volumes, or use
    :func:`relative_flicker` against the ground truth. ``axis`` is the slice axis (0 in
    mrct's (D, H, W) arrays).
    """
    v = np.moveaxis(np.asarray(volume, dtype=np.float64), axis, 0)
    if v.shape[0] < 3:
        raise ValueError(f"flicker needs at least 3 slices along axis {axis}, got {v.shape[0]}")
    m = np.moveaxis(_mask(mask, np.asarray(volume).shape), axis, 0)
    inside = m[:-2] & m[1:-1] & m[2:]
    if not inside.any():
        raise MaskError("no voxel of the mask lies in three consecutive slices")
    second = np.abs(v[2:] - 2.0 * v[1:-1] + v[:-2])
    return float(second[inside].mean())


def relative_flicker(
    volume: ArrayLike, reference: ArrayLike, mask: ArrayLike | None = None, *, axis: int = 0
) -> float:
    """``slice_flicker(volume) / slice_flicker(reference)`` over the same voxels: 1 is as smooth
    along the slices as the reference (the ground truth, or the input), above 1 flickers more.
    Unitless, so it compares methods and data sets. ``inf`` when the reference has no flicker."""
    own = slice_flicker(volume, mask, axis=axis)
    ref = slice_flicker(reference, mask, axis=axis)
    if ref == 0:
        return 0.0 if own == 0 else math.inf
    return own / ref
