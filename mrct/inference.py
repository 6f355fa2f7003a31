"""Translator: a model package turns a scan into its synthetic counterpart on the scan's own grid.

The steps are those of training, run forward and then undone:
preprocess (reorient, head mask, brow-to-jaw slab, model grid, intensities to [-1, 1]),
the generator, then :func:`mrct.preprocessing.invert` back onto the input grid with the
*target* modality's intensity map. The output keeps the input's affine, shape and source
(so a DICOM output shares the source's study and frame of reference).

:class:`Translator` splits this into three stages a batch can overlap: ``prepare`` (CPU:
localise, preprocess), ``run`` (the generator, through :mod:`mrct.runtime` on the CPU:
precision, threads, kernels) and ``finish`` (CPU: back onto the input grid).

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mrct.errors import ConfigError, MrctError
from mrct.preprocessing.crop import CropRequest
from mrct.translatable import source_modality
from mrct.volume import Modality, Volume

log = logging.getLogger(__name__)

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"
"""The repository's ``models/`` folder: where bundled model packages live."""
DEFAULT_MODEL = "mrct-head-medium"
CT_OUTPUT_RANGE_HU = (-1024, 3071)
MR_OUTPUT_RANGE = (0.0, 1000.0)
DIRECTION = {Modality.CT: "mr_to_ct", Modality.MR: "ct_to_mr"}


def output_map(target: Modality, ct_map_name: str) -> Any:
    """The intensity map from the generator's [-1, 1] to the target's units."""
    from mrct.preprocessing.intensity import IntensityMap, ct_map

    if target is Modality.CT:
        return ct_map(ct_map_name)
    return IntensityMap("mr_synthetic", "MR (arbitrary units 0..1000)", MR_OUTPUT_RANGE, (-1.0, 1.0))


@dataclass
class Prepared:
    """A scan made ready for the model by :meth:`Translator.prepare` (CPU work, no model).

    ``slabs`` are :class:`mrct.preprocessing.chain.Preprocessed` model-grid images in [-1, 1]:
    the brow-to-jaw slab first, then (``full_fov``) the tiles above and below it.
    ``timings`` (seconds) collects each stage as it runs: ``localise`` and ``preprocess`` here,
    ``forward`` in :meth:`Translator.run`, ``invert`` in :meth:`Translator.finish`.
    """

    volume: Volume
    to: Modality
    slabs: list[Any]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Translation:
    """A translated volume on the input grid, and what happened on the way."""

    volume: Volume
    slabs: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)


