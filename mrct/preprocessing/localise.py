"""Automatic brow-to-jaw localisation by registration onto an annotated reference head.

The reference (``reference/head_t1_template.nii.gz``) is a mean T1 head with
three annotated points: the left and right supraorbital margins and the
menton. A scan's working image (4 mm, :mod:`mrct.preprocessing.mask`) is
registered to it with Mattes mutual information, which needs no intensity
correspondence and so serves MR and CT alike: a similarity transform from a few
starting heights, an affine refinement, then a local similarity on the orbits.
The points mapped into the scan give the slab: ``superior_mm`` is the mean S of
the two supraorbital margins, ``inferior_mm`` the S of the menton blended with a
slab-height prior (``JAW_REGISTRATION_WEIGHT``; RAS mm, see ../shared/LANDMARKS.md).

The starting position aligns the top of the head (the vertex) and the head's
centre below it; the other starts shift it by ``START_SHIFTS_MM`` along S, for
scans whose field of view cuts the vertex. The confidence says how well the
starts agree (1 when the nearly-as-good starts give the same levels, 0 at 20 mm
apart); levels outside the scan are checked separately (:func:`check_slab_in_scan`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

from mrct.errors import CropError
from mrct.jsontext import parse_json
from mrct.preprocessing.chin import chin_edge_s
from mrct.preprocessing.crop import OVERRIDES_HINT, SlabBounds
from mrct.preprocessing.grid import world_extent
from mrct.preprocessing.mask import (
    MIN_AIR_FRACTION,
    MIN_HEAD_ML,
    MIN_INTERIOR_SPREAD,
    MIN_NEIGHBOUR_CORRELATION,
    WorkingImage,
    working_image,
)
from mrct.preprocessing.registration import (
    covered_fraction,
    map_point,
    one_itk_thread,
    register,
    sitk_image,
    uint8_image,
)
from mrct.preprocessing.slab_checks import Localisation
from mrct.volume import Modality

log = logging.getLogger(__name__)

REFERENCE_PACKAGE = "mrct.preprocessing.reference"
REFERENCE_NAME = "head_t1_template"
REFERENCE_MEMORY = 64 << 20  # bytes; the template's voxels take 5 MiB as float32
START_SHIFTS_MM = (0.0, -30.0, 30.0)
BROW_KEYS = ("right_supraorbital", "left_supraorbital")
# Outside this, the "head" is not an adult head (the slab is 100-130 mm on the annotated heads).
MIN_PLAUSIBLE_HEIGHT_MM, MAX_PLAUSIBLE_HEIGHT_MM = 70.0, 180.0


@dataclass(frozen=True)
class Reference:
    """The annotated reference head on its 4 mm working grid."""

    work: WorkingImage
    landmarks_ras: dict[str, tuple[float, float, float]]
    description: str
    mean_slab_height_mm: float = 117.0
    # How far the bony menton lies above the chin's soft-tissue edge (:func:`chin_edge_s`), mm.
    menton_above_chin_edge_mm: float = 6.0


def load_reference() -> Reference:
    """Read the bundled reference head and its landmarks (package data, never downloaded)."""
    from mrct.io import read_volume
    from mrct.io.limits import own_data

    folder = resources.files(REFERENCE_PACKAGE)
    # mrct's own 5 MiB head: the user's memory limit (MRCT_MAX_MEMORY=1K) is for their scans.
    with resources.as_file(folder / f"{REFERENCE_NAME}.nii.gz") as path, own_data(REFERENCE_MEMORY):
        work = working_image(read_volume(path, modality=Modality.MR), Modality.MR)
    meta = parse_json((folder / f"{REFERENCE_NAME}.json").read_text(encoding="utf-8"))
    landmarks = {k: (float(v[0]), float(v[1]), float(v[2])) for k, v in meta["landmarks_ras_mm"].items()}
    return Reference(
        work,
        landmarks,
        str(meta.get("description", "")),
        float(meta.get("mean_slab_height_mm", 117.0)),
        float(meta.get("menton_above_chin_edge_mm", 6.0)),
    )


def anchor_lps(work: WorkingImage) -> npt.NDArray[np.float64]:
    """A point 50 mm below the vertex, at the centre of the head's upper part (LPS mm)."""
    pts = work.mask_points()
    top = float(np.percentile(pts[:, 2], 99.9))
    upper = pts[(pts[:, 2] < top - 20) & (pts[:, 2] > top - 80)]
    centre = upper.mean(axis=0) if len(upper) else pts.mean(axis=0)
    return np.array([-centre[0], -centre[1], top - 50.0])


