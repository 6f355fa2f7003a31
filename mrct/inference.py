"""Translator: a model package turns a scan into its synthetic counterpart on the scan's own grid.

The steps are those of training, run forward and then undone:
preprocess (reorient, head mask, brow-to-jaw slab, model grid, intensities to [-1, 1]),
the generator, then :func:`mrct.preprocessing.invert` back onto the input grid with the
*target* modality's intensity map. The output keeps the input's affine, shape and source
(so a DICOM output shares the source's study and frame of reference).

Output values:

- synthetic CT: HU, int16, clipped to [-1024, 3071]; -1024 HU (air) outside the slab and
  outside the head mask;
- synthetic MR: float32 on an arbitrary 0..1000 scale (the generator's [-1, 1] mapped
  linearly; MR has no physical unit), 0 outside the slab and the head mask.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrct.errors import ConfigError, ModalityError
from mrct.metrics import slab_voxels
from mrct.preprocessing.crop import CropRequest
from mrct.volume import Modality, Volume, guess_modality

log = logging.getLogger(__name__)

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"
"""The repository's ``models/`` folder: where bundled model packages live."""
DEFAULT_MODEL = "mrct-head-cpu-small"
CT_OUTPUT_RANGE_HU = (-1024, 3071)
MR_OUTPUT_RANGE = (0.0, 1000.0)
DIRECTION = {Modality.CT: "mr_to_ct", Modality.MR: "ct_to_mr"}


def output_map(target: Modality, ct_map_name: str) -> Any:
    """The intensity map from the generator's [-1, 1] to the target's units."""
    from mrct.preprocessing.intensity import IntensityMap, ct_map

    if target is Modality.CT:
        return ct_map(ct_map_name)
    return IntensityMap("mr_synthetic", "MR (arbitrary units 0..1000)", MR_OUTPUT_RANGE, (-1.0, 1.0))


def source_modality(volume: Volume, to: Modality, force: bool) -> Modality:
    """The input's modality (header, else intensities); refuses translating CT to CT and MR to MR."""
    header = volume.modality
    found = header or guess_modality(volume)
    if found is to and not force:
        how = "its header says" if header else "its intensities look like"
        raise ModalityError(
            f"{how} {found.value} already; --to {to.value.lower()} needs a "
            f"{'MR' if to is Modality.CT else 'CT'} (pass --force to translate anyway)",
            volume.source.path or None,
        )
    return Modality.MR if to is Modality.CT else Modality.CT