class Translator:
    """A loaded model package on a device; safe to call repeatedly (generators load once).

    ``translate`` is three stages, callable separately so that a batch can overlap them:
    :meth:`prepare` (localise and preprocess: CPU work, any thread), :meth:`run` (the
    generator), :meth:`finish` (back onto the input grid, scanner units: CPU work, any thread).
    The stages share no mutable state, so ``prepare`` of one scan may run in a worker thread
    while ``run`` computes another; torch's intra-op thread count is per calling thread, so
    such a worker can be limited with ``mrct.runtime.torch_threads(1)`` without slowing ``run``.

    ``precision``: ``auto`` (bf16 on a CPU with native bf16, else fp32), ``fp32`` or ``bf16``;
    see :mod:`mrct.runtime`.
    """

    def __init__(self, package: Any, device: str | None = "auto", precision: str = "auto") -> None:
        import torch

        from mrct.runtime import inference_threads, parse_device, resolve_precision

        self.package = package
        if device is None or device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = parse_device(device)
        try:
            self.precision = resolve_precision(precision, self.device)
        except ValueError as err:
            raise ConfigError(f"--precision: {err}") from err
        # Intra-op threads of the forward pass (None: the user's OMP/MKL_NUM_THREADS rule).
        self.threads = inference_threads() if self.device.type == "cpu" else None
        self._generators: dict[str, Any] = {}
        self._localiser: Any = None

    def threads_used(self) -> int | None:
        """The forward pass's CPU threads: mrct's choice, or what OMP/MKL_NUM_THREADS gave torch."""
        import torch

        if self.device.type != "cpu":
            return None
        return self.threads if self.threads is not None else int(torch.get_num_threads())

    @classmethod
    def from_package(
        cls,
        name_or_path: str | Path | None = None,
        device: str | None = "auto",
        search_dirs: Sequence[Path] = (REPO_MODELS,),
        precision: str = "auto",
    ) -> Translator:
        """Load a package by folder path or by name (looked up in ``search_dirs``)."""
        from mrct.models import find_package, load_package

        package = load_package(find_package(name_or_path or DEFAULT_MODEL, search_dirs))
        return cls(package, device, precision)

    def generator(self, direction: str) -> Any:
        """The generator for ``direction``, loaded once and set up for inference at this precision."""
        if direction not in self._generators:
            from mrct.runtime import for_inference

            module = self.package.load_generator(direction, self.device)
            self._generators[direction] = for_inference(module, self.precision, self.device)
        return self._generators[direction]

    def forward(self, direction: str, image: np.ndarray) -> np.ndarray:
        """The generator on one model-grid volume (D, H, W) in [-1, 1]; a 2D (frame-wise)
        generator runs on the D slices as one batch, so 2D and 3D models translate alike."""
        import contextlib

        import torch

        from mrct.runtime import FastResnet, torch_threads

        generator = self.generator(direction)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        autocast: Any = contextlib.nullcontext()
        if self.precision == "bf16" and not isinstance(generator, FastResnet):
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16)
        with torch.inference_mode(), torch_threads(self.threads), autocast:
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
        prepared = self.prepare(volume, to, crop, full_fov=full_fov, force=force)
        return self.finish(prepared, self.run(prepared))

    def prepare(
        self,
        volume: Volume,
        to: Modality,
        crop: CropRequest | None = None,
        *,
        full_fov: bool = False,
        force: bool = False,
    ) -> Prepared:
        """Check the modality, find the slab and preprocess it (and, with ``full_fov``, the tiles
        above and below it, each with its own levels via ``--crop-mm`` and the slab's intensity
        map). Raises as :meth:`translate`."""
        from mrct.preprocessing.grid import world_extent

        source = source_modality(volume, to, force)
        timings = {"localise": 0.0, "preprocess": 0.0}
        first = self._preprocess(volume, source, crop or CropRequest.auto(), timings)
        slabs = [first]
        if full_fov:
            # Tile the scan's S extent with slabs of the first one's height, anchored on it.
            sup, inf = first.record.slab.superior_mm, first.record.slab.inferior_mm
            height = sup - inf
            lo, hi = world_extent(volume.shape, volume.affine)
            tops = [sup + height * n for n in range(1, int(np.ceil((hi[2] - sup) / height)) + 1)]
            tops += [sup - height * n for n in range(1, int(np.ceil((inf - lo[2]) / height)) + 1)]
            for top in tops:
                tile = CropRequest.millimetres(top, top - height)
                slabs.append(self._preprocess(volume, source, tile, timings, first.record.intensity))
        return Prepared(volume, to, slabs, timings)

    def run(self, prepared: Prepared) -> list[np.ndarray]:
        """The generator on each prepared slab: model-grid arrays (D, H, W) in [-1, 1]."""
        start = time.perf_counter()
        outputs = [self.forward(DIRECTION[prepared.to], slab.image) for slab in prepared.slabs]
        prepared.timings["forward"] = prepared.timings.get("forward", 0.0) + time.perf_counter() - start
        return outputs

    def finish(self, prepared: Prepared, outputs: Sequence[np.ndarray]) -> Translation:
        """Put the generator's outputs back on the input grid in the target's units.

        Only the input voxels the model grid can reach are resampled (a box around the slab);
        the rest is background. A voxel takes its value from the first slab that contains it.
        """
        start = time.perf_counter()
        volume, to = prepared.volume, prepared.to
        config = self.package.preprocessing
        target_map = output_map(to, config.intensity.ct_map)
        background = scanner_units(np.array([target_map.background], np.float32), to)[0]
        out = np.full(volume.shape, background, dtype=background.dtype)
        taken = np.zeros(volume.shape, dtype=bool) if len(prepared.slabs) > 1 else None
        infos = []
        for n, (pre, y) in enumerate(zip(prepared.slabs, outputs, strict=True)):
            slab = pre.record.slab
            if config.mask_background:
                y = np.where(pre.mask, y, np.float32(-1.0))  # the head mask of the source: air stays air
            box = _footprint(volume, pre.record)
            if box is not None:
                values = _resample_box(target_map.inverse(y), pre.record, volume, box, target_map.background)
                # Interpolation reaches half a model slice beyond the slab; the slab's levels are the limit.
                keep = _slab_in_box(volume, box, slab.superior_mm, slab.inferior_mm)
                if taken is not None:
                    keep &= ~taken[box]
                    taken[box] |= keep
                out[box][keep] = scanner_units(values[keep], to)
            source = slab.source if n == 0 else "full-fov tile"  # tiles are asked for as levels
            info = {"superior_mm": slab.superior_mm, "inferior_mm": slab.inferior_mm, "source": source}
            if slab.confidence is not None:
                info["confidence"] = slab.confidence
            info["outside_fov_mm"] = round(outside_fov_mm(volume, slab.superior_mm, slab.inferior_mm), 1)
            if (pre.record.localisation or {}).get("jaw_guessed_near_edge"):
                info["jaw_guessed_near_edge"] = True
            infos.append(info)
        prepared.timings["invert"] = prepared.timings.get("invert", 0.0) + time.perf_counter() - start
        from mrct.labels import derivation_description, series_description

        # The source's identity (a DICOM output joins its study), labelled as synthetic.
        labelled = replace(
            volume.source, label=series_description(to), derivation=derivation_description(to, self.package)
        )
        result = Volume(out, volume.affine.copy(), to, labelled)
        return Translation(result, infos, dict(prepared.timings))

    def _preprocess(
        self,
        volume: Volume,
        source: Modality,
        crop: CropRequest,
        timings: dict[str, float],
        intensity: Any = None,
    ) -> Any:
        from mrct.preprocessing.chain import preprocess

        timed = _TimedLocaliser(self.localiser()) if crop.mode == "auto" else None
        start = time.perf_counter()
        try:
            prepared = preprocess(
                volume,
                self.package.preprocessing,
                crop,
                modality=source,
                localiser=timed,  # type: ignore[arg-type]
                intensity=intensity,
            )
        except MrctError as err:  # found on the volume in memory: name the file it came from
            raise err.naming(volume.source.path) from None
        located = timed.seconds if timed else 0.0
        timings["localise"] += located
        timings["preprocess"] += time.perf_counter() - start - located
        return prepared


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


