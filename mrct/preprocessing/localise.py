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
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

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
from mrct.preprocessing.registration import map_point, one_itk_thread, register, sitk_image, uint8_image
from mrct.volume import Modality

log = logging.getLogger(__name__)

REFERENCE_PACKAGE = "mrct.preprocessing.reference"
REFERENCE_NAME = "head_t1_template"
START_SHIFTS_MM = (0.0, -30.0, 30.0)
# How much of the slab may lie outside the scan's field of view (mm along S, both ends
# together). Many head MR scans end at or just above the menton; up to this much is used,
# the missing part filled with background and recorded as ``outside_fov_mm``. It is a
# sixth of a typical 118 mm slab (about 5 of its 30 slices); beyond it a CropError names
# the overrides.
MAX_OUTSIDE_FOV_MM = 20.0
MIN_CONFIDENCE = 0.3
# How well the head template fits at best (Mattes MI, negative: lower is better). Measured on
# 2026-12-07: the 50 IXI heads -1.0 to -1.6, the DICOM MRs -0.69 and -0.76, the CTs -0.58 (UNC;
# -0.55 with a head holder and table added) and -0.56 (the GE CT, which ends above the jaw).
# Objects that are no head but have contrast inside and pass the checks above: a knee CT -0.35,
# a torso block -0.15, smoothed noise -0.04 (tests' ramp phantom: -0.26, and -0.46 since the MR
# threshold is measured from the floor; the air check now refuses it first). The limit lies
# between the two, with a margin to the CTs, the least sure (two real ones).
MAX_FIT_METRIC = -0.40
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


@dataclass(frozen=True)
class Localisation:
    """Where the slab is, plus the evidence: landmarks in the scan (RAS mm) and registration figures."""

    slab: SlabBounds
    landmarks_ras: dict[str, tuple[float, float, float]]
    metric: float
    start_spread_mm: float
    scan_s_range_mm: tuple[float, float]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def above_fov_mm(self) -> float:
        """How far the brow lies above the top of the scan (mm; 0 when inside)."""
        return max(0.0, self.slab.superior_mm - self.scan_s_range_mm[1])

    @property
    def below_fov_mm(self) -> float:
        """How far the jaw lies below the bottom of the scan (mm; 0 when inside)."""
        return max(0.0, self.scan_s_range_mm[0] - self.slab.inferior_mm)

    @property
    def outside_fov_mm(self) -> float:
        """The length of the slab outside the scan (mm along S, both ends together)."""
        return self.above_fov_mm + self.below_fov_mm

    @property
    def jaw_guessed_near_edge(self) -> bool:
        """No chin outline was seen and the registration's jaw lies near (or below) the scan's
        bottom: the chin may be cut by the field of view by more than ``outside_fov_mm`` says."""
        near_bottom = self.slab.inferior_mm - self.scan_s_range_mm[0] < JAW_GUESS_MARGIN_MM
        # An oblique scan's face can cut the chin far above the scan's lowest corner.
        margin = self.details.get("menton_fov_margin_mm")  # None: unknown
        near_face = margin is not None and margin < JAW_GUESS_MARGIN_MM
        return self.details.get("jaw_from") == "registration" and (near_bottom or near_face)

    def to_dict(self) -> dict[str, Any]:
        return {
            "superior_mm": round(self.slab.superior_mm, 1),
            "inferior_mm": round(self.slab.inferior_mm, 1),
            "confidence": None if self.slab.confidence is None else round(self.slab.confidence, 2),
            "outside_fov_mm": round(self.outside_fov_mm, 1),
            "landmarks_ras_mm": {k: [round(c, 1) for c in v] for k, v in self.landmarks_ras.items()},
            "metric": round(self.metric, 4),
            "start_spread_mm": round(self.start_spread_mm, 1),
            "scan_s_range_mm": [round(v, 1) for v in self.scan_s_range_mm],
            "jaw_guessed_near_edge": self.jaw_guessed_near_edge,
            **self.details,
        }


class SlabRefusedError(CropError):
    """:func:`check_slab_in_scan` refused a slab; ``localisation`` holds what was found (for QC)."""

    def __init__(self, message: str, localisation: Localisation, path: str | None = None) -> None:
        super().__init__(message, path)
        self.localisation = localisation


