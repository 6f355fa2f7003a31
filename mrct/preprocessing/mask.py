"""The head (body) mask, computed on a coarse RAS-aligned working grid.

The mask only has to separate the head from air, couches and coil padding, so
4 mm is enough, and at that size it takes a fraction of a second. CT uses a
fixed HU threshold (air is calibrated); MR uses half of Otsu's threshold, low
enough to keep dark skull and skin but above the noise floor, both measured from the
scan's floor (its lowest value), so that a background offset or z-scored intensities
move the threshold with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from mrct.errors import GeometryError
from mrct.io.limits import check_voxels
from mrct.preprocessing.grid import axis_aligned_grid, resample, world_extent
from mrct.volume import Modality, Volume

WORK_STEP_MM = 4.0
# Wider than any scan (a whole body is under 2 m long; a head's field of view under 0.4 m): a
# span beyond it is a header whose voxel size or spatial unit is wrong (metres for mm), and its
# working grid would need petabytes.
MAX_SPAN_MM = 2000.0
CT_BODY_HU = -500.0
# A head holds tissues of many intensities (fat, brain, CSF, bone, sinuses); a phantom is a
# uniform fill. ``interior_spread`` was 0.40-1.4 on the 53 real heads in ../shared/data (the
# lowest a tilted GE CT cut at the jaw) and 0.03 on a noisy uniform cylinder and sphere.
MIN_INTERIOR_SPREAD = 0.1
# An adult head is 3-5 L; a tenth of that is not a head (a slice or two, a finger, a phantom).
MIN_HEAD_ML = 300.0
# On the model grid the mask is redrawn at the grid's resolution (:func:`mask_on_grid`) within
# this reach of the coarse one: the 4 mm steps and the opening cut up to 16 mm of real head (the
# thin bright MR scalp outside the dark skull, CT ears), set to background for the model.
GRID_REACH_MM = 12.0
# Neighbouring voxels of a head correlate (``neighbour_correlation`` 0.75 and up on the 54
# real heads in ../shared/data); those of noise hardly do (0.12 on uniform random voxels).
MIN_NEIGHBOUR_CORRELATION = 0.4
# A head MR's field of view is half air or more (a head fills about half of its bounding box):
# ``air_fraction`` was 0.50-0.68 on the 52 real head MRs in ../shared/data, and 0.009 and 0.03
# on a noisy intensity ramp and on smoothed noise, objects that fill their field of view.
MIN_AIR_FRACTION = 0.1


@dataclass(frozen=True, eq=False)
class WorkingImage:
    """A smoothed copy of a scan on a RAS-aligned grid of ``WORK_STEP_MM`` voxels, with its head mask.

    ``array`` and ``mask`` are indexed ``[x, y, z]`` (R, A, S); ``affine`` maps them to RAS mm.
    """

    array: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]
    affine: npt.NDArray[np.float64]
    modality: Modality
    threshold: float
    # The scan's own grid (RAS affine, shape). Where the working grid reaches beyond it (an
    # oblique scan's corners, a chin cut along a tilted face), it holds background never seen.
    scan_grid: tuple[npt.NDArray[np.float64], tuple[int, int, int]] | None = None
    # The scan's air level (:func:`scan_floor`): what fills the grid beyond the scan.
    floor: float = 0.0

    @property
    def scan_s_range_mm(self) -> tuple[float, float] | None:
        """The scan's own extent along S (mm): the working grid is rounded up to whole voxels, so
        its top could lie 4 mm above the scan's and hide that much of a slab cut by the field of view."""
        if self.scan_grid is None:
            return None
        lo, hi = world_extent(self.scan_grid[1], self.scan_grid[0])
        return float(lo[2]), float(hi[2])

    def fov_margin_mm(self, ras: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """How far each point (N x 3, RAS mm) lies inside the scan's field of view: the distance
        to its nearest face (voxel edges included), negative outside; inf when the grid is unknown."""
        points = np.atleast_2d(np.asarray(ras, dtype=np.float64))
        if self.scan_grid is None:
            return np.full(len(points), np.inf)
        affine, shape = self.scan_grid
        inverse = np.linalg.inv(affine)
        ijk = points @ inverse[:3, :3].T + inverse[:3, 3]
        to_faces = np.minimum(ijk + 0.5, np.asarray(shape) - 0.5 - ijk)  # voxels, per axis
        return np.asarray(np.min(to_faces * np.linalg.norm(affine[:3, :3], axis=0), axis=1))

    def in_fov(self) -> npt.NDArray[np.bool_]:
        """The voxels of the working grid that lie inside the scan's own field of view."""
        ijk = np.indices(self.array.shape).reshape(3, -1).T.astype(np.float64)
        inside = self.fov_margin_mm(ijk @ self.affine[:3, :3].T + self.affine[:3, 3]) > 0
        return np.asarray(inside.reshape(self.array.shape))

    def interior_spread(self) -> float:
        """How varied the object is inside: the 10-90 percentile range of its values (one voxel
        in from its edge), over its contrast with the background (the medians inside and out)."""
        inside = self.array[ndi.binary_erosion(self.mask, iterations=1)]
        outside = self.array[~self.mask]
        if inside.size == 0 or outside.size == 0:
            return float("inf")  # nothing to judge: other checks say what is wrong
        contrast = float(np.median(inside) - np.median(outside))
        low, high = np.percentile(inside, [10, 90])
        return float(high - low) / contrast if contrast > 0 else float("inf")

    def neighbour_correlation(self) -> float:
        """How alike neighbouring voxels inside the mask are: the correlation of each voxel with
        the next along each axis, the lowest of the three. Anatomy is smooth at the working
        step (0.75-0.84 on real heads); noise is not (about 0.1 after the anti-aliased resample)."""
        values = []
        for axis in range(3):
            head = [slice(None)] * 3
            tail = [slice(None)] * 3
            head[axis], tail[axis] = slice(0, -1), slice(1, None)
            both = self.mask[tuple(head)] & self.mask[tuple(tail)]
            x, y = self.array[tuple(head)][both], self.array[tuple(tail)][both]
            if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
                return 1.0  # nothing to judge: other checks say what is wrong
            values.append(float(np.corrcoef(x.astype(np.float64), y.astype(np.float64))[0, 1]))
        return min(values)

    def air_fraction(self) -> float:
        """The share of the scan's own field of view that is about as dark as its floor: below a
        fifth of the way from :func:`mr_floor` to Otsu's threshold (``threshold`` is half way)."""
        values = self.array[self.in_fov()]
        if values.size == 0:
            return 1.0  # nothing to judge: other checks say what is wrong
        floor = mr_floor(values)
        return float(np.mean(values < floor + 0.4 * (self.threshold - floor)))

    @property
    def mask_ml(self) -> float:
        return float(self.mask.sum()) * float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def mask_points(self) -> npt.NDArray[np.float64]:
        """RAS mm of the mask's voxel centres, shape (N, 3)."""
        idx = np.argwhere(self.mask).astype(np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]


def working_image(volume: Volume, modality: Modality, step_mm: float = WORK_STEP_MM) -> WorkingImage:
    """Resample ``volume`` (anti-aliased) onto a coarse RAS grid and compute its head mask."""
    lo, hi = world_extent(volume.shape, volume.affine)
    if float(np.max(hi - lo)) > MAX_SPAN_MM:
        span = " x ".join(f"{v:.0f}" for v in hi - lo)
        sizes = " x ".join(f"{v:.4g}" for v in np.linalg.norm(volume.affine[:3, :3], axis=0))
        raise GeometryError(
            f"the scan spans {span} mm ({sizes} mm voxels), far more than a head: "
            "is the header's voxel size or spatial unit wrong?"
        )
    affine, shape = axis_aligned_grid(volume.shape, volume.affine, step_mm)
    check_voxels(shape, 4, volume.source.path or "the scan")  # float32 working grid
    floor = scan_floor(volume.array, modality)
    array = resample(volume.array, volume.affine, affine, shape, fill=floor, anti_alias=True)
    if modality is Modality.MR:  # nothing in an MR is darker than its air (dropouts, padding)
        array = np.clip(array, np.float32(floor), np.float32(mr_ceiling(array, floor)))  # nor hot
    threshold = CT_BODY_HU if modality is Modality.CT else mr_body_threshold(array)
    scan_grid = (np.array(volume.affine, dtype=np.float64), volume.shape)
    mask = head_mask(array, threshold)
    return WorkingImage(array, mask, affine, modality, threshold, scan_grid, floor)


def scan_floor(values: npt.NDArray, modality: Modality) -> float:
    """The scan's air level, which fills the working and model grids beyond the scan: for CT its
    lowest value (air is calibrated; a CT's padding, -2000 or -3024, lies below it anyway), for
    MR :func:`mr_floor`. The minimum was used for both: one -2000 voxel filled a fifth of a
    Philips MR's working grid with -2000, and the scan was refused as having no air."""
    v = np.asarray(values)
    if v.size == 0:
        return 0.0
    return float(v.min()) if modality is Modality.CT else mr_floor(v)


def otsu_threshold(values: npt.NDArray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (between-class variance maximised over a histogram)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(np.float64)
    total = weight[-1]
    mean = np.cumsum(hist * centres)
    w0, w1 = weight[:-1], total - weight[:-1]
    valid = (w0 > 0) & (w1 > 0)
    m0 = np.where(valid, mean[:-1] / np.maximum(w0, 1), 0)
    m1 = np.where(valid, (mean[-1] - mean[:-1]) / np.maximum(w1, 1), 0)
    between = np.where(valid, w0 * w1 * (m0 - m1) ** 2, -1)
    return float(edges[1:][int(np.argmax(between))])


MR_SPAN_LIMIT = 4.0


def mr_floor(values: npt.NDArray) -> float:
    """The level of an MR's air: its 1st percentile (0 on an MR whose air is 0, as most are).
    Not the minimum: a few voxels far below air (a -32768 dropout, a cluster of -3000) made the
    threshold take all the air in, and the scan was refused as having none."""
    return float(np.percentile(values, 1)) if np.size(values) else 0.0


def mr_body_threshold(values: npt.NDArray) -> float:
    """Half way from the floor (:func:`mr_floor`) to Otsu's threshold: half of Otsu's threshold
    on an MR whose air is 0, and the same place on one whose air is offset (a scanner or
    converter adding a constant, z-scored intensities). Half of Otsu's threshold on its own put
    the threshold inside the noise of air at +500, and into the scalp of a z-scored scan."""
    v = np.asarray(values)
    if v.size == 0:
        return 0.0
    floor = mr_floor(v)
    return floor + 0.5 * (otsu_threshold(np.clip(v, floor, mr_ceiling(v, floor))) - floor)


def mr_ceiling(values: npt.NDArray, floor: float) -> float:
    """The brightest an MR's tissue plausibly is: :data:`MR_SPAN_LIMIT` times the 99.9th
    percentile's height above the floor. The 52 real head MRs reach 1.3-2.8 times (nothing of
    them is clipped), while one hot voxel at 65535 over tissue at 350 squeezed the head into the
    lowest bins of Otsu's and the registration's histograms: the scan was refused as a poor fit,
    or its mask moved the model grid (60 HU on average in the head)."""
    return max(floor, floor + MR_SPAN_LIMIT * (float(np.percentile(values, 99.9)) - floor))


def head_mask(array: npt.NDArray, threshold: float, axial_axis: int = 2) -> npt.NDArray[np.bool_]:
    """The largest connected body above ``threshold``, closed and with its holes filled.

    An opening first detaches thin objects touching the head (couch tops,
    head-rest foam, a thin neck-support rim) so that they are not kept. Holes are then filled
    in 3D and slice by slice across ``axial_axis``, the voxel axis closest to S (2 on a RAS
    grid; see :func:`axial_axis` for a scan stored otherwise).
    """
    mask = ndi.binary_opening(np.asarray(array) > threshold, iterations=1)
    labels, n = ndi.label(mask)
    if n == 0:
        return np.zeros(array.shape, dtype=bool)
    sizes = ndi.sum_labels(mask, labels, index=np.arange(1, n + 1))
    mask = labels == (1 + int(np.argmax(sizes)))
    mask = ndi.binary_closing(mask, iterations=2, border_value=0) | mask
    mask = ndi.binary_fill_holes(mask)
    # Axial hole filling closes the airways and sinuses that open to the outside in 3D.
    for z in range(mask.shape[axial_axis]):
        plane = tuple(z if axis == axial_axis else slice(None) for axis in range(3))
        mask[plane] = ndi.binary_fill_holes(mask[plane])
    return np.asarray(mask, dtype=bool)


def axial_axis(affine: npt.NDArray[np.float64]) -> int:
    """The voxel axis that runs closest to S (RAS): slices across it are axial. IXI files,
    stored PSR, have it last but one; a sagittal DICOM series has it first or second."""
    cols = np.asarray(affine, dtype=np.float64)[:3, :3]
    return int(np.argmax(np.abs(cols[2]) / np.linalg.norm(cols, axis=0)))


def mask_on_grid(
    image: npt.NDArray,
    coarse: npt.NDArray[np.bool_],
    threshold: float,
    spacing: npt.ArrayLike,
    modality: Modality,
) -> npt.NDArray[np.bool_]:
    """The head mask at the model grid's resolution: ``coarse`` (the working mask resampled onto
    the grid) joined by the voxels of ``image`` above ``threshold`` within ``GRID_REACH_MM`` of it
    that touch it, holes filled in 3D and in each axial slice. ``image`` is (D, H, W), D along S,
    in scanner units; ``spacing`` its voxel size in mm.

    The opening is in-plane (slices are 3-5 mm apart): one voxel for MR, whose scalp is a rim a
    few mm thick and whose padding is dark; four for CT, whose scalp and skull are one thick body,
    so that a head rest or holder up to about 8 mm thick touching the head is detached, as the
    coarse mask's opening detaches it (with two, a 7 mm plate at the occiput joined the head).
    """
    if not coarse.any():
        return coarse
    near = ndi.distance_transform_edt(~coarse, sampling=spacing) <= GRID_REACH_MM
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    iterations = 4 if modality is Modality.CT else 1
    body = ndi.binary_opening(np.asarray(image) > threshold, structure=in_plane, iterations=iterations)
    labels, _ = ndi.label((body & near) | coarse)
    # Every body holding part of the coarse mask (resampled, it may fall apart: a tile's edge
    # can cut a chin off the neck), so that nothing the coarse mask held is lost.
    mask = np.isin(labels, np.unique(labels[coarse]))
    mask = ndi.binary_fill_holes(mask)
    for z in range(mask.shape[0]):
        mask[z] = ndi.binary_fill_holes(mask[z])
    return np.asarray(mask, dtype=bool)
