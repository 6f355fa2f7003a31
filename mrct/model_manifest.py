"""The manifest (``model.json``) of a model package: its schema, and the checks that run
before any weight file is read (shape of the JSON, plain safetensors file names, sizes and
sha256). Split from :mod:`mrct.models`; nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from mrct.errors import ModelError
from mrct.jsontext import parse_json

FORMAT = "mrct-model"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20
MANIFEST = "model.json"
# model.json's top-level keys and their JSON types; all are required.
SCHEMA: dict[str, type] = {
    "format": str, "format_version": int, "name": str, "description": str, "mrct_version": str,
    "created": str, "license": str, "architecture": dict, "preprocessing": dict, "intensity": dict,
    "training": dict, "metrics": dict, "files": dict, "directions": dict,
}  # fmt: skip
DIRECTIONS = ("mr_to_ct", "ct_to_mr")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


# The parts of model.json that change what a package computes. Export records a digest of each
# in every weight file's safetensors metadata, so that one edited after export is refused, while
# what only the card reads (description, training record, metrics, licence) may be completed:
# the bundled package's evaluation was added to its model.json after export.
BOUND_SECTIONS = ("architecture", "preprocessing", "intensity", "directions")
BOUND_PREFIX = "mrct_sha256_"


def section_digests(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Safetensors metadata binding a weight file to ``manifest``'s bound sections."""
    digests = {}
    for key in BOUND_SECTIONS:
        text = json.dumps(manifest[key], sort_keys=True, separators=(",", ":"), allow_nan=False)
        digests[BOUND_PREFIX + key] = hashlib.sha256(text.encode()).hexdigest()
    return digests


def check_sections(
    manifest: Mapping[str, Any], metadata: Mapping[str, str], weights: Path, file: Path
) -> None:
    """Refuse a model.json (``file``) whose bound sections differ from those ``weights`` were
    exported with. Weights exported before mrct recorded them hold none: nothing to compare."""
    if not any(key.startswith(BOUND_PREFIX) for key in metadata):
        return
    try:
        expected = section_digests(manifest)
    except ValueError:  # NaN or Infinity, which Python's JSON reads but export never writes
        raise ModelError("holds NaN or Infinity, which export never writes: it was changed", file) from None
    for key in BOUND_SECTIONS:
        recorded = metadata.get(BOUND_PREFIX + key)
        if recorded is not None and recorded != expected[BOUND_PREFIX + key]:
            raise ModelError(
                f"{key} is not what {weights.name} was exported with: model.json was changed "
                "after export (export the model again, or restore it)",
                file,
            )


