"""Quality-control pictures: planes resampled on a world-aligned grid, mosaics, slab overlays.

Every picture is sampled on a grid aligned with the **RAS** world axes (mm), never
on the voxel grid, so oblique and anisotropic volumes keep their true shape:
pixels are square, ``pixel_mm`` on each side. Display follows 3D Slicer and
radiology:

- axial, seen from the feet: patient right on image left, anterior at the top;
- coronal, seen from the front: patient right on image left, superior at the top;
- sagittal: anterior on image left, superior at the top.

Images are numpy arrays indexed ``[row, column]`` (``[row, column, rgb]`` for
colour), uint8. Nothing here imports torch or MONAI.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from scipy.ndimage import map_coordinates

from mrct.qc_text import TEXT_RGB, font_for, text_strip
from mrct.qc_text import with_caption as with_caption  # callers caption and write through mrct.qc
from mrct.qc_text import write_png as write_png
from mrct.volume import Modality, Volume

log = logging.getLogger(__name__)

Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[Plane, ...] = ("axial", "coronal", "sagittal")

# A QC window for head CT (HU): air and fat black, soft tissue dark grey so the skin
# outline and brain show, bone graded up to dense cortex. Not a diagnostic window.
CT_WINDOW = (-200.0, 1200.0)
MIN_PIXEL_MM = 0.5
MIN_SIDE = 256  # pixels along a panel's longest side, at least (small scans are enlarged)
MAX_SIDE = 2048  # default pixels grow beyond the finest spacing to keep a side under this
SUPERIOR_RGB = (255, 64, 64)
INFERIOR_RGB = (0, 200, 255)
FAILURE_RGB = (255, 40, 40)
_DIM = 0.45  # brightness kept outside the slab in slab_qc_image

# Per plane: normal axis (0 R, 1 A, 2 S); RAS unit vectors for one row down and one
# column right; edge letters (top, bottom, left, right).
_LAYOUT: dict[str, tuple[int, tuple[int, int, int], tuple[int, int, int], str]] = {
    "axial": (2, (0, -1, 0), (-1, 0, 0), "APRL"),
    "coronal": (1, (0, 0, -1), (-1, 0, 0), "SIRL"),
    "sagittal": (0, (0, 0, -1), (0, -1, 0), "SIAP"),
}


@dataclass(frozen=True)
class PlaneGrid:
    """A plane's pixel grid in RAS mm.

    Pixel ``(row, col)`` has its centre at ``origin + row * down + col * right``;
    ``down`` and ``right`` are RAS vectors ``pixel_mm`` long.
    """

    plane: Plane
    origin: npt.NDArray[np.float64]
    down: npt.NDArray[np.float64]
    right: npt.NDArray[np.float64]
    shape: tuple[int, int]
    pixel_mm: float

    def points(self) -> npt.NDArray[np.float64]:
        """RAS mm of every pixel centre, shape ``(rows, cols, 3)``."""
        r, c = np.indices(self.shape, dtype=np.float64)
        return self.origin + r[..., None] * self.down + c[..., None] * self.right

    def world_to_pixel(self, ras_mm: npt.ArrayLike) -> tuple[float, float]:
        """(row, col), continuous, of the projection of a RAS mm point; centres are integers."""
        d = np.asarray(ras_mm, dtype=np.float64) - self.origin
        px2 = self.pixel_mm**2
        return float(d @ self.down / px2), float(d @ self.right / px2)


def world_bounds(volume: Volume) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(low, high) RAS mm corners of the box holding every voxel, voxel edges included."""
    n = np.array(volume.shape, dtype=np.float64)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)
    ijk = corners * n - 0.5
    ras = ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    return ras.min(axis=0), ras.max(axis=0)


def world_centre(volume: Volume) -> npt.NDArray[np.float64]:
    """Centre of the world bounding box, RAS mm."""
    lo, hi = world_bounds(volume)
    return (lo + hi) / 2


def default_pixel_mm(volume: Volume) -> float:
    """The smallest voxel spacing, lowered so the longest side has MIN_SIDE pixels (a 2 mm scan
    made 120-pixel panels, their labels over the anatomy), at least 0.5 mm, and raised so no
    side exceeds MAX_SIDE pixels."""
    lo, hi = world_bounds(volume)
    extent = float(np.max(hi - lo))
    return max(min(*volume.spacing, extent / MIN_SIDE), MIN_PIXEL_MM, extent / MAX_SIDE)


