"""What a localisation found, and when it is refused: a poor fit, a slab outside the scan, a
brain without its head, or a doubtful result.

:class:`Localisation` is what :class:`mrct.preprocessing.localise.Localiser` finds; the limits
that :func:`check_slab_in_scan` applies to it, each with what it was measured on, read here
apart from the registration that produces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mrct.errors import CropError
from mrct.preprocessing.crop import OVERRIDES_HINT, SlabBounds

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
# How much of the template's head, laid on the scan, the scan's own head covers (continued beyond
# the field of view as at its edge: localise.head_beyond_fov). Measured on 2026-12-07: the 50 IXI
# heads 0.855-0.98, the DICOM MRs 0.875 and 0.896, the CTs 0.851 and 0.684 (the GE CT, whose fit
# stretches the template); IXI heads cut to brow-to-jaw or to the cranium, scaled by 0.7-1.15 or
# crudely defaced 0.75 or more. Skull-stripped brains (no scalp, skull, face or jaw; made from IXI,
# DICOM and CT heads, some with a rim of skull kept) 0.26-0.46, and 0.54-0.56 cropped to the
# brain with a margin: the registration lays the template's brain on the brain, so its scalp and
# face fall on air.
MIN_TEMPLATE_COVERAGE = 0.6
# The jaw from registration, blended with the slab-height prior (localise.JAW_REGISTRATION_WEIGHT),
# is 5-12 mm off on some heads whose chin the scan cuts (a hunt, 14 annotated heads cut
# 11 and 26 mm above the menton): within this of the scan's bottom it may hide a cut chin, so it is said.
JAW_GUESS_MARGIN_MM = 12.0
JAW_GUESSED = (
    "no chin outline was found near the edge of the scan, so the jaw level comes from the head "
    "template alone (5-12 mm off on some heads) and the chin may be cut by more than reported"
)


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


def check_slab_in_scan(loc: Localisation, path: str | None = None) -> None:
    """Refuse a poor template fit, a slab that lies too far outside the scan, a scan whose head
    covers too little of the template laid on it (a skull-stripped brain), or a doubtful result.

    Up to :data:`MAX_OUTSIDE_FOV_MM` of the slab (both ends together) may lie
    outside the field of view: the chain fills that part with background, and
    ``loc.outside_fov_mm`` records it. Raises :class:`SlabRefusedError` (a
    :class:`CropError` naming the overrides) otherwise.
    """
    lo, hi = loc.scan_s_range_mm
    slab = loc.slab
    # First: a poor fit also misplaces the slab, so its ends outside the scan would mislead.
    if loc.metric > MAX_FIT_METRIC:
        shown = math.ceil(loc.metric * 1000) / 1000  # up, as -0.398 shown as -0.40 read as a pass
        raise SlabRefusedError(
            f"the head template fits the scan poorly (Mattes MI {shown:.3f}; head scans reach "
            f"{MAX_FIT_METRIC:.2f} or better): is this a head scan that covers brow to jaw? {OVERRIDES_HINT}",
            loc,
            path,
        )
    # Then: a brain alone also lies partly outside a field of view cropped around it; say what it is.
    if (coverage := loc.details.get("template_coverage", 1.0)) < MIN_TEMPLATE_COVERAGE:
        raise SlabRefusedError(
            f"the scan's head covers only {math.floor(100 * coverage)} % of the head template laid on it "
            f"(heads cover {100 * MIN_TEMPLATE_COVERAGE:.0f} % or more): a brain without scalp, skull "
            f"and face (skull-stripped), or not a head? {OVERRIDES_HINT}",
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
