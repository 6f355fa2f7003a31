"""The bottom of the chin, seen in the scan: where the midline soft-tissue outline turns back.

The registration onto the reference head (:mod:`mrct.preprocessing.localise`) places the
menton within about 10 mm; the skin's outline, traced here on a midline band, places the
chin's bottom more precisely when the field of view shows it.
"""

from __future__ import annotations

import numpy as np

from mrct.preprocessing.grid import world_extent
from mrct.preprocessing.mask import WorkingImage

# The chin edge search (:func:`chin_edge_s`): a midline band (R half-width), the window around
# the registered menton where the chin's bottom is sought, how far the outline must recede
# behind its most anterior point within the look-back above, and how near the field of view's
# bottom, or in front of an outline's end its nearest face, an edge is not trusted (the scan's
# own edge, or a chin cut by it). RAS mm.
CHIN_BAND_MM = 10.0
CHIN_WINDOW_MM = (-15.0, 15.0)
CHIN_RECESSION_MM = 12.0
CHIN_LOOKBACK_MM = 15.0
FOV_EDGE_MARGIN_MM = 4.0


def chin_edge_s(work: WorkingImage, menton_ras: tuple[float, float, float]) -> float | None:
    """The S (RAS mm) where the chin's soft-tissue outline ends, or None when not seen.

    On a midline sagittal band around the registered menton, sampled at 1 mm from the
    working image, the head's anterior-most extent is traced per S level. Going down
    from the top of :data:`CHIN_WINDOW_MM` (around the registered menton), the first level
    whose outline lies :data:`CHIN_RECESSION_MM` behind the most anterior outline of the
    :data:`CHIN_LOOKBACK_MM` above it is the bottom of the chin: the outline turns back to the
    neck there. The look-back is short so that a protruding lower lip at the window's top is
    not taken for the chin (IXI079: its lip stood 8 mm ahead of the chin, and the chin's
    bottom was placed 10 mm too high). The edge is the skin's, so it lies a few mm below the
    bony menton (calibrated in the reference).
    """
    from scipy.ndimage import map_coordinates

    r0, a0, s0 = menton_ras
    lo, _ = world_extent(work.array.shape, work.affine)
    bottom = float(lo[2]) + FOV_EDGE_MARGIN_MM
    s_levels = np.arange(s0 + CHIN_WINDOW_MM[1], s0 + CHIN_WINDOW_MM[0] - 30.0, -1.0)  # top down
    a_levels = np.arange(a0 - 70.0, a0 + 40.0, 1.0)
    r_levels = np.arange(r0 - CHIN_BAND_MM, r0 + CHIN_BAND_MM + 0.1, 2.0)
    rr, ss, aa = np.meshgrid(r_levels, s_levels, a_levels, indexing="ij")
    ras = np.stack([rr, aa, ss], axis=-1).reshape(-1, 3)
    inv = np.linalg.inv(work.affine)
    ijk = ras @ inv[:3, :3].T + inv[:3, 3]
    values = map_coordinates(work.array, ijk.T, order=1, mode="nearest").reshape(rr.shape).mean(axis=0)
    inside = values > work.threshold
    front = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)  # the last voxel inside, per level
    extent = np.where(inside.any(axis=1), a_levels[front], np.nan)
    # An outline ending at or just behind a face of the field of view ends at the face, not at the
    # skin: an oblique scan cuts the chin along a tilted face that lies far above its lowest corner.
    unseen = work.fov_margin_mm(ras).reshape(rr.shape).min(axis=0) < 0.0
    reach = round(FOV_EDGE_MARGIN_MM)  # levels are 1 mm apart along A too
    at_face = np.array([unseen[i, f : f + reach + 1].any() for i, f in enumerate(front)])
    usable = (s_levels > bottom) & np.isfinite(extent) & ~at_face
    window = usable & (s_levels <= s0 + CHIN_WINDOW_MM[1]) & (s_levels >= s0 + CHIN_WINDOW_MM[0])
    if not window.any():
        return None
    first = int(np.flatnonzero(window)[0])
    look_back = round(CHIN_LOOKBACK_MM)  # levels are 1 mm apart
    for i in range(first, len(s_levels)):
        if not usable[i]:
            return None  # the scan ends before the chin does
        if extent[i] < np.nanmax(extent[max(first, i - look_back) : i + 1]) - CHIN_RECESSION_MM:
            return float(s_levels[i])
    return None