def plane_grid(
    volume: Volume, plane: Plane, position_mm: float | None = None, pixel_mm: float | None = None
) -> PlaneGrid:
    """The world-aligned grid covering the volume's bounding box in one plane.

    ``position_mm`` is the RAS coordinate along the plane's normal (S for axial, A
    for coronal, R for sagittal); it defaults to the bounding-box centre.
    """
    if plane not in _LAYOUT:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    px = default_pixel_mm(volume) if pixel_mm is None else float(pixel_mm)
    if not px > 0:
        raise ValueError(f"pixel_mm must be positive, got {pixel_mm}")
    normal, down_dir, right_dir, _ = _LAYOUT[plane]
    lo, hi = world_bounds(volume)
    origin = (lo + hi) / 2
    origin[normal] = origin[normal] if position_mm is None else float(position_mm)
    shape: list[int] = []
    for direction in (down_dir, right_dir):
        axis = int(np.flatnonzero(direction)[0])
        n = max(1, math.ceil((hi[axis] - lo[axis]) / px - 1e-6))
        if n > 4 * MAX_SIDE:
            raise ValueError(f"pixel_mm {px} gives {n} pixels per side; choose a larger pixel")
        shape.append(n)
        # the first pixel's outer edge sits on the box face where the image starts
        origin[axis] = hi[axis] - px / 2 if direction[axis] < 0 else lo[axis] + px / 2
    return PlaneGrid(
        plane,
        origin,
        np.asarray(down_dir, dtype=np.float64) * px,
        np.asarray(right_dir, dtype=np.float64) * px,
        (shape[0], shape[1]),
        px,
    )


def sample_plane(volume: Volume, grid: PlaneGrid) -> npt.NDArray[np.float32]:
    """Voxel values at the grid's pixel centres (linear interpolation); NaN outside the volume."""
    pts = grid.points().reshape(-1, 3)
    inv = np.linalg.inv(volume.affine)
    ijk = pts @ inv[:3, :3].T + inv[:3, 3]
    inside = np.all((ijk >= -0.5) & (ijk <= np.array(volume.shape) - 0.5), axis=1)
    values = np.full(len(pts), np.nan, dtype=np.float32)
    if inside.any():
        values[inside] = map_coordinates(
            volume.array, ijk[inside].T, order=1, mode="nearest", output=np.float32
        )
    return values.reshape(grid.shape)