def ndi_dilate(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    from scipy import ndimage as ndi

    return np.asarray(ndi.binary_dilation(mask, iterations=2), dtype=bool)


def head_beyond_fov(work: WorkingImage) -> npt.NDArray[np.bool_]:
    """The head mask, continued beyond the scan's field of view as it is at the nearest voxel in
    it: a head that the field of view cuts goes on past the cut, where the template's head lies
    too, whereas a brain cropped from a skull-stripped scan is surrounded by the air left around it
    (or ends in its own outline). Counting only the template inside the field of view let such a
    crop through, and dropping the template beyond it would do the same."""
    from scipy import ndimage as ndi

    in_fov = work.in_fov()
    if in_fov.all() or not in_fov.any():
        return work.mask
    nearest = ndi.distance_transform_edt(~in_fov, return_distances=False, return_indices=True)
    return np.asarray(work.mask[tuple(nearest)], dtype=bool)


def _box(work: WorkingImage, centre: npt.NDArray[np.float64], extent) -> npt.NDArray[np.bool_]:  # type: ignore[no-untyped-def]
    """Voxels of ``work`` within ``extent`` (RAS mm ranges) around ``centre``."""
    idx = np.indices(work.array.shape).reshape(3, -1).T.astype(np.float64)
    d = idx @ work.affine[:3, :3].T + work.affine[:3, 3] - centre
    inside = np.ones(len(d), dtype=bool)
    for axis, (lo, hi) in enumerate(extent):
        inside &= (d[:, axis] > lo) & (d[:, axis] < hi)
    return inside.reshape(work.array.shape)


# The orbit region in the reference (RAS mm, relative to the mean of the two supraorbital
# points) used to refine the brow locally once the whole head is aligned.
BROW_REGION_MM = ((-60.0, 60.0), (-40.0, 30.0), (-25.0, 30.0))
# The jaw from registration alone is blended with the brow minus the mean slab height
# (a population prior): the chin is often cut by the field of view or blurred by dental
# artefacts, and the blend halves the worst errors on the annotated heads (see the issue notes).
JAW_REGISTRATION_WEIGHT = 0.75


class Localiser:
    """Finds the brow-to-jaw slab in a scan. Holds the reference so a batch loads it once."""

    def __init__(self, reference: Reference | None = None) -> None:
        self.reference = reference or load_reference()
        ref = self.reference.work
        self._fixed = sitk_image(ref.array, ref.affine)
        self._fixed_mask = uint8_image(ndi_dilate(ref.mask), ref.affine)
        self._template_head = uint8_image(ref.mask, ref.affine)
        centre = np.mean([self.reference.landmarks_ras[k] for k in BROW_KEYS], axis=0)
        self._brow_mask = uint8_image(_box(ref, centre, BROW_REGION_MM) & ndi_dilate(ref.mask), ref.affine)
        self._brow_centre = centre

    def locate(self, work: WorkingImage) -> Localisation:
        if float(np.ptp(work.array)) == 0.0:
            value = float(work.array.flat[0])
            raise CropError(f"the scan holds one value everywhere ({value:g}); no head to find")
        if work.mask_ml < MIN_HEAD_ML:
            raise CropError(f"no head found in the scan (head mask {work.mask_ml:.0f} mL); {OVERRIDES_HINT}")
        if (spread := work.interior_spread()) < MIN_INTERIOR_SPREAD:
            raise CropError(
                f"the object in the scan is nearly uniform inside (intensity spread {spread:.2f} of its "
                f"contrast; heads are above 0.4): a phantom, not a head? {OVERRIDES_HINT}"
            )
        if (alike := work.neighbour_correlation()) < MIN_NEIGHBOUR_CORRELATION:
            raise CropError(
                f"the scan looks like noise (neighbouring voxels correlate {alike:.2f}; heads are "
                f"above 0.7): no head to find. {OVERRIDES_HINT}"
            )
        if work.modality is Modality.MR and (air := work.air_fraction()) < MIN_AIR_FRACTION:
            # Without air the MR threshold, measured from the floor, cuts the object anywhere.
            raise CropError(
                f"the object fills the scan with no air around it ({100 * air:.1f} % of the field of "
                f"view is dark; head MRs are half air or more): not a head? {OVERRIDES_HINT}"
            )
        with one_itk_thread():
            try:
                return self._register_reference(work)
            except RuntimeError as err:
                # ITK gives up when the template cannot be laid on the scan at all: noise, a few
                # slices of the vertex, an object that is no head. Say so, not ITK's internals.
                raise CropError(
                    f"the head template could not be registered to the scan ({_itk_reason(err)}); is "
                    f"this a head scan that covers brow to jaw? {OVERRIDES_HINT}"
                ) from None

    def _register_reference(self, work: WorkingImage) -> Localisation:
        import SimpleITK as sitk

        fixed, fixed_mask = self._fixed, self._fixed_mask
        moving = sitk_image(work.array, work.affine)
        ref_anchor, scan_anchor = anchor_lps(self.reference.work), anchor_lps(work)
        results = []
        for shift in START_SHIFTS_MM:
            start = sitk.Similarity3DTransform()
            start.SetCenter(ref_anchor.tolist())
            start.SetTranslation((scan_anchor - ref_anchor + np.array([0.0, 0.0, shift])).tolist())
            results.append(register(fixed, fixed_mask, moving, start, shrink=(2,), iterations=60))
        scored = sorted(results, key=lambda t: t.metric)
        landmarks_by_start = [self._map_landmarks(t.transform) for t in scored]
        similarity = register(fixed, fixed_mask, moving, scored[0].transform, shrink=(1,), iterations=80)
        final = register(
            fixed, fixed_mask, moving, similarity.transform, shrink=(1,), iterations=60, affine=True
        )
        if final.metric > similarity.metric:
            # The affine refinement can step away into a worse optimum (the Philips MPRAGE: its
            # brow moved 40 mm back into the brain); a worse fit than its start is discarded.
            final = similarity
        landmarks = self._map_landmarks(final.transform)
        # Local refinement of the brow: a similarity transform on the orbits, composed after the affine.
        brow = sitk.Similarity3DTransform()
        brow.SetCenter((-self._brow_centre[0], -self._brow_centre[1], float(self._brow_centre[2])))
        register(fixed, self._brow_mask, moving, brow, shrink=(1,), iterations=60, outer=final.transform)
        for key in BROW_KEYS:
            landmarks[key] = map_point(self.reference.landmarks_ras[key], brow, final.transform)
        spread = _spread(landmarks_by_start, [t.metric for t in scored])
        # A brain without scalp and face fits the template's brain well (the fit alone passes it).
        covered = covered_fraction(self._template_head, head_beyond_fov(work), work.affine, final.transform)
        chin = chin_edge_s(work, landmarks["menton"])
        return self._localisation(work, landmarks, final.metric, spread, chin, covered)

    def _map_landmarks(self, transform) -> dict[str, tuple[float, float, float]]:  # type: ignore[no-untyped-def]
        return {name: map_point(p, transform) for name, p in self.reference.landmarks_ras.items()}

    def _localisation(
        self,
        work: WorkingImage,
        landmarks: dict[str, tuple[float, float, float]],
        metric: float,
        spread: float,
        chin_edge: float | None = None,
        template_coverage: float = 1.0,
    ) -> Localisation:
        superior = float(np.mean([landmarks[k][2] for k in BROW_KEYS]))
        jaw_registered = landmarks["menton"][2]
        prior_height = self.reference.mean_slab_height_mm
        if chin_edge is not None:  # seen in the scan: the edge, guided by the registration
            inferior = chin_edge + self.reference.menton_above_chin_edge_mm
        else:  # not seen (cut by the field of view, or no clear outline): the registration's
            inferior = JAW_REGISTRATION_WEIGHT * jaw_registered + (1 - JAW_REGISTRATION_WEIGHT) * (
                superior - prior_height
            )
        lo, hi = world_extent(work.array.shape, work.affine)
        scan_s = work.scan_s_range_mm or (float(lo[2]), float(hi[2]))
        confidence = float(np.clip(1.0 - spread / 20.0, 0.0, 1.0))
        height = superior - inferior
        if not MIN_PLAUSIBLE_HEIGHT_MM <= height <= MAX_PLAUSIBLE_HEIGHT_MM:
            raise CropError(
                f"localisation gave a {height:.0f} mm brow-to-jaw slab, which no adult head has; "
                f"is this a head scan? {OVERRIDES_HINT}"
            )
        slab = SlabBounds(superior, inferior, "auto", confidence)
        details = {
            "menton_registered_s_mm": round(jaw_registered, 1),
            "chin_edge_s_mm": None if chin_edge is None else round(chin_edge, 1),
            "jaw_from": "registration" if chin_edge is None else "chin_edge",
            "menton_fov_margin_mm": _finite_mm(work.fov_margin_mm(np.array(landmarks["menton"]))[0]),
            "template_coverage": round(template_coverage, 3),
        }
        return Localisation(slab, landmarks, metric, spread, scan_s, details)


def _finite_mm(value: float) -> float | None:
    """``value`` rounded for the record, None when unknown (JSON has no infinity)."""
    return round(float(value), 1) if np.isfinite(value) else None


def _itk_reason(err: RuntimeError) -> str:
    """The gist of an ITK exception: the first sentence after 'ITK ERROR: Object(0x...):', on
    one line and at most about 100 characters, cut at a word boundary."""
    text = " ".join(str(err).split())
    _, sep, rest = text.partition("ITK ERROR:")
    if sep:
        text = rest.split("):", 1)[-1] if "):" in rest else rest
    text = text.strip().split(". ", 1)[0].rstrip(".")
    if len(text) > 100:
        text = text[:100].rsplit(" ", 1)[0] + "..."
    return text


def _spread(landmarks_by_start: list[dict[str, tuple[float, float, float]]], metrics: list[float]) -> float:
    """Largest S disagreement (mm) between the best start and the starts whose metric is nearly as good."""
    best = landmarks_by_start[0]
    spread = 0.0
    for lm, metric in zip(landmarks_by_start[1:], metrics[1:], strict=True):
        if metric <= metrics[0] * 0.97:  # metrics are negative: within 3% of the best
            spread = max(spread, max(abs(lm[k][2] - best[k][2]) for k in best))
    return spread


def locate_volume(volume, localiser: Localiser | None = None) -> Localisation:  # type: ignore[no-untyped-def]
    """Localise the slab in a :class:`~mrct.volume.Volume` (modality from the header or intensities).

    The volume is first reoriented to RAS, as the preprocessing chain does before it localises:
    the working images then agree to rounding, and so do ``mrct locate`` and ``mrct translate``
    (where the jaw lies far outside the field of view, the extrapolated level is sensitive even
    to rounding).
    """
    from mrct.io.orientation import closest_canonical
    from mrct.volume import guess_modality

    modality = volume.modality or guess_modality(volume) or Modality.MR
    array, affine = closest_canonical(volume.array, volume.affine)
    work = working_image(volume.replace(array=array, affine=affine), modality)
    return (localiser or Localiser()).locate(work)
