"""The deterministic preprocessing chain, as MONAI dictionary transforms.

    reorient (RAS) -> head mask -> brow-to-jaw slab -> model grid -> resample -> intensity map

Each transform reads and writes one dictionary: ``image`` (a MONAI
``MetaTensor``, channel first, with its RAS affine) and ``record`` (what each
step did, collected into a :class:`PreprocessRecord`). :func:`preprocess` runs
the chain on a :class:`~mrct.volume.Volume`; :func:`invert` puts a model-grid
array back on the scan's own grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from monai.transforms import Compose, MapTransform, Orientationd

from mrct.config import to_dict
from mrct.errors import CropError
from mrct.preprocessing.config import GridConfig, PreprocessConfig
from mrct.preprocessing.crop import OVERRIDES_HINT, CropRequest, SlabBounds
from mrct.preprocessing.grid import in_slab, model_grid_affine, resample, resample_from_grid, world_extent
from mrct.preprocessing.intensity import IntensityMap, ct_map, mr_map
from mrct.preprocessing.localise import Localiser
from mrct.preprocessing.mask import MIN_HEAD_ML, WorkingImage, mask_on_grid, working_image
from mrct.preprocessing.record import PreprocessRecord, _matrix
from mrct.preprocessing.slab_checks import check_slab_in_scan
from mrct.volume import Modality, Volume

Data = dict[Hashable, Any]


def _numpy(image: Any) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """The (I, J, K) array and RAS affine of a channel-first MetaTensor."""
    return np.asarray(image[0].numpy(), dtype=np.float32), np.asarray(image.affine.numpy(), dtype=np.float64)


class RecordOrientationd(MapTransform):
    """Record the grid after MONAI's ``Orientationd`` (a permutation and flips, no resampling)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> Data:
        d = dict(data)
        _, affine = _numpy(d["image"])
        d["record"]["canonical_shape"] = tuple(int(s) for s in d["image"].shape[1:])
        d["record"]["canonical_affine"] = _matrix(affine)
        return d


class HeadMaskd(MapTransform):
    """Compute the coarse working image and its head mask (see :mod:`mrct.preprocessing.mask`)."""

    def __init__(self, modality: Modality) -> None:
        super().__init__(keys="image")
        self.modality = modality

    def __call__(self, data: Mapping[Hashable, Any]) -> Data:
        d = dict(data)
        array, affine = _numpy(d["image"])
        work = working_image(Volume(array, affine, self.modality), self.modality)
        if work.mask_ml < MIN_HEAD_ML:
            raise CropError(f"no head found (head mask {work.mask_ml:.0f} mL); is this a head scan?")
        d["work"] = work
        d["record"]["mask"] = {
            "threshold": work.threshold,
            "volume_ml": round(work.mask_ml, 1),
            "step_mm": float(work.affine[0, 0]),
        }
        return d


class LocateSlabd(MapTransform):
    """Choose the slab: automatic localisation, given levels, or the whole field of view."""

    def __init__(self, request: CropRequest, localiser: Localiser | None, margin_mm: float) -> None:
        super().__init__(keys="image")
        self.request, self.localiser, self.margin_mm = request, localiser, margin_mm

    def __call__(self, data: Mapping[Hashable, Any]) -> Data:
        d = dict(data)
        work: WorkingImage = d["work"]
        lo, hi = world_extent(work.array.shape, work.affine)
        req = self.request
        if req.mode == "auto":
            loc = (self.localiser or Localiser()).locate(work)
            check_slab_in_scan(loc)
            slab, d["record"]["localisation"] = loc.slab, loc.to_dict()
        elif req.mode == "none":
            array, affine = _numpy(d["image"])
            lo_s, hi_s = world_extent(array.shape, affine)
            slab = SlabBounds(float(hi_s[2]), float(lo_s[2]), "full-fov", None)
        else:
            assert req.superior_mm is not None and req.inferior_mm is not None
            # The scan's own extent: the working grid is rounded up to whole 4 mm voxels.
            bottom, top = work.scan_s_range_mm or (float(lo[2]), float(hi[2]))
            if req.inferior_mm >= top or req.superior_mm <= bottom:
                raise CropError(
                    f"the requested slab S={req.superior_mm:g}..{req.inferior_mm:g} mm misses the scan "
                    f"(S={bottom:.0f}..{top:.0f} mm); {OVERRIDES_HINT}"
                )
            slab = SlabBounds(req.superior_mm, req.inferior_mm, "crop-mm" if req.mode == "mm" else "markups")
        if req.mode != "none" and self.margin_mm:
            slab = SlabBounds(
                slab.superior_mm + self.margin_mm,
                slab.inferior_mm - self.margin_mm,
                slab.source,
                slab.confidence,
            )
        d["slab"] = slab
        d["record"]["slab"] = slab
        d["record"]["margin_mm"] = self.margin_mm if req.mode != "none" else 0.0
        return d


