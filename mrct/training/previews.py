"""Training previews: input, translation and cycle, as mid slices in one PNG.

Rows: MR -> synthetic CT -> cycled MR, then CT -> synthetic MR -> cycled CT. Each panel
shows the middle axial slice and, for 3D volumes, the middle sagittal slice with the
slices repeated so that the slab looks roughly its real height (superior at the top).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

ROWS = (("mr", "fake_ct", "cycled_mr"), ("ct", "fake_mr", "cycled_ct"))


def _gray(slice_: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    finite = np.nan_to_num(slice_, nan=-1.0, posinf=1.0, neginf=-1.0)  # a diverging run: black, no warning
    return np.rint((np.clip(finite, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _panel(image: torch.Tensor, depth_repeat: int) -> npt.NDArray[np.uint8]:
    """The first sample's first channel: (D, H, W) -> axial | sagittal; (H, W) -> itself."""
    a = image[0, 0].detach().float().cpu().numpy()
    if a.ndim == 2:
        return _gray(a)
    axial = _gray(a[a.shape[0] // 2])
    # (D, H) at the middle W column, D inferior->superior: flip so superior is on top.
    sagittal = np.repeat(_gray(a[::-1, :, a.shape[2] // 2]), depth_repeat, axis=0)
    height = max(axial.shape[0], sagittal.shape[0])
    out = np.zeros((height, axial.shape[1] + 2 + sagittal.shape[1]), dtype=np.uint8)
    out[: axial.shape[0], : axial.shape[1]] = axial
    out[: sagittal.shape[0], axial.shape[1] + 2 :] = sagittal
    return out


def preview_image(images: dict[str, torch.Tensor], depth_repeat: int = 4) -> npt.NDArray[np.uint8]:
    """A grey uint8 mosaic of the six images named in :data:`ROWS`."""
    rows = []
    for names in ROWS:
        panels = [_panel(images[n], depth_repeat) for n in names]
        gap = np.full((panels[0].shape[0], 4), 96, dtype=np.uint8)
        rows.append(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))
    sep = np.full((4, rows[0].shape[1]), 96, dtype=np.uint8)
    return np.concatenate([rows[0], sep, rows[1]], axis=0)


def write_preview(images: dict[str, torch.Tensor], path: Path) -> npt.NDArray[np.uint8]:
    from mrct.qc import write_png

    picture = preview_image(images)
    write_png(picture, path, overwrite=True)
    return picture
