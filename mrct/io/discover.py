"""Find the scans under input paths: image files, zips, and DICOM series in folders.

Each scan gets a readable, file-safe name (the file's stem or the series'
folder, plus ``_s<SeriesNumber>`` when a folder holds several series). Nothing
is taken from patient fields of DICOM headers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from mrct.errors import InputNotFoundError
from mrct.io.dicom_scan import SeriesFiles, group_series, iter_files
from mrct.io.dicom_split import COMPLEX_PART_NAMES, complex_part

log = logging.getLogger(__name__)

# Files read as one scan each; any other file under a folder is a DICOM candidate.
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
# Suffixes a single DICOM file's name may end in; any other dotted tail is part of the name
# (PACS exports name files by their UID: 1.2.826...498.111 and ...112 are two scans).
DICOM_FILE_SUFFIXES = (".dcm", ".dicom", ".ima", ".img")
# DICOM stacks with fewer images are localisers or single images, not head volumes.
MIN_SERIES_FRAMES = 4


@dataclass(frozen=True)
class FoundScan:
    """One scan: ``read_volume(path, series=series)`` reads it.

    ``path`` is as given (joined with what was found under a given folder);
    ``files`` are the bytes that make it up; ``name`` is file-safe, not yet unique.
    """

    path: Path
    series: str | None
    files: tuple[Path, ...]
    name: str


def safe_name(text: str) -> str:
    """``text`` as a file-safe name: letters, digits and marks of any script (Müller, 头部, राम:
    two patients named in Chinese or Hindi must not both become "_"), in their composed (NFC)
    form so that one name typed two ways is one name, and ``._-``; no leading dot; never ``*_mask``."""
    composed = unicodedata.normalize("NFC", text)
    kept = "".join(c if c in "._-" or unicodedata.category(c)[0] in "LNM" else " " for c in composed)
    s = re.sub(r"\s+", "_", kept.strip()).strip("._-") or "scan"
    return s[:-5] + "-mask" if s.lower().endswith("_mask") else s  # would clash with <name>_mask.npy


# File names are at most 255 bytes, and a temporary name adds about 30 to an output's
# (``.NAME.mrct-tmp-XXXXXXXX``); keep the stem an output name is built on well under that.
MAX_STEM_BYTES = 150


def fit_name(stem: str, max_bytes: int = MAX_STEM_BYTES) -> str:
    """``stem`` when short enough; else its first bytes and 8 hex digits of its SHA-1, so two
    long names that share a start still get different outputs."""
    raw = stem.encode("utf-8", "surrogateescape")
    if len(raw) <= max_bytes:
        return stem
    head = raw[: max_bytes - 9].decode("utf-8", "ignore").rstrip("._- ")
    return f"{head}_{hashlib.sha1(raw).hexdigest()[:8]}"


def scan_stem(name: str) -> str:
    """A scan's name without its format's suffix: ``t1.nii.gz`` -> ``t1``, ``IM1.dcm`` -> ``IM1``;
    a folder's or a UID-named file's name whole."""
    for suffix in (*SCAN_SUFFIXES, *DICOM_FILE_SUFFIXES):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _stem(path: Path) -> str:
    return scan_stem(path.name or path.absolute().name)


def short_hash(path: Path, series: str | None = None) -> str:
    """Eight hex digits of the SHA-1 of the absolute path (and series key)."""
    return hashlib.sha1(f"{path.absolute()}#{series or ''}".encode()).hexdigest()[:8]


def _series_scans(folder: Path, files: list[Path]) -> list[FoundScan]:
    """The DICOM series among ``files``, named after the folder that holds each."""
    by_folder: dict[Path, list[SeriesFiles]] = defaultdict(list)
    for s in group_series(files, skip_damaged=True):  # one damaged file must not stop the search
        if s.n_frames < MIN_SERIES_FRAMES:
            log.warning("%s: skipping a %d-image DICOM stack (a localiser?)", folder, s.n_frames)
        elif kind := complex_part(s.headers[0]):  # no image to train on, as batch skips it
            log.warning(
                "%s: skipping %s DICOM stack (only magnitude images are trained on)",
                folder,
                COMPLEX_PART_NAMES[kind],
            )
        else:
            by_folder[Path(os.path.commonpath(s.files))].append(s)
    scans = []
    for where, group in by_folder.items():
        for n, s in enumerate(group, start=1):
            if where.is_file():  # an enhanced multi-frame file
                scans.append(FoundScan(where, None, s.files, safe_name(_stem(where))))
                continue
            name = _stem(where)
            if len(group) > 1:
                number = str(s.headers[0].get("SeriesNumber", "") or "").strip()
                name += f"_s{number if number.isdigit() else n}"
            scans.append(FoundScan(where, s.key, tuple(sorted(s.files)), safe_name(name)))
    return scans


def find_scans(paths: Iterable[str | Path]) -> list[FoundScan]:
    """Every scan under ``paths``, sorted by path (then SeriesNumber), each once.

    A file is one scan. A folder is searched recursively (hidden entries
    ignored): each NIfTI/NRRD/MHA/zip file is a scan, and so is each DICOM
    series among the other files (a folder holding several yields each).

    Raises:
        InputNotFoundError: a path does not exist.
    """
    scans: list[FoundScan] = []
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise InputNotFoundError("no such file or folder", p)
        if not p.is_dir():
            scans.append(FoundScan(p, None, (p,), safe_name(_stem(p))))
            continue
        files = iter_files(p, hidden=False)
        others, before = [], len(scans)
        for f in files:
            if f.name.lower().endswith(SCAN_SUFFIXES):
                scans.append(FoundScan(f, None, (f,), safe_name(_stem(f))))
            else:
                others.append(f)
        if others:
            scans += _series_scans(p, others)
        if len(scans) == before:  # a mistyped folder: say so rather than prepare nothing from it
            what = "is empty" if not files else "holds no scans (NIfTI, NRRD, MHA, zip or DICOM series)"
            raise InputNotFoundError(what, p)
    unique: dict[tuple[str, str | None], FoundScan] = {}
    for s in sorted(scans, key=lambda s: str(s.path)):  # stable: series stay in SeriesNumber order
        # Resolved: one file given through a link, or as a/../a, is one scan (it was prepared
        # once per spelling, and could land on both sides of the split).
        first = unique.setdefault((os.path.realpath(s.path), s.series), s)
        if first is not s:
            log.warning("%s: the same file as %s, given again; prepared once", s.path, first.path)
    return [replace(s, name=fit_name(s.name)) for s in unique.values()]  # ids name output files


def sha256_files(files: Iterable[Path]) -> str:
    """SHA-256 over the bytes of ``files``, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(files):
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