class ModelGridd(MapTransform):
    """Place the model grid: depth spans the slab; the fixed in-plane field of view is centred
    on the head (the R-A centre of the head mask's bounding box within the slab)."""

    def __init__(self, grid: GridConfig) -> None:
        super().__init__(keys="image")
        self.grid = grid

    def __call__(self, data: Mapping[Hashable, Any]) -> Data:
        d = dict(data)
        work: WorkingImage = d["work"]
        slab: SlabBounds = d["slab"]
        pts = work.mask_points()
        inside = pts[(pts[:, 2] <= slab.superior_mm) & (pts[:, 2] >= slab.inferior_mm)]
        pts = inside if len(inside) else pts
        centre = (pts[:, :2].min(axis=0) + pts[:, :2].max(axis=0)) / 2
        affine = model_grid_affine(self.grid, slab.superior_mm, slab.inferior_mm, (centre[0], centre[1]))
        d["grid_affine"] = affine
        d["record"]["grid_shape"] = self.grid.shape
        d["record"]["grid_affine"] = _matrix(affine)
        return d


class ResampleToGridd(MapTransform):
    """Resample the image (anti-aliased, trilinear) and the head mask onto the model grid."""

    def __init__(self, grid: GridConfig, anti_alias: bool) -> None:
        super().__init__(keys="image")
        self.grid, self.anti_alias = grid, anti_alias

    def __call__(self, data: Mapping[Hashable, Any]) -> Data:
        d = dict(data)
        array, affine = _numpy(d["image"])
        work: WorkingImage = d["work"]
        target = d["grid_affine"]
        # The scan's air beyond it (its minimum was a dropout's -2000 or a padding constant).
        d["grid_image"] = resample(
            array, affine, target, self.grid.shape, fill=work.floor, anti_alias=self.anti_alias
        )
        coarse = resample(work.mask.astype(np.float32), work.affine, target, self.grid.shape) > 0.5
        spacing = np.linalg.norm(np.asarray(target, dtype=np.float64)[:3, :3], axis=0)
        d["grid_mask"] = mask_on_grid(d["grid_image"], coarse, work.threshold, spacing, work.modality)
        return d


class MapIntensityd(MapTransform):
    """Map scanner units to [-1, 1] (CT: a fixed HU map; MR: percentiles inside the head mask,
    or ``fixed``, a map computed on another part of the same scan)."""

    def __init__(
        self, modality: Modality, config: PreprocessConfig, fixed: IntensityMap | None = None
    ) -> None:
        super().__init__(keys="image")
        self.modality, self.config, self.fixed = modality, config, fixed

    def __call__(self, data: Mapping[Hashable, Any]) -> Data:
        d = dict(data)
        image, mask = d["grid_image"], d["grid_mask"]
        if self.fixed is not None:
            imap = self.fixed
        elif self.modality is Modality.CT:
            imap = ct_map(self.config.intensity.ct_map)
        else:
            try:
                imap = mr_map(image[mask], self.config.intensity.mr_percentiles)
            except ValueError as err:
                raise CropError(f"{err}; {OVERRIDES_HINT}") from None
        out = imap.forward(image)
        if self.config.mask_background:
            out[~mask] = -1.0
        d["grid_image"] = out
        d["record"]["intensity"] = imap
        return d