def load_reference() -> Reference:
    """Read the bundled reference head and its landmarks (package data, never downloaded)."""
    from mrct.io import read_volume

    folder = resources.files(REFERENCE_PACKAGE)
    with resources.as_file(folder / f"{REFERENCE_NAME}.nii.gz") as path:
        volume = read_volume(path, modality=Modality.MR)
    meta = parse_json((folder / f"{REFERENCE_NAME}.json").read_text(encoding="utf-8"))
    landmarks = {k: (float(v[0]), float(v[1]), float(v[2])) for k, v in meta["landmarks_ras_mm"].items()}
    return Reference(
        working_image(volume, Modality.MR),
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
# That blend is 5-12 mm off on some heads whose chin the scan cuts (a hunt, 14 annotated heads cut
# 11 and 26 mm above the menton): within this of the scan's bottom it may hide a cut chin, so it is said.
JAW_GUESS_MARGIN_MM = 12.0
JAW_GUESSED = (
    "no chin outline was found near the edge of the scan, so the jaw level comes from the head "
    "template alone (5-12 mm off on some heads) and the chin may be cut by more than reported"
)


class Localiser:
    """Finds the brow-to-jaw slab in a scan. Holds the reference so a batch loads it once."""

    def __init__(self, reference: Reference | None = None) -> None:
        self.reference = reference or load_reference()
        ref = self.reference.work
        self._fixed = sitk_image(ref.array, ref.affine)
        self._fixed_mask = uint8_image(ndi_dilate(ref.mask), ref.affine)
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
        return self._localisation(
            work, landmarks, final.metric, spread, chin_edge_s(work, landmarks["menton"])
        )

    def _map_landmarks(self, transform) -> dict[str, tuple[float, float, float]]:  # type: ignore[no-untyped-def]
        return {name: map_point(p, transform) for name, p in self.reference.landmarks_ras.items()}

    def _localisation(
        self,
        work: WorkingImage,
        landmarks: dict[str, tuple[float, float, float]],
        metric: float,
        spread: float,
        chin_edge: float | None = None,
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


def check_slab_in_scan(loc: Localisation, path: str | None = None) -> None:
    """Refuse a slab that lies too far outside the scan, or a doubtful result.

    Up to :data:`MAX_OUTSIDE_FOV_MM` of the slab (both ends together) may lie
    outside the field of view: the chain fills that part with background, and
    ``loc.outside_fov_mm`` records it. Raises :class:`SlabRefusedError` (a
    :class:`CropError` naming the overrides) otherwise.
    """
    lo, hi = loc.scan_s_range_mm
    slab = loc.slab
    # First: a poor fit also misplaces the slab, so its ends outside the scan would mislead.
    if loc.metric > MAX_FIT_METRIC:
        raise SlabRefusedError(
            f"the head template fits the scan poorly (Mattes MI {loc.metric:.2f}; head scans reach "
            f"{MAX_FIT_METRIC:.2f} or better): is this a head scan that covers brow to jaw? {OVERRIDES_HINT}",
            loc,
            path,
        )
    if loc.outside_fov_mm > MAX_OUTSIDE_FOV_MM:
        problems = []
        if loc.above_fov_mm > 0:
            problems.append(
                f"the brow (S={slab.superior_mm:.0f} mm) is {loc.above_fov_mm:.0f} mm above "
                f"the field of view (top S={hi:.0f} mm)"
            )
        if loc.below_fov_mm > 0:
            problems.append(
                f"the jaw (S={slab.inferior_mm:.0f} mm) is {loc.below_fov_mm:.0f} mm below "
                f"the field of view (bottom S={lo:.0f} mm)"
            )
        raise SlabRefusedError(
            "; ".join(problems) + f" (at most {MAX_OUTSIDE_FOV_MM:g} mm may be missing); {OVERRIDES_HINT}",
            loc,
            path,
        )
    if slab.confidence is not None and slab.confidence < MIN_CONFIDENCE:
        raise SlabRefusedError(
            f"brow-to-jaw localisation is unsure (confidence {slab.confidence:.2f}; is this a head "
            f"scan?); {OVERRIDES_HINT}",
            loc,
            path,
        )


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
