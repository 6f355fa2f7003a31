"""The manifest of a prepared set: its seeded train/test split (independent of input order,
per domain), and how it is read and written (atomically, checksummed)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mrct import __version__
from mrct.errors import InputNotFoundError, OutputExistsError, ReadError
from mrct.io.atomic import atomic_file
from mrct.jsontext import parse_json

MANIFEST_VERSION = 1
DOMAINS = ("mr", "ct")  # a prepared set's folders and split keys, in manifest order
TRAIN_TENTHS = 7  # 70 % train, 30 % test, per domain


def split_ids(ids: Iterable[str], seed: int, hold_out_from: str | None = None) -> dict[str, list[str]]:
    """A seeded 70/30 train/test split: sort ids, permute with ``default_rng(seed)``, take the
    first 70 % (rounded half up) for training, keeping at least one test id when there are two.

    With ``hold_out_from`` (a shell pattern on ids, e.g. ``IXI*``), only matching ids are
    split; the others always train (say, the few scans of a rarer scanner or format).
    """
    ids = list(ids)
    if hold_out_from is not None:
        always = sorted(i for i in ids if not fnmatch.fnmatchcase(i, hold_out_from))
        split = split_ids([i for i in ids if fnmatch.fnmatchcase(i, hold_out_from)], seed)
        return {"train": sorted(split["train"] + always), "test": split["test"]}
    ordered = sorted(ids)
    n = len(ordered)
    n_train = (TRAIN_TENTHS * n + 5) // 10
    if n >= 2:
        n_train = min(max(n_train, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "train": sorted(ordered[i] for i in perm[:n_train]),
        "test": sorted(ordered[i] for i in perm[n_train:]),
    }


def keep_split(
    ids: Iterable[str], seed: int, hold_out_from: str | None, earlier: dict[str, list[str]] | None
) -> dict[str, list[str]]:
    """:func:`split_ids`, except that ids an earlier run of the same seed and pattern placed
    keep their side: adding scans to a set must not move a test scan into training, where a
    model trained on the first split would then be evaluated on what it saw (as nnU-Net keeps
    its splits_final.json). Only the new ids are split, among themselves."""
    ids = list(ids)
    placed = {side: set((earlier or {}).get(side) or ()) for side in ("train", "test")}
    new = [i for i in ids if i not in placed["train"] | placed["test"]]
    fresh = split_ids(new, seed, hold_out_from)
    return {side: sorted([i for i in ids if i in placed[side]] + fresh[side]) for side in ("train", "test")}


def stable_ids(
    scans: list[Any], entries: dict[Any, dict[str, Any]]
) -> tuple[list[Any], list[tuple[Any, str]]]:
    """Give ``scans`` (ScanInputs) the ids an earlier run gave them, their source checksums, and
    drop the ones given twice.

    Every scan is hashed once (the worker and the reuse check take the checksum from here). A
    scan keeps the id of an earlier entry with the same source (resolved path and series), or
    failing that the id of an earlier entry, not given this run, with the same content: the data
    folder moved. A new scan whose name an earlier entry that stays holds gets a suffix instead
    of taking over that scan's files and side. A scan whose content another scan of this run
    already has is dropped (a copy under another name, a series given as a folder and inside a
    tree): it was prepared twice and could sit on both sides of the split. Returns the scans to
    prepare and ``(scan, id of its twin)`` for each dropped.
    """
    from dataclasses import replace

    def where(path: str | Path, series: Any) -> tuple[str, str]:
        return (os.path.realpath(path), str(series or ""))

    hashed = [replace(scan, checksum=_source_checksum(scan.files)) for scan in scans]
    given = {(scan.domain, *where(scan.path, scan.series)) for scan in hashed}
    old = [(e, (e["domain"], *where(e["source"], e.get("series")))) for e in entries.values()]
    by_source = {key: e["id"] for e, key in old}
    # Earlier entries not given this run: the ok ones stay (and may have moved), failed ones go.
    orphans = {
        (e["domain"], e.get("source_checksum")): e["id"]
        for e, key in old
        if key not in given and e.get("status") == "ok"
    }
    owners = {
        (e["domain"], e["id"].lower()): key[1:] for e, key in old if key in given or e.get("status") == "ok"
    }
    # Scans matched by source first, so that they keep their content's id against a copy.
    ordered = sorted(
        enumerate(hashed),
        key=lambda n_s: (n_s[1].domain, *where(n_s[1].path, n_s[1].series)) not in by_source,
    )
    kept: list[tuple[int, Any]] = []
    dropped: list[tuple[Any, str]] = []
    seen: dict[tuple[str, str], str] = {}
    for n, scan in ordered:
        source = where(scan.path, scan.series)
        content = (scan.domain, scan.checksum)
        if scan.checksum and content in seen:
            dropped.append((scan, seen[content]))
            continue
        if (scan.domain, *source) in by_source:
            scan = replace(scan, id=by_source[(scan.domain, *source)])
        elif scan.checksum and content in orphans:
            scan = replace(scan, id=orphans[content])
        elif owners.get((scan.domain, scan.id.lower()), source) != source:
            suffix = hashlib.sha1("#".join(source).encode()).hexdigest()[:8]
            scan = replace(scan, id=f"{scan.id}-{suffix}")
        seen[content] = scan.id
        kept.append((n, scan))
    return [scan for _, scan in sorted(kept, key=lambda n_s: n_s[0])], dropped


def _source_checksum(files: tuple[Path, ...]) -> str:
    """A scan's source checksum, or "" when its files cannot be read (preparing it says why)."""
    from mrct.io.discover import sha256_files

    try:
        return sha256_files(files)
    except OSError:
        return ""