def build_chain(
    modality: Modality,
    config: PreprocessConfig,
    crop: CropRequest,
    localiser: Localiser | None,
    intensity: IntensityMap | None = None,
) -> Compose:
    """The chain for one scan, assembled from the typed config."""
    return Compose(
        [
            Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            RecordOrientationd(keys="image"),
            HeadMaskd(modality),
            LocateSlabd(crop, localiser, config.margin_mm),
            ModelGridd(config.grid),
            ResampleToGridd(config.grid, config.anti_alias),
            MapIntensityd(modality, config, intensity),
        ]
    )


@dataclass(frozen=True, eq=False)
class Preprocessed:
    """A scan on the model grid: ``image`` (D, H, W) float32 in [-1, 1], its head ``mask``, the record."""

    image: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]
    record: PreprocessRecord

    def volume(self) -> Volume:
        """The model-grid image as a Volume (for writing to NIfTI and QC)."""
        return Volume(self.image, self.record.grid_affine_array, Modality(self.record.modality))


def preprocess(
    volume: Volume,
    config: PreprocessConfig | None = None,
    crop: CropRequest | None = None,
    *,
    modality: Modality | None = None,
    localiser: Localiser | None = None,
    intensity: IntensityMap | None = None,
) -> Preprocessed:
    """Run the chain on ``volume``. ``modality`` overrides the header; else it is the header's or
    guessed from intensities. ``intensity`` replaces the map computed from the slab (full-FOV
    tiles use their scan's central slab's, so that all share one MR scale and a tile with
    little or no head needs no statistics of its own). Errors about the slab are
    :class:`~mrct.errors.CropError`."""
    import torch
    from monai.data import MetaTensor

    from mrct.volume import guess_modality

    config = config or PreprocessConfig()
    modality = modality or volume.modality or guess_modality(volume)
    if modality is None:
        raise CropError("cannot tell CT from MR from the intensities; state the modality")
    values = np.ascontiguousarray(volume.array, dtype=np.float32)
    if not values.flags.writeable:  # a read-only array or memmap: torch warns it cannot share one
        values = values.copy()
    image = MetaTensor(
        torch.from_numpy(values)[None],
        affine=torch.from_numpy(volume.affine),
    )
    record: dict[str, Any] = {
        "input_shape": volume.shape,
        "input_affine": _matrix(volume.affine),
        "input_orientation": volume.orientation,
        "modality": modality.value,
        "config": to_dict(config),
        "localisation": None,
    }
    chain = build_chain(modality, config, crop or CropRequest.auto(), localiser, intensity)
    try:
        out = chain({"image": image, "record": record})
    except RuntimeError as err:
        # MONAI wraps every exception raised inside a transform; ours are meant for users.
        # Its own message names the transform object, not the problem: pass the cause on.
        cause = err.__cause__
        if isinstance(cause, Exception) and str(err).startswith("applying transform"):
            raise cause from None
        raise
    return Preprocessed(out["grid_image"], out["grid_mask"], PreprocessRecord(**out["record"]))


def invert(
    record: PreprocessRecord,
    array: npt.ArrayLike,
    *,
    intensity: IntensityMap | None = None,
    fill: float | None = None,
) -> Volume:
    """Put a model-grid array ``(D, H, W)`` back on the scan's own grid.

    The result has the input's affine and shape exactly. Values are mapped back
    through ``intensity`` (default: the record's own map; pass the target
    modality's map for a translated image). Voxels outside the slab get
    ``fill`` (default: the map's value for -1, e.g. -1024 HU).
    """
    data = np.asarray(array, dtype=np.float32)
    if data.shape != tuple(record.grid_shape):
        raise ValueError(f"expected an array of the model grid's shape {record.grid_shape}, got {data.shape}")
    imap = intensity or record.intensity
    values = imap.inverse(data)
    background = imap.background if fill is None else float(fill)
    out = resample_from_grid(
        values, record.grid_affine_array, record.input_affine_array, record.input_shape, fill=background
    )
    levels = (record.slab.superior_mm, record.slab.inferior_mm)
    out[~in_slab(record.input_affine_array, record.input_shape, *levels)] = background
    modality = Modality.CT if imap.units == "HU" else Modality.MR
    return Volume(out, record.input_affine_array, modality)
