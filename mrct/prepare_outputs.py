"""What ``mrct prepare`` writes for one scan, and when an earlier run's output still holds.

The QC picture of a prepared or failed scan; the files of a prepared scan (see
:mod:`mrct.prepare`), written under temporary names and renamed, and its manifest entry; the
checks that let a re-run skip a scan already prepared, and the one that the output folder may
be written at all.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mrct.errors import OutputExistsError
from mrct.io.atomic import check_outside
from mrct.io.discover import sha256_files
from mrct.prepare_manifest import write_bytes
from mrct.preprocessing.crop import CropRequest

if TYPE_CHECKING:
    from mrct.prepare import ScanInput, ScanOutcome
    from mrct.volume import Volume

log = logging.getLogger(__name__)


def prepared_scan_image(
    volume: Volume, levels: tuple[float, float], label: str, outside_fov_mm: float = 0.0
) -> npt.NDArray[np.uint8]:
    """``mrct prepare``'s picture of a prepared scan: the slab (superior, inferior; RAS mm),
    saying how much of it lies outside the scan (filled with background)."""
    notes = []
    if outside_fov_mm > 0:
        notes.append(f"{outside_fov_mm:.1f} mm of the slab is outside the scan: filled with background")
    from mrct import qc

    return qc.slab_qc_image(volume, *levels, label=label, notes=notes)


def failed_scan_image(
    volume: Volume | None, levels: tuple[float | None, float | None], label: str, reason: str
) -> npt.NDArray[np.uint8] | None:
    """``mrct prepare``'s picture of a scan that failed: the levels that were found and refused
    (None: nothing located, the plain views) and ``FAILED: reason`` in red. None when the
    scan could not be read, or when even this picture cannot be drawn."""
    from mrct import qc

    if volume is None:
        return None
    try:
        return qc.slab_qc_image(volume, *levels, label=label, failure=reason)
    except Exception:  # the picture is evidence, never a second way to fail
        log.debug("%s: no QC picture", label, exc_info=True)
        return None


def check_output_folder(out: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse (exit 4), before any work, an output that is a file, is an input, holds an input
    where prepare writes (``mr/``, ``ct/``, ``qc/``), or already has such folders but no
    manifest.json (someone else's): it wrote into the MR input folder. Other files may share
    the folder (a pipeline keeps its selection and links to the chosen series there)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError("is not a folder; mrct prepare writes a folder here", out)
    target = Path(os.path.realpath(out))
    written = [target / d for d in ("mr", "ct", "qc")]
    for given in inputs:
        source = Path(os.path.realpath(given))
        if source == target or any(source == w or source.is_relative_to(w) for w in written):
            raise OutputExistsError(
                f"the output folder is, or writes over, the input {given}; choose another", out
            )
        check_outside(Path(given), out)  # inputs are never modified
    if out.is_dir() and not (out / "manifest.json").exists():
        theirs = sorted(d for d in ("mr", "ct", "qc") if (out / d).exists())
        if theirs:
            raise OutputExistsError(
                f"holds {theirs[0]}/ but no manifest.json, so it is not a prepared set; choose another",
                out,
            )


def relpaths(domain: str, scan_id: str) -> dict[str, str]:
    return {
        "image": f"{domain}/{scan_id}.npy",
        "mask": f"{domain}/{scan_id}_mask.npy",
        "record": f"{domain}/{scan_id}.json",
        "qc": f"qc/{domain}/{scan_id}.png",
    }


def _npy_bytes(array: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def crop_request_dict(crop: CropRequest) -> dict[str, Any]:
    """What a prepared scan's slab was asked to be, as recorded in its manifest entry: reuse of an
    earlier output needs the same request (the markups file's levels count, not its path)."""
    return {"mode": crop.mode, "superior_mm": crop.superior_mm, "inferior_mm": crop.inferior_mm}


def _same_crop(entry: dict[str, Any], want: dict[str, Any]) -> bool:
    if "crop_request" in entry:
        return bool(entry["crop_request"] == want)
    # An entry from before requests were recorded: only the slab's source tells, and it
    # identifies the request only for the modes without levels (automatic, or no crop).
    slab = entry.get("crop")
    source = str(slab.get("source")) if isinstance(slab, dict) else ""
    return (
        want["mode"] in ("auto", "none") and {"auto": "auto", "full-fov": "none"}.get(source) == want["mode"]
    )


def write_outcome(out: Path, o: ScanOutcome, crop: dict[str, Any]) -> dict[str, Any]:
    """Write a scan's files (or remove stale ones after a failure); returns its manifest entry."""
    from mrct import qc

    s = o.scan
    rel = relpaths(s.domain, s.id)
    # Absolute, so the manifest still leads to its sources from another working directory
    # (evaluation and re-runs read it from wherever they start).
    entry: dict[str, Any] = {"id": s.id, "domain": s.domain, "source": absolute(s.path), "series": s.series}
    if o.error is not None or o.image is None or o.mask is None or o.record is None or o.qc is None:
        for r in rel.values():
            (out / r).unlink(missing_ok=True)
        failed = {**entry, "status": "failed", "error": o.error, "source_checksum": o.source_checksum}
        if o.qc is not None:  # every scan that could be read has a picture
            qc.write_png(o.qc, out / rel["qc"], overwrite=True)
            failed["files"] = {"qc": rel["qc"]}
        return failed
    checksum = write_bytes(out / rel["image"], _npy_bytes(o.image.astype(np.float32)))
    mask_checksum = write_bytes(out / rel["mask"], _npy_bytes(o.mask.astype(np.uint8)))
    write_bytes(out / rel["record"], json.dumps(o.record, indent=2).encode())
    qc.write_png(o.qc, out / rel["qc"], overwrite=True)
    return {
        **entry,
        "status": "ok",
        "crop": o.record["slab"],
        "crop_request": crop,
        "intensity": o.record["intensity"],
        "outside_fov_mm": (o.record.get("localisation") or {}).get("outside_fov_mm", 0.0),
        "shape": list(o.image.shape),
        "checksum": checksum,
        "mask_checksum": mask_checksum,
        "source_checksum": o.source_checksum,
        "files": rel,
    }


def still_valid(out: Path, scan: ScanInput, entry: dict[str, Any] | None, crop: dict[str, Any]) -> bool:
    """An earlier ok entry whose source is unchanged, whose slab was asked for as ``crop`` now is
    (see :func:`crop_request_dict`), and whose files are intact."""
    if not entry or entry.get("status") != "ok" or not isinstance(entry.get("files"), dict):
        return False
    if not _same_crop(entry, crop):
        return False
    files = {k: out / v for k, v in entry["files"].items()}
    if set(files) != set(relpaths("", "")) or not all(f.is_file() for f in files.values()):
        return False
    try:
        return (
            sha256_files([files["image"]]) == entry.get("checksum")
            and sha256_files([files["mask"]]) == entry.get("mask_checksum")
            and (scan.checksum or sha256_files(scan.files)) == entry.get("source_checksum")
        )
    except OSError:
        return False


def absolute(path: str | Path) -> str:
    return str(Path(path).absolute())
