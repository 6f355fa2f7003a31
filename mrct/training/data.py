"""Unpaired training samples from a set built by ``mrct prepare``.

Each iteration draws its MR and CT volumes independently (the domains are unpaired).
Item ``i`` of :class:`UnpairedBatches` is the whole batch of iteration ``i``, drawn from a
generator seeded with ``(seed, rank, i)``. So the batches do not depend on the number of
data-loader workers or on where a run was interrupted: a resumed run sees exactly the
batches the uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mrct.config import to_dict
from mrct.errors import ConfigError, InputNotFoundError, ReadError, first_line
from mrct.jsontext import parse_json
from mrct.prepare_manifest import check_manifest
from mrct.preprocessing.augment import apply_augmentation, sample_augmentation
from mrct.training.config import DataConfig

log = logging.getLogger(__name__)
DOMAINS = ("mr", "ct")
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PreparedScan:
    """One prepared volume on the model grid: its file, and its voxel size (D, H, W) in mm."""

    id: str
    image: Path
    spacing_mm: tuple[float, float, float]


@dataclass(frozen=True)
class PreparedSet:
    """The training split of a prepared folder, per domain, and its preprocessing config."""

    root: Path
    scans: dict[str, tuple[PreparedScan, ...]]
    preprocessing: dict[str, Any]
    manifest_sha256: str
    # What training reads of the set: its config and the entries of the split's scans, without
    # where their sources lay. A prepare re-run that adds nothing rewrites the manifest (its
    # times, its settled split) but not this, so a run started on the set still resumes.
    content_sha256: str = ""

    @classmethod
    def open(cls, root: str | Path, split: str = "train", check_arrays: bool = True) -> PreparedSet:
        """Read ``root/manifest.json``; both domains need at least one usable scan in ``split``.

        ``check_arrays=False`` lists the scans without opening their arrays (a packed copy of
        the set, whose arrays are stored compressed under other names)."""
        import hashlib

        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            raise InputNotFoundError("no manifest.json here; build the set with mrct prepare", root)
        try:
            raw = path.read_bytes()
            manifest = parse_json(raw)
            if manifest.get("format") != "mrct-prepared-dataset":
                raise ValueError("not an mrct prepared dataset")
            check_manifest(manifest, path)
            entries = {(e["domain"], e["id"]): e for e in manifest["scans"] if e.get("status") == "ok"}
            split_ids = {d: manifest["split"][d][split] for d in DOMAINS}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ReadError(f"not a readable prepared-set manifest ({err})", path) from err
        if manifest.get("complete") is False:  # see mrct.prepare_manifest.write_manifest
            log.warning(
                "%s: its mrct prepare run did not finish; its train/test split may change when it does "
                "(re-run the same prepare command first)",
                root,
            )
        grid = manifest["config"]["grid"]
        scans: dict[str, tuple[PreparedScan, ...]] = {}
        used: list[dict[str, Any]] = []
        for domain in DOMAINS:
            found = []
            for scan_id in split_ids[domain]:
                entry = entries.get((domain, scan_id))
                if entry is None:
                    continue
                used.append({k: v for k, v in entry.items() if k not in ("source", "error")})
                crop = entry["crop"]
                depth_mm = (crop["superior_mm"] - crop["inferior_mm"]) / grid["depth"]
                spacing = (float(depth_mm), float(grid["inplane_mm"]), float(grid["inplane_mm"]))
                image = root / entry["files"]["image"]
                if check_arrays:
                    _check_array(image, (int(grid["depth"]), int(grid["height"]), int(grid["width"])))
                found.append(PreparedScan(scan_id, image, spacing))
            if not found:
                raise ReadError(f"no prepared {domain.upper()} scan in the {split} split", path)
            scans[domain] = tuple(found)
        content = json.dumps({"config": manifest["config"], "scans": used}, sort_keys=True).encode()
        digests = hashlib.sha256(raw).hexdigest(), hashlib.sha256(content).hexdigest()
        return cls(root, scans, manifest["config"], *digests)

    def check_preprocessing(self, config: Any) -> None:
        """Refuse a training config whose preprocessing differs from the set's."""
        if to_dict(config) != self.preprocessing:
            raise ConfigError(
                "preprocessing: differs from the config this set was prepared with; "
                "prepare the data again with this config, or copy its preprocessing section",
                self.root,
            )

    def describe(self) -> dict[str, Any]:
        """What a model card says about its training data (ids, not patient names)."""
        return {
            "prepared_set": str(self.root.absolute()),  # "." would export as an empty name
            "manifest_sha256": self.manifest_sha256,
            "content_sha256": self.content_sha256,
            "train_scans": {d: len(s) for d, s in self.scans.items()},
        }


