"""Model packages: a folder of safetensors weights, a JSON manifest and a model card.

A package (e.g. ``models/mrct-head-small/``) holds ``generator_mr_to_ct.safetensors``,
``generator_ct_to_mr.safetensors``, ``model.json`` (architecture, preprocessing,
intensity maps, training data, metrics, version, license, sha256 of every weight
file) and ``README.md`` (the card, rendered from ``model.json``). Nothing else is
allowed in the folder and nothing is ever unpickled: weights are read with
safetensors only, after their size and sha256 match the manifest.

Importing this module is cheap: torch and safetensors are imported inside the
functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mrct import __version__
from mrct.config import from_mapping, to_dict
from mrct.errors import ConfigError, ModelError
from mrct.io.atomic import Owned, atomic_dir, check_output
from mrct.model_card import render_card
from mrct.model_manifest import (
    DIRECTIONS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    NAME_PATTERN,
    check_bytes,
    check_sections,
    holds_manifest,
    package_checksum,
    read_manifest,
    safetensors_metadata,
    section_digests,
    sha256_file,
)
from mrct.tensor_files import save_tensors

if TYPE_CHECKING:
    import torch

    from mrct.networks.config import GeneratorConfig
    from mrct.preprocessing.config import PreprocessConfig

__all__ = [
    "DIRECTIONS", "ModelPackage", "PackageSummary", "find_package", "list_packages", "load_package",
    "render_card", "write_package",
]  # fmt: skip

CARD = "README.md"
# What export writes into a package folder: --overwrite replaces a folder holding only these.
PACKAGE_FILES = Owned(re.compile(r"model\.json|README\.md|generator_[a-z_]+\.safetensors"), marker=MANIFEST)
# Formats that can run code when loaded (pickle inside torch.save, joblib, numpy object
# arrays): named explicitly in the refusal so nobody "fixes" it by renaming a checkpoint.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".npy", ".npz", ".joblib", ".tar")
T = TypeVar("T")


def weight_file(direction: str) -> str:
    return f"generator_{direction}.safetensors"


# ----------------------------------------------------------------------------- writing


def write_package(
    out: str | Path,
    *,
    name: str,
    generators: Mapping[str, Mapping[str, torch.Tensor]],
    generator_config: GeneratorConfig | Mapping[str, Any],
    preprocessing: PreprocessConfig | Mapping[str, Any],
    intensity: Mapping[str, Any],
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    license: str,
    description: str,
    overwrite: bool = False,
) -> Path:
    """Write a model package folder at ``out`` and return its path.

    ``generators`` maps a direction (``mr_to_ct``, ``ct_to_mr``) to a generator state
    dict. Each is loaded into a network built from ``generator_config`` before anything
    is written, so a package whose weights do not fit its manifest cannot be made.
    The folder is built beside ``out`` and renamed into place; an existing ``out`` is
    replaced only with ``overwrite`` (the old one is moved aside, then deleted).
    """
    import torch

    from mrct.networks import count_parameters
    from mrct.networks.config import GeneratorConfig
    from mrct.preprocessing.config import PreprocessConfig

    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ModelError(f"name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    unknown = sorted(set(generators) - set(DIRECTIONS))
    if unknown or not generators:
        raise ModelError(f"generators: unknown or no directions {unknown} (expected {', '.join(DIRECTIONS)})")
    check_output(Path(out), overwrite, PACKAGE_FILES)  # before the slow part; atomic_dir checks again
    free = {"intensity": intensity, "training": training, "metrics": metrics}
    free = {key: _json_object(value, key) for key, value in free.items()}
    gen_cfg = _config(GeneratorConfig, _as_dict(generator_config), "generator_config")
    prep_dict = to_dict(_config(PreprocessConfig, _as_dict(preprocessing), "preprocessing"))
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    parameters = 0
    for direction in (d for d in DIRECTIONS if d in generators):
        state = generators[direction]
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise ModelError(f"generators[{direction!r}] must map str to torch.Tensor")
        # safetensors stores plain CPU buffers and refuses tensors that share memory.
        tensors[direction] = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
        parameters = count_parameters(_fit_weights(gen_cfg, tensors[direction], f"generators[{direction!r}]"))
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": str(description),
        "mrct_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "license": str(license),
        "architecture": {"generator": to_dict(gen_cfg), "parameters": parameters},
        "preprocessing": prep_dict,
        **free,
        "files": {},
        "directions": {d: weight_file(d) for d in tensors},
    }
    with atomic_dir(Path(out), PACKAGE_FILES, overwrite=overwrite) as tmp:
        for direction, state in tensors.items():
            target = tmp / weight_file(direction)
            save_tensors(state, target, metadata={"mrct_direction": direction, **section_digests(manifest)})
            manifest["files"][target.name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
        text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
        (tmp / MANIFEST).write_text(text, encoding="utf-8")
        (tmp / CARD).write_text(render_card(manifest), encoding="utf-8")
    return Path(out)


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class ModelPackage:
    """A verified package. ``manifest`` is the parsed ``model.json`` (do not mutate);
    ``checksum`` is a sha256 over the exact ``model.json`` bytes and every weight
    file's sha256, as verified when the package was loaded."""

    path: Path
    manifest: dict[str, Any]
    checksum: str

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(d for d in DIRECTIONS if d in self.manifest["directions"])

    @property
    def generator_config(self) -> GeneratorConfig:
        from mrct.networks.config import GeneratorConfig

        generator = self.manifest["architecture"].get("generator")
        return _config(GeneratorConfig, generator, "architecture.generator", self.path / MANIFEST)

    @property
    def preprocessing(self) -> PreprocessConfig:
        from mrct.preprocessing.config import PreprocessConfig

        return _config(
            PreprocessConfig, self.manifest["preprocessing"], "preprocessing", self.path / MANIFEST
        )

    def load_generator(self, direction: str, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The generator for ``direction`` in eval mode on ``device``.

        The file is read once and hashed again before it is parsed, so what runs is
        exactly what the manifest lists, even if the file changed after loading.
        """
        import safetensors.torch

        if direction not in DIRECTIONS:
            raise ModelError(f"unknown direction {direction!r} (expected {', '.join(DIRECTIONS)})", self.path)
        if direction not in self.manifest["directions"]:
            raise ModelError(f"this package has no {direction} generator", self.path)
        file = self.path / self.manifest["directions"][direction]
        try:
            data = file.read_bytes()
        except OSError as err:
            raise ModelError(f"cannot read ({err.strerror})", file) from err
        check_bytes(file, len(data), hashlib.sha256(data).hexdigest(), self.manifest["files"][file.name])
        try:
            state = safetensors.torch.load(data)
        except Exception as err:  # safetensors raises its own SafetensorError on bad headers
            raise ModelError(f"not a readable safetensors file ({err})", file) from err
        metadata = safetensors_metadata(file, data)  # parsed above
        _check_label(metadata, direction, file)
        check_sections(self.manifest, metadata, file, self.path / MANIFEST)
        net = _fit_weights(self.generator_config, state, str(file))
        return net.to(device).eval()


@dataclass(frozen=True)
class PackageSummary:
    """One line of ``list_packages``: the manifest's headline, or why it cannot be read.
    Weight checksums are not verified here (``load_package`` does that)."""

    path: Path
    name: str
    description: str = ""
    license: str = ""
    mrct_version: str = ""
    created: str = ""
    directions: tuple[str, ...] = ()
    problem: str | None = None


def load_package(path: str | Path) -> ModelPackage:
    """Read and verify the package folder at ``path``; raise ``ModelError`` on any problem."""
    try:
        return _load_package(Path(path))
    except OSError as err:  # permissions, a file vanishing mid-check: still exit code 7
        raise ModelError(f"cannot read ({err.strerror})", err.filename or path) from err


def _load_package(folder: Path) -> ModelPackage:
    manifest, raw = read_manifest(folder)
    files: dict[str, Any] = manifest["files"]
    root = Path(os.path.realpath(folder))
    present: set[str] = set()
    for entry in sorted(folder.iterdir()):
        present.add(entry.name)
        if entry.name not in files and entry.name not in (MANIFEST, CARD):
            if entry.suffix.lower() in PICKLE_SUFFIXES:
                raise ModelError(
                    "pickle-capable file in a model folder; mrct never loads these (remove it)", entry
                )
            raise ModelError("unexpected file in a model folder (not listed in model.json files)", entry)
        # realpath, unlike Path.resolve on Python 3.11, does not raise on a symlink loop.
        if entry.is_symlink() and not Path(os.path.realpath(entry)).is_relative_to(root):
            raise ModelError("symlink points outside the model folder", entry)
        if not entry.is_file():
            raise ModelError("not a regular file", entry)
    if CARD not in present:  # a package describes itself: what it is for, on what data, how good
        raise ModelError("model card missing from the model folder; export the package again", folder / CARD)
    for file_name, expected in sorted(files.items()):
        file = folder / file_name
        if file_name not in present:
            raise ModelError("weight file listed in model.json is missing", file)
        size = file.stat().st_size  # cheap check first: a truncated file is not hashed
        check_bytes(file, size, sha256_file(file) if size == expected["bytes"] else "", expected)
    metadata = {name: safetensors_metadata(folder / name) for name in sorted(files)}
    for direction, name in manifest["directions"].items():
        _check_label(metadata[name], direction, folder / name)
    # Fail now, not at inference time, when the configs no longer parse.
    package = ModelPackage(folder, manifest, package_checksum(raw, files))
    _ = package.generator_config, package.preprocessing
    for name in sorted(files):  # after the checks above, whose messages say more
        check_sections(manifest, metadata[name], folder / name, folder / MANIFEST)
    return package


def _check_label(metadata: Mapping[str, str], direction: str, file: Path) -> None:
    # Both generators have the same shapes: only the file's own label tells them apart.
    saved = metadata.get("mrct_direction", direction)
    if saved != direction:
        raise ModelError(f"holds the {saved} generator, but model.json lists it as {direction}", file)


def find_package(name_or_path: str | Path, search_dirs: Sequence[str | Path]) -> Path:
    """An existing folder is used as is; otherwise ``name_or_path`` is a package name looked up
    as ``<dir>/<name>/model.json`` in ``search_dirs``, in order, then as the name a package's
    model.json gives it (which ``mrct models list`` shows)."""
    given = Path(name_or_path)
    if given.is_dir():
        return given
    name = str(name_or_path)
    if NAME_PATTERN.fullmatch(name):
        for directory in search_dirs:
            if (Path(directory) / name / MANIFEST).is_file():
                return Path(directory) / name
        # The name its model.json gives it, as `mrct models list` shows it (export --name); the
        # folders in order, as for a folder's name.
        for directory in search_dirs:
            named = [s.path for s in list_packages([directory]) if s.name == name and s.problem is None]
            if len(named) > 1:
                where = ", ".join(str(p) for p in named)
                raise ModelError(f"several packages are named {name!r} ({where}); give the folder")
            if named:
                return named[0]
    if given.exists():
        raise ModelError("not a model package folder (a file; give the folder holding model.json)", given)
    if "/" in name or "\\" in name:  # a path (names have no slash), and nothing is there
        raise ModelError("no such model folder", given)
    listed = list_packages(search_dirs)
    available = sorted({s.name for s in listed} | {s.path.name for s in listed})
    searched = ", ".join(str(d) for d in search_dirs) or "no folders"
    raise ModelError(
        f"unknown model {name!r} (available: {', '.join(available) or 'none'}; searched {searched})"
    )


def list_packages(search_dirs: Sequence[str | Path]) -> list[PackageSummary]:
    """Every ``<dir>/<folder>/model.json`` in ``search_dirs``; unreadable ones carry ``problem``."""
    found: list[PackageSummary] = []
    for directory in search_dirs:
        if not Path(directory).is_dir():
            continue
        for folder in sorted(p for p in Path(directory).iterdir() if holds_manifest(p)):
            try:
                m, _ = read_manifest(folder)
            except (ModelError, OSError) as err:  # one unreadable package stopped the listing
                problem = str(err) if isinstance(err, ModelError) else f"{folder}: {err.strerror or err}"
                found.append(PackageSummary(folder, folder.name, problem=problem))
                continue
            directions = tuple(d for d in DIRECTIONS if d in m["directions"])
            headline = (m["name"], m["description"], m["license"], m["mrct_version"], m["created"])
            found.append(PackageSummary(folder, *headline, directions))
    return found


# ----------------------------------------------------------------------------- helpers


def _as_dict(config: Any) -> Any:
    return config if isinstance(config, Mapping) else to_dict(config)


def _json_object(value: Any, key: str) -> dict[str, Any]:
    """A plain JSON copy of ``value``; NaN/inf and non-JSON types are refused, not coerced."""
    if not isinstance(value, Mapping):
        raise ModelError(f"{key} must be a mapping, got {type(value).__name__}")
    try:
        copy: dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ModelError(f"{key} is not plain JSON ({err})") from err
    return copy


def _config(cls: type[T], data: Any, where: str, path: Path | None = None) -> T:
    """``from_mapping`` with the problem reported as a ``ModelError`` (exit code 7)."""
    try:
        return from_mapping(cls, data, where)
    except ConfigError as err:
        raise ModelError(f"bad configuration: {err.message}", path) from err


def _fit_weights(config: GeneratorConfig, state: Mapping[str, torch.Tensor], where: str) -> torch.nn.Module:
    """Build the generator and load ``state`` strictly; name the first mismatch."""
    import torch

    from mrct.networks import build_generator

    # Shapes first, from a network without storage: an edited model.json (ngf 100000, or 100000
    # blocks) made the real one exhaust memory before any comparison. Each block holds weights,
    # so a file with fewer tensors than blocks cannot fit (and the skeleton stays small).
    if config.n_residual_blocks > len(state):
        raise ModelError(
            f"weights do not fit the architecture: {config.n_residual_blocks} residual blocks, "
            f"but the weights hold {len(state)} tensors",
            where,
        )
    with torch.device("meta"):
        expected = build_generator(config).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    for label, keys in (("missing key", missing), ("unexpected key", unexpected), ("wrong shape for", wrong)):
        if keys:
            more = f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""
            detail = ""
            if label == "wrong shape for":
                detail = f" {tuple(state[keys[0]].shape)}, expected {tuple(expected[keys[0]].shape)}"
            raise ModelError(f"weights do not fit the architecture: {label} {keys[0]}{detail}{more}", where)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ModelError(f"weights hold NaN or infinite values in {bad[0]}", where)
    # The random initial weights are overwritten below; drawing them from a forked
    # RNG keeps loading a model from shifting the caller's seeded random stream.
    with torch.random.fork_rng(devices=[]):
        net = build_generator(config)
    net.load_state_dict(dict(state), strict=True)
    return net