def outside_fov_mm(volume: Volume, superior_mm: float, inferior_mm: float) -> float:
    """How much of a slab (mm along S, both ends together) lies outside the scan's field of
    view; the model saw background there, so the output near that end is less reliable."""
    from mrct.preprocessing.grid import world_extent

    lo, hi = world_extent(volume.shape, volume.affine)
    return max(0.0, superior_mm - float(hi[2])) + max(0.0, float(lo[2]) - inferior_mm)


def scanner_units(values: np.ndarray, to: Modality) -> np.ndarray:
    """Values in the target's units -> what is written: CT HU rounded to int16 in
    [-1024, 3071]; MR float32 in [0, 1000]. NaN becomes the background."""
    if to is Modality.CT:
        hu = np.clip(np.rint(np.nan_to_num(values, nan=CT_OUTPUT_RANGE_HU[0])), *CT_OUTPUT_RANGE_HU)
        return hu.astype(np.int16)
    return np.clip(np.nan_to_num(values, nan=MR_OUTPUT_RANGE[0]), *MR_OUTPUT_RANGE).astype(np.float32)


Box = tuple[slice, slice, slice]


def _footprint(volume: Volume, record: Any) -> Box | None:
    """The input-grid index box that can receive values from the model grid, or None.

    Trilinear sampling reaches one model voxel beyond the grid's outer voxel centres, so
    the model grid's box [-1, n] (in its own indices) is mapped into the input's indices;
    one voxel more on each side absorbs rounding.
    """
    to_input = np.linalg.inv(volume.affine) @ record.grid_affine_array
    corners = np.array(
        [
            [a, b, c, 1.0]
            for a in (-1, record.grid_shape[0])
            for b in (-1, record.grid_shape[1])
            for c in (-1, record.grid_shape[2])
        ]
    ).T
    index = (to_input @ corners)[:3]
    lo = np.maximum(np.floor(index.min(axis=1)) - 1, 0).astype(int)
    hi = np.minimum(np.ceil(index.max(axis=1)) + 1, np.array(volume.shape) - 1).astype(int)
    if (lo > hi).any():
        return None
    return (slice(lo[0], hi[0] + 1), slice(lo[1], hi[1] + 1), slice(lo[2], hi[2] + 1))


def _resample_box(values: np.ndarray, record: Any, volume: Volume, box: Box, fill: float) -> np.ndarray:
    """``values`` on the model grid, sampled at the input voxels of ``box`` (float32)."""
    from mrct.preprocessing.grid import resample_from_grid

    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array([b.start for b in box], float) + volume.affine[:3, 3]
    shape = (box[0].stop - box[0].start, box[1].stop - box[1].start, box[2].stop - box[2].start)
    return resample_from_grid(values, record.grid_affine_array, affine, shape, fill=fill)


def _slab_in_box(volume: Volume, box: Box, superior_mm: float, inferior_mm: float) -> np.ndarray:
    """:func:`mrct.metrics.slab_voxels` restricted to ``box`` (the same sums, so the same voxels)."""
    from mrct.preprocessing.grid import in_slab

    shape = (box[0].stop - box[0].start, box[1].stop - box[1].start, box[2].stop - box[2].start)
    return in_slab(volume.affine, shape, superior_mm, inferior_mm, start=tuple(b.start for b in box))