def _check_array(path: Path, shape: tuple[int, ...]) -> None:
    """A prepared array is there, readable and on the set's grid: checked when a run starts
    (reading its header only), so a damaged set is one clear error, not a failure in a worker."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ReadError(f"not a readable prepared array ({err}); prepare the set again", path) from err
    if array.shape != shape or array.dtype != np.float32:
        raise ReadError(
            f"prepared array is {array.dtype} {list(array.shape)}, not float32 {list(shape)} as the set's "
            "grid says; prepare the set again",
            path,
        )


class UnpairedBatches:
    """A map-style dataset: item ``i`` is iteration ``i``'s batch ``{"mr": x, "ct": y}``.

    Each array is float32 (B, 1, D, H, W) for a 3D model, or (B, 1, H, W) slices for the 2D
    baselines, with values in [-1, 1].
    """

    def __init__(self, data: PreparedSet, config: DataConfig, seed: int, rank: int = 0) -> None:
        self.data = data
        self.config = config
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        return 2**62  # endless; the trainer's sampler says which iterations to draw

    def __getitem__(self, iteration: int) -> dict[str, Any]:
        import torch

        rng = np.random.default_rng([self.seed, self.rank, iteration])
        try:
            batch = {d: np.stack([self._sample(d, rng) for _ in range(self._volumes())]) for d in DOMAINS}
        except ReadError as err:  # returned, not raised: a worker's exception reaches the trainer
            return {"error": err.message, "path": err.path}  # as a multi-line "Caught ... in worker"
        if self.config.slices != "volume":
            batch = {d: self._slices(v, rng) for d, v in batch.items()}
        return {d: torch.from_numpy(np.ascontiguousarray(v))[:, None] for d, v in batch.items()}

    def _volumes(self) -> int:
        # "sequential" takes all its slices from one volume per domain.
        return 1 if self.config.slices == "sequential" else self.config.batch_size

    def _sample(self, domain: str, rng: np.random.Generator) -> FloatArray:
        scan = self.data.scans[domain][int(rng.integers(len(self.data.scans[domain])))]
        try:
            volume = np.load(scan.image, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:  # changed or removed since the run started
            raise ReadError(
                f"prepared array unreadable ({first_line(err)}); prepare the set again", scan.image
            ) from err
        volume = self._crop(volume, rng)
        if not np.isfinite(volume).all():  # else the run "diverges", and the blame falls on the lr
            raise ReadError("prepared array holds NaN or infinite values; prepare the set again", scan.image)
        params = sample_augmentation(
            self.config.augment, rng, modality=domain.upper(), shape=volume.shape, spacing_mm=scan.spacing_mm
        )
        if params.is_spatial_identity and not params.changes_intensity:
            return np.array(volume, dtype=np.float32)
        return apply_augmentation(params, volume, spacing_mm=scan.spacing_mm)

    def _crop(self, volume: npt.NDArray[Any], rng: np.random.Generator) -> npt.NDArray[Any]:
        if self.config.patch is None:
            return volume
        if any(p > s for p, s in zip(self.config.patch, volume.shape, strict=True)):
            raise ConfigError(f"data.patch {self.config.patch} is larger than the grid {volume.shape}")
        start = [int(rng.integers(s - p + 1)) for p, s in zip(self.config.patch, volume.shape, strict=True)]
        return volume[tuple(slice(a, a + p) for a, p in zip(start, self.config.patch, strict=True))]

    def _slices(self, volumes: FloatArray, rng: np.random.Generator) -> FloatArray:
        """2D baselines: ``random`` takes one random slice of each volume; ``sequential`` takes
        ``batch_size`` consecutive slices of the one volume, in order."""
        depth = volumes.shape[1]
        if self.config.slices == "random":
            picks = rng.integers(depth, size=len(volumes))
            return volumes[np.arange(len(volumes)), picks]
        n = min(self.config.batch_size, depth)
        start = int(rng.integers(depth - n + 1))
        return volumes[0, start : start + n]
