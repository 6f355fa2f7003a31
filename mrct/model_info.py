"""``mrct models list`` and ``mrct models info``: what a model package is, checksums verified.

Part of the public API (:mod:`mrct.api` re-exports it); nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mrct.models import PackageSummary


@dataclass(frozen=True)
class ModelInfo:
    """What ``mrct models info`` reports about a package whose checksums all matched."""

    path: str
    name: str
    description: str
    license: str
    mrct_version: str
    created: str
    directions: tuple[str, ...]
    parameters: int
    grid: dict[str, object]
    checksum: str  # sha256 over model.json and every weight file's sha256
    files_verified: int
    version_note: str | None = None  # set when another mrct release line made the package


def _release_line(version: str) -> tuple[int, ...]:
    """The major version, or ``(0, minor)`` before 1.0 (where minor releases may break)."""
    import re

    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]] or [-1]
    return tuple(numbers[:2]) if numbers[0] == 0 else tuple(numbers[:1])


def list_models(search_dirs: Sequence[str | Path] | None = None) -> list[PackageSummary]:
    """The model packages in ``search_dirs`` (default: the repository's ``models/``), unverified."""
    from mrct.api_args import paths_arg
    from mrct.errors import InputNotFoundError
    from mrct.inference import REPO_MODELS
    from mrct.models import list_packages

    folders = paths_arg(search_dirs, "search_dirs") if search_dirs else None
    for folder in folders or ():
        if not folder.is_dir():  # else "no model packages in it", as if it were empty
            raise InputNotFoundError("no such folder", folder)
    return list_packages(list(folders or [REPO_MODELS]))


def model_info(name_or_path: str | Path, search_dirs: Sequence[str | Path] | None = None) -> ModelInfo:
    """Load a package by folder or name, verify every checksum and load each generator into the
    architecture model.json describes (``ModelError`` otherwise)."""
    from mrct import __version__
    from mrct.api_args import path_arg, paths_arg
    from mrct.inference import REPO_MODELS
    from mrct.models import find_package, load_package

    path_arg(name_or_path, "name_or_path")
    folders = paths_arg(search_dirs, "search_dirs") if search_dirs else [REPO_MODELS]
    package = load_package(find_package(name_or_path, folders))
    for direction in package.directions:
        # Checksums prove the files are the ones listed, not that they fit the architecture
        # model.json describes (an edited ngf, say): load each, as translate would.
        package.load_generator(direction, "cpu")
    m = package.manifest
    made = str(m["mrct_version"])
    note = None
    if _release_line(made) != _release_line(__version__):
        note = f"made by mrct {made}, another release line than this mrct {__version__}; results may differ"
    return ModelInfo(
        path=str(package.path),
        name=package.name,
        description=str(m["description"]),
        license=str(m["license"]),
        mrct_version=made,
        created=str(m["created"]),
        directions=package.directions,
        parameters=int(m["architecture"].get("parameters", 0)),
        grid=dict(m["preprocessing"].get("grid", {})),
        checksum=package.checksum,
        files_verified=len(m["files"]),
        version_note=note,
    )
