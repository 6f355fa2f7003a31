"""Find DICOM image files under a path and group them into series.

Files are grouped by SeriesInstanceUID and then split, as 3D Slicer and
dcm2niix do, when image size or orientation differ inside one UID (for example
a localiser stored in the same series). File names never decide anything.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mrct.errors import InputNotFoundError, ReadError, SeriesSelectionError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
MAX_FILES = 200_000
# Zip inputs are unpacked to a temporary folder; refuse archives that would
# expand past this (zip bombs) or that hold more files than a study could.
MAX_ZIP_BYTES = 8 * 1024**3
MAX_ZIP_RATIO = 200


@dataclass(frozen=True)
class SeriesFiles:
    """One series found on disk: its identity, a summary, and its files.

    ``key`` is the SeriesInstanceUID, followed by ``#N`` when that UID had to be
    split into several image stacks.
    """

    key: str
    uid: str
    description: str
    modality: str
    files: tuple[Path, ...]
    n_frames: int
    headers: tuple[Dataset, ...]

    def summary(self) -> str:
        desc = self.description or "(no description)"
        return f"{self.key}  {desc!r}  {self.modality or '?'}  {self.n_frames} slices"


def iter_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder``, sorted, without following symlink loops."""
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            if p.is_file():
                found.append(p)
        if len(found) > MAX_FILES:
            raise ReadError(f"more than {MAX_FILES} files; point mrct at one study", folder)
    return found


def read_header(path: Path) -> Dataset | None:
    """The header of a DICOM image file, or None when the file is not one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError):
        return None
    sop_class = str(ds.get("SOPClassUID", ""))
    media = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if DICOMDIR_CLASS in (sop_class, media) or "Rows" not in ds:
        return None  # DICOMDIR, structured reports, presentation states...
    return ds


def _stack_key(ds: Dataset) -> tuple[object, ...]:
    iop = ds.get("ImageOrientationPatient")
    iop_key = tuple(np.round(np.asarray(iop, dtype=float), 3)) if iop else None
    return (int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), iop_key)


def group_series(paths: list[Path]) -> list[SeriesFiles]:
    """Group DICOM image files into series, sorted by series number then UID."""
    by_uid: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for p in paths:
        ds = read_header(p)
        if ds is not None:
            by_uid[str(ds.get("SeriesInstanceUID", ""))].append((p, ds))
    series: list[SeriesFiles] = []
    for uid, members in by_uid.items():
        stacks: dict[tuple[object, ...], list[tuple[Path, Dataset]]] = defaultdict(list)
        for p, ds in members:
            stacks[_stack_key(ds)].append((p, ds))
        ordered = sorted(stacks.values(), key=len, reverse=True)
        for n, stack in enumerate(ordered, start=1):
            first = stack[0][1]
            frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in stack)
            series.append(
                SeriesFiles(
                    key=uid if len(ordered) == 1 else f"{uid}#{n}",
                    uid=uid,
                    description=str(first.get("SeriesDescription", "")),
                    modality=str(first.get("Modality", "")),
                    files=tuple(p for p, _ in stack),
                    n_frames=frames,
                    headers=tuple(ds for _, ds in stack),
                )
            )
    return sorted(series, key=lambda s: (_series_number(s), s.key))


def _series_number(s: SeriesFiles) -> int:
    try:
        return int(s.headers[0].get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def find_series(folder: Path) -> list[SeriesFiles]:
    files = iter_files(folder)
    if not files:
        raise InputNotFoundError("folder is empty", folder)
    series = group_series(files)
    if not series:
        raise ReadError("no DICOM image files found in folder", folder)
    return series


def select_series(series: list[SeriesFiles], wanted: str | None, where: Path) -> SeriesFiles:
    """The one series to read: the only one, or the one named by ``wanted``."""
    if wanted:
        for s in series:
            if wanted in (s.key, s.uid):
                matches = [t for t in series if t.uid == wanted]
                if s.key == wanted or len(matches) == 1:
                    return s
        listing = "; ".join(s.summary() for s in series)
        raise SeriesSelectionError(f"no series {wanted!r} here; found: {listing}", where)
    if len(series) == 1:
        return series[0]
    listing = "; ".join(s.summary() for s in series)
    raise SeriesSelectionError(f"{len(series)} series found, choose one with --series UID: {listing}", where)


def extract_zip(path: Path, dest: Path) -> Path:
    """Unpack a zip safely (no absolute or ``..`` members, bounded size) into ``dest``."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            packed = max(1, sum(i.compress_size for i in infos))
            if total > MAX_ZIP_BYTES or (total / packed > MAX_ZIP_RATIO and total > 10**8):
                raise ReadError("zip expands to an implausible size (refused)", path)
            root = dest.resolve()
            for info in infos:
                target = (dest / info.filename).resolve()
                if not target.is_relative_to(root):
                    raise ReadError(f"zip member escapes the archive: {info.filename!r}", path)
            zf.extractall(dest)
    except zipfile.BadZipFile as err:
        raise ReadError(f"not a readable zip file ({err})", path) from err
    return dest