def default_window(volume: Volume) -> tuple[float, float]:
    """Display window (low, high) in the volume's units.

    CT (from the header, or HU-looking values when the header is silent):
    :data:`CT_WINDOW`. Otherwise (MR, unknown): the 1st to 99.5th percentile of
    the nonzero voxels.
    """
    modality = volume.modality
    if modality is None:
        from mrct.volume import guess_modality

        modality = guess_modality(volume)
    if modality is Modality.CT:
        return CT_WINDOW
    a = volume.array
    step = max(1, round((a.size / 4e6) ** (1 / 3)))  # percentiles from about 4 M voxels at most
    sample = a[::step, ::step, ::step].ravel()
    nonzero = sample[sample != 0]
    lo, hi = np.percentile(nonzero if nonzero.size else sample, [1.0, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _to_uint8(values: npt.NDArray[np.float32], window: tuple[float, float]) -> npt.NDArray[np.uint8]:
    lo, hi = window
    scaled = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * 255.0
    return np.nan_to_num(np.rint(scaled), nan=0.0).astype(np.uint8)


def render_plane(
    volume: Volume,
    plane: Plane,
    position_mm: float | None = None,
    pixel_mm: float | None = None,
    window: tuple[float, float] | None = None,
) -> npt.NDArray[np.uint8]:
    """One plane as a greyscale uint8 image (rows, cols); outside the volume is black.

    Args:
        volume: any Volume; its affine maps voxels to RAS mm.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"`` (orientation in the module doc).
        position_mm: RAS coordinate of the plane along its normal (S, A or R), in mm;
            default: the centre of the volume's world bounding box.
        pixel_mm: side of the square pixels in mm; default :func:`default_pixel_mm`.
        window: (low, high) in the volume's units (HU for CT); default :func:`default_window`.
    """
    grid = plane_grid(volume, plane, position_mm, pixel_mm)
    return _to_uint8(sample_plane(volume, grid), window or default_window(volume))


def _annotate(gray_or_rgb: npt.NDArray[np.uint8], plane: Plane, title: str) -> npt.NDArray[np.uint8]:
    """Title at the top left and orientation letters at the middle of each edge."""
    image = Image.fromarray(gray_or_rgb).convert("RGB")
    draw = ImageDraw.Draw(image)
    h, w = gray_or_rgb.shape[:2]
    font = font_for(min(h, w))
    top, bottom, left, right = tuple(_LAYOUT[plane][3])
    m = 2
    # On a narrow panel the title would run into the top letter: put it on the line below.
    clear = font.getlength(title) + m < w / 2 - font.getlength(top) / 2 - m
    draw.text((m, m if clear else m + int(font.getbbox("Sg")[3]) + 2), title, fill=TEXT_RGB, font=font)
    draw.text((w / 2, m), top, fill=TEXT_RGB, font=font, anchor="mt")
    draw.text((w / 2, h - m), bottom, fill=TEXT_RGB, font=font, anchor="mb")
    draw.text((m, h / 2), left, fill=TEXT_RGB, font=font, anchor="lm")
    draw.text((w - m, h / 2), right, fill=TEXT_RGB, font=font, anchor="rm")
    return np.asarray(image)


def _side_by_side(panels: list[npt.NDArray[np.uint8]], gap: int = 4) -> npt.NDArray[np.uint8]:
    """RGB panels in a row, top-aligned on black, separated by ``gap`` grey columns."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.full((height, width, 3), 64, dtype=np.uint8)
    x = 0
    for p in panels:
        out[:, x : x + p.shape[1]] = 0
        out[: p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out


def three_plane_mosaic(
    volume: Volume,
    centre_mm: npt.ArrayLike | None = None,
    pixel_mm: float | None = None,
    window: tuple[float, float] | None = None,
) -> npt.NDArray[np.uint8]:
    """Axial, coronal and sagittal planes side by side (RGB uint8), labelled.

    The three planes pass through ``centre_mm`` (RAS mm; default the bounding-box
    centre) and share one pixel size and window, so distances compare across them.
    Panels are top-aligned; the shorter ones are padded with black below.
    """
    centre = world_centre(volume) if centre_mm is None else np.asarray(centre_mm, dtype=np.float64)
    px = default_pixel_mm(volume) if pixel_mm is None else pixel_mm
    win = window or default_window(volume)
    panels = []
    for plane in PLANES:
        normal = _LAYOUT[plane][0]
        gray = render_plane(volume, plane, float(centre[normal]), px, win)
        panels.append(_annotate(gray, plane, f"{plane} {'RAS'[normal]}={centre[normal]:.1f} mm"))
    return _side_by_side(panels)


def _slab_panel(
    volume: Volume,
    grid: PlaneGrid,
    window: tuple[float, float],
    levels: tuple[float | None, float | None],
) -> npt.NDArray[np.uint8]:
    """One plane with rows outside the slab dimmed and each slab level drawn as a one-pixel row."""
    gray = _to_uint8(sample_plane(volume, grid), window)
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    h = grid.shape[0]
    # S is a row coordinate of a world-aligned sagittal or coronal plane
    rows = [None if s is None else round(grid.world_to_pixel([*grid.origin[:2], s])[0]) for s in levels]
    sup_row, inf_row = rows
    if sup_row is not None:
        rgb[: max(0, min(h, sup_row))] *= _DIM
    if inf_row is not None:
        rgb[max(0, min(h, inf_row + 1)) :] *= _DIM
    out = np.rint(rgb).astype(np.uint8)
    for row, colour in zip(rows, (SUPERIOR_RGB, INFERIOR_RGB), strict=True):
        if row is not None and 0 <= row < h:
            out[row] = colour
    centre = grid.origin[{"sagittal": 0, "coronal": 1}[grid.plane]]
    return _annotate(out, grid.plane, f"{grid.plane} {'RA'[_LAYOUT[grid.plane][0]]}={centre:.1f} mm")


def slab_qc_image(
    volume: Volume,
    superior_mm: float | None,
    inferior_mm: float | None,
    *,
    label: str = "",
    coronal: bool = True,
    pixel_mm: float | None = None,
    window: tuple[float, float] | None = None,
    notes: Sequence[str] = (),
    failure: str | None = None,
) -> npt.NDArray[np.uint8]:
    """A crop slab between two RAS S levels (mm) over the mid-sagittal (and coronal) plane, RGB.

    Both planes pass through the bounding-box centre. S levels are rows of these
    world-aligned planes: each level is drawn on the row whose pixel holds it (row
    ``round(plane_grid(...).world_to_pixel(...)[0])``), superior in
    :data:`SUPERIOR_RGB`, inferior in :data:`INFERIOR_RGB`, and the rows outside
    the slab are dimmed. A level that is None is not drawn (nothing dimmed on that
    side). Below the panels, a text strip gives ``label``, the levels in mm (and how
    far a level lies outside the scan), ``notes``, and ``failure`` in red as
    ``FAILED: <failure>`` (for a scan that could not be prepared: the levels drawn
    are then the ones that were refused, if any).
    """
    px = default_pixel_mm(volume) if pixel_mm is None else pixel_mm
    win = window or default_window(volume)
    planes: tuple[Plane, ...] = ("sagittal", "coronal") if coronal else ("sagittal",)
    grids = [plane_grid(volume, p, pixel_mm=px) for p in planes]
    panels = [_slab_panel(volume, g, win, (superior_mm, inferior_mm)) for g in grids]
    top = _side_by_side(panels)
    lo, hi = world_bounds(volume)
    lines: list[tuple[str, tuple[int, int, int]]] = [(label, TEXT_RGB)] if label else []
    for name, s, colour in (("superior", superior_mm, SUPERIOR_RGB), ("inferior", inferior_mm, INFERIOR_RGB)):
        if s is not None:
            where = ""
            if s > hi[2]:
                where = f" ({s - hi[2]:.1f} mm above the scan)"
            elif s < lo[2]:
                where = f" ({lo[2] - s:.1f} mm below the scan)"
            lines.append((f"{name} S={s:.1f} mm{where}", colour))
    lines += [(n, TEXT_RGB) for n in notes]
    if failure is not None:
        lines.append((f"FAILED: {failure}", FAILURE_RGB))
    if not lines:
        return top
    return np.concatenate([top, text_strip(lines, top.shape[1], font_for(top.shape[0]))], axis=0)