class _TimedLocaliser:
    """Wraps the localiser so that its share of preprocessing is timed separately."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds = inner, 0.0

    def locate(self, work: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.inner.locate(work)
        finally:
            self.seconds += time.perf_counter() - start


@dataclass
class Translation:
    """A translated volume on the input grid, and what happened on the way."""

    volume: Volume
    slabs: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)


class Translator:
    """A loaded model package on a device; :meth:`translate` is safe to call repeatedly."""

    def __init__(self, package: Any, device: str = "auto") -> None:
        import torch

        self.package = package
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as err:
            raise ConfigError(f"--device: {err}") from err
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is available")
        self._generators: dict[str, Any] = {}
        self._localiser: Any = None

    @classmethod
    def from_package(
        cls,
        name_or_path: str | Path | None = None,
        device: str = "auto",
        search_dirs: Sequence[Path] = (REPO_MODELS,),
    ) -> Translator:
        """Load a package by folder path or by name (looked up in ``search_dirs``)."""
        from mrct.models import find_package, load_package

        return cls(load_package(find_package(name_or_path or DEFAULT_MODEL, search_dirs)), device)

    def generator(self, direction: str) -> Any:
        if direction not in self._generators:
            self._generators[direction] = self.package.load_generator(direction, self.device)
        return self._generators[direction]

    def forward(self, direction: str, image: np.ndarray) -> np.ndarray:
        """The generator on one model-grid volume (D, H, W) in [-1, 1]; a 2D (frame-wise)
        generator runs on the D slices as one batch, so 2D and 3D models translate alike."""
        import torch

        generator = self.generator(direction)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            if self.package.generator_config.spatial_dims == 2:
                return generator(x[:, None]).float()[:, 0].cpu().numpy()
            return generator(x[None, None]).float()[0, 0].cpu().numpy()

    def localiser(self) -> Any:
        if self._localiser is None:
            from mrct.preprocessing.localise import Localiser

            self._localiser = Localiser()
        return self._localiser

    def translate(
        self,
        volume: Volume,
        to: Modality,
        crop: CropRequest | None = None,
        *,
        full_fov: bool = False,
        force: bool = False,
    ) -> Translation:
        """Translate ``volume`` to modality ``to`` (see the module docstring for the output values).

        ``crop`` chooses the brow-to-jaw slab (automatic by default); ``full_fov`` translates
        the whole field of view as consecutive slabs of that height.

        Raises:
            ModalityError: the input already is ``to`` (unless ``force``).
            CropError: the slab cannot be found or used (the message names the overrides).
        """
        source = source_modality(volume, to, force)
        crop = crop or CropRequest.auto()
        timings = {"localise": 0.0, "preprocess": 0.0, "forward": 0.0, "invert": 0.0}
        first = self._one_slab(volume, source, to, crop, timings)
        if not full_fov:
            return Translation(finish(first[0], volume, to), [first[1]], timings)
        return self._full_fov(volume, source, to, first, timings)

    def _one_slab(
        self,
        volume: Volume,
        source: Modality,
        to: Modality,
        crop: CropRequest,
        timings: dict[str, float],
        fill: Any = None,
    ) -> tuple[Volume, dict[str, Any]]:
        from mrct.preprocessing.chain import invert, preprocess

        config = self.package.preprocessing
        timed = _TimedLocaliser(self.localiser()) if crop.mode == "auto" else None
        start = time.perf_counter()
        prepared = preprocess(volume, config, crop, modality=source, localiser=timed)  # type: ignore[arg-type]
        located = timed.seconds if timed else 0.0
        timings["localise"] += located
        timings["preprocess"] += time.perf_counter() - start - located
        start = time.perf_counter()
        y = self.forward(DIRECTION[to], prepared.image)
        timings["forward"] += time.perf_counter() - start
        start = time.perf_counter()
        if config.mask_background:
            y = np.where(prepared.mask, y, -1.0)  # the head mask of the source: air stays air
        target_map = output_map(to, config.intensity.ct_map)
        out = invert(prepared.record, y, intensity=target_map)
        slab = prepared.record.slab
        # Interpolation reaches half a model slice beyond the slab; the slab's levels are the limit.
        outside = ~slab_voxels(volume, slab.superior_mm, slab.inferior_mm)
        out.array[outside] = target_map.background
        timings["invert"] += time.perf_counter() - start
        info = {"superior_mm": slab.superior_mm, "inferior_mm": slab.inferior_mm, "source": slab.source}
        if slab.confidence is not None:
            info["confidence"] = slab.confidence
        return out, info

    def _full_fov(
        self,
        volume: Volume,
        source: Modality,
        to: Modality,
        first: tuple[Volume, dict[str, Any]],
        timings: dict[str, float],
    ) -> Translation:
        """Tile the scan's S extent with slabs of the first one's height, anchored on it.

        Each tile is preprocessed with its own levels (``--crop-mm``) and translated; a voxel
        takes its value from the first tile that contains it.
        """
        from mrct.preprocessing.grid import world_extent

        sup, inf = first[1]["superior_mm"], first[1]["inferior_mm"]
        height = sup - inf
        lo, hi = world_extent(volume.shape, volume.affine)
        tops = [sup + height * n for n in range(1, int(np.ceil((hi[2] - sup) / height)) + 1)]
        tops += [sup - height * n for n in range(1, int(np.ceil((inf - lo[2]) / height)) + 1)]
        merged = np.array(first[0].array, dtype=np.float32)
        inside = slab_voxels(volume, sup, inf)
        slabs = [first[1]]
        for top in tops:
            tile = CropRequest.millimetres(top, top - height)
            out, info = self._one_slab(volume, source, to, tile, timings)
            fresh = slab_voxels(volume, top, top - height) & ~inside
            merged[fresh] = out.array[fresh]
            inside |= fresh
            slabs.append(info)
        return Translation(finish(first[0].replace(array=merged), volume, to), slabs, timings)


def finish(out: Volume, source: Volume, to: Modality) -> Volume:
    """Scanner units for the target, on the input's grid, carrying the input's source record."""
    if to is Modality.CT:
        values = np.clip(np.rint(np.nan_to_num(out.array, nan=CT_OUTPUT_RANGE_HU[0])), *CT_OUTPUT_RANGE_HU)
        array: np.ndarray = values.astype(np.int16)
    else:
        array = np.clip(np.nan_to_num(out.array, nan=MR_OUTPUT_RANGE[0]), *MR_OUTPUT_RANGE).astype(np.float32)
    return Volume(array, source.affine.copy(), to, source.source)