def write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` atomically; returns its SHA-256."""
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def load_manifest(
    path: Path, config: dict[str, Any], seed: int = 0, hold_out_from: str | None = None
) -> dict[str, Any]:
    """The manifest of an earlier ``mrct prepare`` into this folder ({} if none), when this run
    may add to it: the same preprocessing config, seed and ``--hold-out-from``."""
    if not path.exists():
        return {}
    try:
        manifest = parse_json(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("scans", []), list):
            raise ValueError("not a manifest")
    except (OSError, ValueError) as err:
        raise ReadError(f"not a readable manifest ({err}); use a new output folder", path) from err
    if manifest.get("format") not in (None, "mrct-prepared-dataset"):  # a batch's manifest, say
        raise OutputExistsError(f"holds the manifest of a {manifest.get('format')}, not a prepared set", path)
    check_manifest(manifest, path)
    if manifest.get("config") != config:
        raise OutputExistsError(
            "this folder was prepared with another preprocessing config; use a new output folder", path
        )
    # Another seed would split the set anew and move test scans into training.
    if (manifest.get("seed", seed), manifest.get("hold_out_from")) != (seed, hold_out_from):
        given = f"--seed {manifest.get('seed')}"
        given += (
            f" --hold-out-from '{manifest['hold_out_from']}'"
            if manifest.get("hold_out_from") is not None
            else " and no --hold-out-from"  # what differs may be that alone
        )
        raise OutputExistsError(
            f"this folder was split with {given}; give the same to add scans to it, or use a new output "
            "folder for a new split",
            path,
        )
    return manifest


def check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """What the readers of a manifest use, checked before they use it: a hand-edited or damaged
    one is one error naming it, not a KeyError or a division by a string part-way."""
    version = manifest.get("version", MANIFEST_VERSION)
    if version != MANIFEST_VERSION:
        raise ReadError(
            f"a prepared-set manifest of version {version!r} (mrct {manifest.get('mrct_version', '?')}); "
            f"this mrct reads version {MANIFEST_VERSION}: prepare the set again into a new folder",
            path,
        )
    if problem := _manifest_problem(manifest):
        raise ReadError(f"not a readable prepared-set manifest ({problem}); prepare the set again", path)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    grid = manifest.get("config", {}).get("grid") if isinstance(manifest.get("config"), dict) else None
    if not isinstance(grid, dict):
        return "config.grid is missing"
    for key in ("depth", "height", "width", "inplane_mm"):
        value: Any = grid.get(key)
        if not _number(value) or value <= 0 or (key != "inplane_mm" and not isinstance(value, int)):
            return f"config.grid.{key} is {value!r}"
    for n, entry in enumerate(manifest.get("scans", [])):
        where = f"scans[{n}]"
        if not isinstance(entry, dict):
            return f"{where} is not an object"
        for key in ("domain", "id", "status"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                return f"{where}.{key} is {entry.get(key)!r}"
        if entry["domain"] not in DOMAINS:
            return f"{where}.domain is {entry['domain']!r}"
        if entry["status"] != "ok":
            continue
        crop, files = entry.get("crop"), entry.get("files")
        levels = ("superior_mm", "inferior_mm")
        if not isinstance(crop, dict) or not all(_number(crop.get(k)) for k in levels):
            return f"{where}.crop has no superior_mm and inferior_mm"
        if crop["superior_mm"] <= crop["inferior_mm"]:
            return f"{where}.crop is empty (superior_mm {crop['superior_mm']} is not above inferior_mm)"
        if not isinstance(files, dict) or not isinstance(files.get("image"), str):
            return f"{where}.files.image is missing"
    return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_manifest(
    path: Path,
    created: str,
    seed: int,
    config: dict[str, Any],
    entries: dict[Any, Any],
    hold_out_from: str | None = None,
    earlier: dict[str, Any] | None = None,
    complete: bool = True,
) -> None:
    """Write the manifest; ``earlier`` (the folder's previous manifest) keeps its split when
    made with the same seed and ``hold_out_from`` (see :func:`keep_split`).

    ``split`` lists the scans prepared now; ``placed`` every scan ever placed, with its side,
    including one that fails in this run: when it is repaired it goes back to its side (a test
    scan that failed once came back in training).

    A run rewrites its manifest after each scan with ``complete`` false, and at its end with
    ``complete`` true. Only a complete run's placements bind the next run: the split written
    part-way placed the scans done so far among themselves, so a run killed and resumed would
    otherwise hold out other scans than one left to finish. ``settled_split`` carries the binding
    placements along.
    """
    scans = [entries[k] for k in sorted(entries)]
    earlier = earlier or {}
    same = earlier.get("seed") == seed and earlier.get("hold_out_from") == hold_out_from
    binding = (
        ("placed" if "placed" in earlier else "split") if earlier.get("complete", True) else "settled_split"
    )
    before = earlier.get(binding) if same else None
    before = before if isinstance(before, dict) else {}
    ok = {d: [e["id"] for e in scans if e["domain"] == d and e["status"] == "ok"] for d in DOMAINS}
    split = {d: keep_split(ids, seed, hold_out_from, before.get(d)) for d, ids in ok.items()}
    placed = {
        d: {
            side: sorted({*(before.get(d) or {}).get(side, ()), *split[d][side]})
            for side in ("train", "test")
        }
        for d in DOMAINS
    }
    manifest = {
        "format": "mrct-prepared-dataset",
        "version": MANIFEST_VERSION,
        "mrct_version": __version__,
        "created": created,
        "updated": now(),
        "seed": seed,
        "hold_out_from": hold_out_from,
        "config": config,
        "split": split,
        "placed": placed,
        "complete": complete,
        "settled_split": before,
        "scans": scans,
    }
    write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())


def mr_test_split(prepared: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A prepared set's manifest and the entries of its MR test split (what evaluation and the
    reproduction pipelines translate); a missing or unreadable manifest is one clear error."""
    path = prepared / "manifest.json"
    if not path.is_file():
        raise InputNotFoundError("no manifest.json here; give a set built by mrct prepare", prepared)
    try:
        manifest = parse_json(path.read_text(encoding="utf-8"))
        by_id = {e["id"]: e for e in manifest["scans"] if e["domain"] == "mr"}
        return manifest, [by_id[i] for i in manifest["split"]["mr"]["test"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ReadError(f"not a readable prepared-set manifest ({err!r})", path) from None