def safetensors_metadata(file: Path, data: bytes | None = None) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its header alone (``data``: the
    file's bytes, when already read)."""
    if data is None:
        with open(file, "rb") as fh:
            head = fh.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = fh.read(size) if 0 < size <= 100_000_000 else b""
    else:
        size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
        header = data[8 : 8 + size] if 0 < size <= 100_000_000 else b""
    try:
        parsed = parse_json(header)
    except ValueError:
        raise ModelError("not a readable safetensors file (its header is not JSON)", file) from None
    metadata = parsed.get("__metadata__") if isinstance(parsed, dict) else None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def read_manifest(folder: Path) -> tuple[dict[str, Any], bytes]:
    """Parse ``model.json`` and check its shape (not the weight files)."""
    file = folder / MANIFEST
    if not folder.is_dir():
        raise ModelError("not a model folder (no such directory)", folder)
    if not file.is_file():
        raise ModelError("model.json is missing; not a model package", file)
    try:
        length = file.stat().st_size
        if length > MAX_MANIFEST_BYTES:  # a few KB; read whole otherwise (a 4 GB one ran out of memory)
            raise ModelError(f"model.json is {length} bytes; a model package's is a few KB", file)
        raw = file.read_bytes()
    except OSError as err:
        raise ModelError(f"cannot read model.json ({err.strerror or err})", file) from err
    try:
        manifest = parse_json(raw, object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"not valid JSON ({str(err).splitlines()[0]})", file) from err
    if not isinstance(manifest, dict):
        raise ModelError("must hold a JSON object", file)
    missing = [k for k in SCHEMA if k not in manifest]
    if missing:
        raise ModelError(f"missing keys: {', '.join(missing)}", file)
    if manifest["format"] != FORMAT:
        raise ModelError(f"format is {manifest['format']!r}, expected {FORMAT!r}", file)
    version = manifest["format_version"]
    if type(version) is not int:
        given = f"{version!r} (a {type(version).__name__})"
        raise ModelError(f"format_version must be the integer {FORMAT_VERSION}, got {given}", file)
    if version != FORMAT_VERSION:
        hint = "; upgrade mrct" if version > FORMAT_VERSION else ""
        supported = f"this mrct reads format_version {FORMAT_VERSION}"
        raise ModelError(f"format_version {version!r} is not supported ({supported}){hint}", file)
    for key, kind in SCHEMA.items():
        if not isinstance(manifest[key], kind):
            raise ModelError(f"{key} must be a JSON {'string' if kind is str else 'object'}", file)
    for file_name, entry in manifest["files"].items():
        check_file_name(file_name, file)
        size, sha256 = (entry.get("bytes"), entry.get("sha256")) if isinstance(entry, dict) else (0, 0)
        if not (
            type(size) is int and size >= 0 and isinstance(sha256, str) and SHA256_PATTERN.fullmatch(sha256)
        ):
            raise ModelError(f"files.{file_name}: needs sha256 (64 hex digits) and bytes (an integer)", file)
    if not manifest["directions"]:  # models info said "verified: ok", then translate had no model
        raise ModelError(f"directions lists no generator (expected {' and/or '.join(DIRECTIONS)})", file)
    for direction, file_name in manifest["directions"].items():
        if direction not in DIRECTIONS:
            raise ModelError(f"unknown direction {direction!r} (expected {', '.join(DIRECTIONS)})", file)
        if not isinstance(file_name, str):
            raise ModelError(f"directions.{direction} must name a file (a JSON string)", file)
        if file_name not in manifest["files"]:
            raise ModelError(f"directions.{direction}: {file_name!r} is not listed in files", file)
    parameters = manifest["architecture"].get("parameters", 0)  # shown by mrct models info
    if not (type(parameters) is int and parameters >= 0):
        raise ModelError(f"architecture.parameters must be a count (an integer), got {parameters!r}", file)
    return manifest, raw


def holds_manifest(folder: Path) -> bool:
    """A package folder, readable or not (``mrct models list`` shows an unreadable one's problem)."""
    try:
        return (folder / MANIFEST).is_file()
    except OSError:
        return folder.is_dir()


def check_file_name(file_name: str, manifest_file: Path) -> None:
    """Manifest names are plain file names inside the folder: no path can escape it."""
    parts = (*PurePosixPath(file_name).parts, *PureWindowsPath(file_name).parts)
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).is_absolute() or ".." in parts:
        raise ModelError(f"files: {file_name!r} escapes the model folder", manifest_file)
    if not NAME_PATTERN.fullmatch(file_name):  # no slashes or backslashes: no sub-folders
        raise ModelError(f"files: {file_name!r} is not a plain file name", manifest_file)
    if not file_name.endswith(".safetensors"):
        raise ModelError(f"files: {file_name!r} is not .safetensors (the only weight format)", manifest_file)


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of duplicate keys silently; a doubled "sha256" could hide an edit.
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"duplicate keys: {', '.join(dupes)}")
    return dict(pairs)


def check_bytes(file: Path, size: int, sha256: str, expected: Mapping[str, Any]) -> None:
    if size != expected["bytes"]:
        raise ModelError(
            f"size is {size} bytes, model.json says {expected['bytes']}; the file was changed", file
        )
    if sha256 != expected["sha256"]:
        got = f"model.json {expected['sha256'][:12]}…, file {sha256[:12]}…"
        raise ModelError(f"sha256 mismatch ({got}); the file was changed or is corrupt", file)


def sha256_file(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_checksum(manifest_bytes: bytes, files: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(manifest_bytes)
    for file_name in sorted(files):
        digest.update(f"\0{file_name}\0{files[file_name]['sha256']}".encode())
    return digest.hexdigest()
