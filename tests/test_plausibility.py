"""The quality bar's plausibility checks (mrct.metrics): a real pair passes, broken outputs fail.

The phantom is one head in both modalities on a 2 mm grid: an ellipsoid of soft tissue with
a skull shell beneath the scalp, and an air cavity (a sinus) inside. In T1 MR the skull and
the cavity are dark, in CT the skull is bright and the cavity is air, as in real heads.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from mrct import metrics
from mrct.preprocessing.mask import otsu_threshold
from mrct.volume import Modality, Volume

SHAPE = (80, 96, 76)  # (R, A, S) voxels of 2 mm
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = [-80.0, -96.0, -76.0]
SLAB = (50.0, -50.0)  # superior, inferior (mm)


@functools.cache  # the masks are only read; every volume below is built anew from them
def _regions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head, skull shell (beneath a scalp) and sinus masks (the sinus lies inside the skull)."""
    r, a, s = np.indices(SHAPE, dtype=np.float64)
    centre = (np.array(SHAPE) - 1) / 2
    radius = ((r - centre[0]) / 36) ** 2 + ((a - centre[1]) / 44) ** 2 + ((s - centre[2]) / 34) ** 2
    head = radius <= 1.0
    skull = (radius > 0.76**2) & (radius <= 0.88**2)  # 8 mm of bone under 8 mm of scalp
    skull &= s > centre[2] - 26  # open beneath, as the skull base is: the neck joins scalp and brain
    sinus = ((r - centre[0]) / 8) ** 2 + ((a - centre[1] - 22) / 6) ** 2 + ((s - centre[2]) / 8) ** 2 <= 1
    return head, skull, sinus & head & ~skull


def _mr() -> Volume:
    head, skull, sinus = _regions()
    array = np.where(head, 600.0, 0.0)
    array[skull] = 0.0  # cortical bone: no MR signal
    array[sinus] = 0.0  # air
    noise = np.random.default_rng(0).normal(0.0, 15.0, SHAPE)
    return Volume(np.abs(array + noise).astype(np.float32), AFFINE, Modality.MR)  # magnitude noise


def _ct(soft_tissue_hu: float = 40.0, shift_voxels: int = 0, with_bone: bool = True) -> Volume:
    head, skull, sinus = _regions()
    array = np.where(head, soft_tissue_hu, -1024.0)
    if with_bone:
        array[skull] = 1200.0
    array[sinus] = -1000.0
    return Volume(np.roll(array, shift_voxels, axis=1).astype(np.float32), AFFINE, Modality.CT)


def test_the_real_pair_passes_in_both_directions() -> None:
    mr, ct = _mr(), _ct()
    to_ct = metrics.synthetic_ct_checks(mr, ct, *SLAB)
    assert to_ct.head_dice > 0.99
    assert to_ct.air_median_hu == -1024
    assert to_ct.head_median_hu == 40
    assert 0.05 <= to_ct.bone_fraction <= 0.35
    assert to_ct.passes()
    to_mr = metrics.synthetic_mr_checks(ct, mr, *SLAB)
    assert to_mr.head_dice > 0.99
    assert to_mr.background_ratio < 0.05
    assert to_mr.passes()


def test_a_bare_threshold_would_fail_a_real_mr() -> None:
    """Why the checks compare outlines: the dark skull and sinus are head, not background."""
    mr, ct = _mr(), _ct()
    slab = metrics.slab_voxels(ct, *SLAB)
    values = np.asarray(mr.array)
    bare = (values > 0.5 * otsu_threshold(values[slab])) & slab
    assert metrics.dice(bare, metrics.ct_head_mask(ct) & slab) < 0.95


@pytest.mark.parametrize(
    ("ct", "failing"),
    [
        (_ct(shift_voxels=8), "head_dice"),  # 16 mm off the MR's head
        (_ct(soft_tissue_hu=180.0), "head_median_hu"),
        (_ct(soft_tissue_hu=-120.0), "head_median_hu"),
        (_ct(with_bone=False), "bone_fraction"),
    ],
)
def test_a_wrong_synthetic_ct_fails(ct: Volume, failing: str) -> None:
    checks = metrics.synthetic_ct_checks(_mr(), ct, *SLAB)
    assert not checks.passes()
    good = metrics.synthetic_ct_checks(_mr(), _ct(), *SLAB).to_dict()
    changed = {k for k, v in checks.to_dict().items() if k != "passes" and v != good[k]}
    assert failing in changed


def test_a_synthetic_mr_off_the_head_or_with_a_bright_background_fails() -> None:
    ct, mr = _ct(), _mr()
    shifted = Volume(np.roll(mr.array, 8, axis=1), AFFINE, Modality.MR)
    assert metrics.synthetic_mr_checks(ct, shifted, *SLAB).head_dice < 0.95
    bright = Volume(np.maximum(mr.array, 100.0), AFFINE, Modality.MR)
    assert not metrics.synthetic_mr_checks(ct, bright, *SLAB).passes()


@pytest.mark.realdata
def test_a_real_mr_passes_the_synthetic_mr_outline_check_on_itself(shared_data: Path) -> None:
    """A real T1 MR as its own "synthetic MR": the outline keeps its dark bone and sinuses."""
    from mrct.io import read_volume
    from mrct.preprocessing.grid import world_extent
    from mrct.preprocessing.mask import head_mask

    mr = read_volume(shared_data / "mr" / "ixi_t1_2mm" / "IXI012-HH-1211_T1.nii.gz")
    values = np.asarray(mr.array, dtype=np.float32)
    top = float(world_extent(mr.shape, mr.affine)[1][2])
    slab = metrics.slab_voxels(mr, top - 60.0, top - 170.0)  # about brow to jaw
    reference = metrics.mr_head_mask(mr) & slab
    threshold = 0.5 * otsu_threshold(values[slab])
    assert metrics.dice(head_mask(values, threshold) & slab, reference) > 0.98
    assert metrics.dice((values > threshold) & slab, reference) < 0.95
