"""Find DICOM image files under a path and group them into series.

Files are grouped by SeriesInstanceUID and then split, as 3D Slicer and
dcm2niix do, when image size or orientation differ inside one UID (for example
a localiser stored in the same series). File names never decide anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mrct.errors import (
    InputNotFoundError,
    ReadError,
    SeriesSelectionError,
)
from mrct.io.dicom_file import incomplete_image, read_header
from mrct.io.dicom_split import (
    ORIENTATION_TOL,
    Members,
    echo_key,
    header_int,
    number_text,
    split_series,
    within,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)
NO_DICOM_FOUND = "no DICOM image files found in folder"

MAX_FILES = 200_000


# How --series names the one group of images without a SeriesInstanceUID (its key is "", so
# that it reads as before when alone; beside other series it had no name to choose it by).
NO_UID = "no-uid"


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
        """UID, modality and size: what errors and logs may say. The SeriesDescription is free
        text that can hold a name (PS3.15 removes it), so only ``mrct info`` shows it."""
        return f"{self.key or NO_UID}  {self.modality or '?'}  {self.n_frames} slices"


UNLISTABLE = "cannot list this folder"


def iter_files(
    folder: Path, unlisted: list[tuple[Path, str]] | None = None, *, hidden: bool = True
) -> list[Path]:
    """Every regular file under ``folder``, sorted, without following symlink loops; a file
    reached by several names (a symlink to a scan in the tree, a hard link) once, by the first.

    ``hidden=False`` leaves out dot-files and dot-folders below ``folder`` unvisited (a dataset's
    ``.git/annex`` holding the files its visible links point to, a ``.Trash-0``). A folder that
    cannot be listed goes into ``unlisted`` with why; without that list it raises ReadError:
    read without it, a series may lack slices.
    """
    found: dict[tuple[int, int], Path] = {}  # by (device, inode), in walk order
    seen_dirs: set[tuple[int, int]] = set()

    def refused(err: OSError) -> None:
        where = Path(err.filename) if err.filename else folder
        with contextlib.suppress(ValueError):
            if any(part.startswith(".") for part in where.relative_to(folder).parts):
                return  # a hidden folder no one asked for (a root-owned .Trash-0): as dcm2niix, unread
        why = f"{UNLISTABLE} ({err.strerror or type(err).__name__})"
        if unlisted is None:
            raise ReadError(why, where)
        unlisted.append((where, why))

    for root, dirs, files in os.walk(folder, onerror=refused, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if hidden or not d.startswith("."))
        for name in sorted(f for f in files if hidden or not f.startswith(".")):
            p = Path(root) / name
            try:
                st = p.stat()
            except OSError:  # a dangling or looping link: not a file to read
                continue
            if stat.S_ISREG(st.st_mode):
                found.setdefault((st.st_dev, st.st_ino), p)
        if len(found) > MAX_FILES:
            raise ReadError(f"more than {MAX_FILES} files; point mrct at one study", folder)
    return list(found.values())


def unique_instances(
    members: Members, shown: tuple[Path, Path] | None = None, prefer: Sequence[Path] = ()
) -> tuple[Members, list[tuple[Path, str]]]:
    """One file per image (a SOPInstanceUID at one place), as dcm2niix removes duplicate images: a
    series copied twice into a tree would otherwise read as slices that share positions; images
    at different places that share a UID (a broken export) are all kept, with a warning. Of an
    image's copies the first whole one is kept (see :func:`incomplete_image`). ``shown``: (folder,
    name) to name that folder by in the warning (an unpacked zip by the zip's name). ``prefer``:
    folders whose whole copies are kept first (where an earlier batch read the series: a copy added
    elsewhere since must not move it, and so rename and translate it again).

    Returns the files kept, in their order, and each damaged copy left out with why it is
    damaged; whole copies left out are only logged. Files without a SOPInstanceUID are kept.
    """
    by_uid: dict[str, list[tuple[_Identity, Members]]] = defaultdict(list)
    for path, ds in members:
        uid = str(ds.get("SOPInstanceUID", "") or "") or f"no-uid:{path}"
        identity, images = _identity(ds), by_uid[uid]
        same = next((group for first, group in images if _same_image(first, identity)), None)
        if same is None:
            images.append((identity, [(path, ds)]))
        else:
            same.append((path, ds))
    if reused := sum(len(images) for images in by_uid.values() if len(images) > 1):
        log.warning(
            "%s: %d images at different places share their SOPInstanceUID with another (a broken "
            "export or anonymiser?); each is read",
            _shown(Path(os.path.commonpath([str(p) for p, _ in members])), shown),
            reused,
        )
    copies = [group for images in by_uid.values() for _, group in images]
    chosen: set[Path] = set()
    preferred_folders = set(prefer)  # looked up by each copy's parents: a batch may list thousands
    damaged: list[tuple[Path, str]] = []
    n_whole_copies = 0
    for group in copies:
        if len(group) == 1:
            chosen.add(group[0][0])
            continue
        why = {path: incomplete_image(path, ds) for path, ds in group}
        whole = [path for path, _ in group if why[path] is None]
        preferred = [path for path in whole if not preferred_folders.isdisjoint(path.parents)]
        keep = (preferred or whole or [group[0][0]])[0]
        chosen.add(keep)
        for path, _ in group:
            reason = why[path]
            if path == keep:
                continue
            if reason is None:
                n_whole_copies += 1
            else:
                damaged.append((path, reason))
    if n_whole_copies:
        where = _shown(Path(os.path.commonpath([str(p) for p, _ in members])), shown)
        log.warning(
            "%s: %d duplicate file(s) of images already found (same SOPInstanceUID) left out",
            where,
            n_whole_copies,
        )
    return [(p, ds) for p, ds in members if p in chosen], damaged


# (echo, acquisition, position, orientation); None for a value that cannot be parsed
_Identity = tuple[str, str, tuple[float, ...] | None, tuple[float, ...] | None]
PLACE_TOL_MM = 1e-3  # copies agree far better; the slices of a series lie far further apart


def _identity(ds: Dataset) -> _Identity:
    """What tells two images apart beside their SOPInstanceUID: copies of one image agree in all
    of it; images a broken exporter gave one UID differ in place, or echo, or acquisition."""

    def numbers(key: str) -> tuple[float, ...] | None:
        try:
            return tuple(float(v) for v in (ds.get(key) or ()))
        except Exception:  # pydicom converts values lazily: damage raises many kinds
            return None

    position, orientation = numbers("ImagePositionPatient"), numbers("ImageOrientationPatient")
    return (echo_key(ds), number_text(ds, "AcquisitionNumber"), position, orientation)


def _same_image(a: _Identity, b: _Identity) -> bool:
    """Numbers compared as numbers, within print noise (a copy may write 12.5 as 12.500000, -0 for
    0, or round the last digit otherwise); an unparsable value (the read names it) as equal."""
    if a[:2] != b[:2]:
        return False
    pairs = ((a[2], b[2], PLACE_TOL_MM), (a[3], b[3], ORIENTATION_TOL))
    return all(x is None or y is None or within(x, y, tol) for x, y, tol in pairs)


def _shown(path: Path, shown: tuple[Path, Path] | None) -> Path:
    """``path`` as warnings name it: under ``shown``'s name when in its folder (an unpacked zip)."""
    if shown is not None and path.is_relative_to(shown[0]):
        return shown[1] / path.relative_to(shown[0])
    return path


def group_series(
    paths: list[Path], skip_damaged: bool = False, shown: tuple[Path, Path] | None = None
) -> list[SeriesFiles]:
    """Group DICOM image files into series, sorted by series number then UID.

    A damaged DICOM file raises ReadError, or with ``skip_damaged`` (searching many
    folders for scans) is left out with a warning; reading its series then fails. Copies of
    one image (same SOPInstanceUID) count once (:func:`unique_instances`).
    """
    # By SeriesInstanceUID; images without one by folder, never merged across folders (patients).
    by_uid: dict[tuple[str, Path | None], list[tuple[Path, Dataset]]] = defaultdict(list)
    for p in paths:
        try:
            ds = read_header(p)
        except ReadError as err:
            if not skip_damaged:
                raise
            log.warning("%s", err)
            continue
        if ds is not None:
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            by_uid[(uid, None if uid else p.parent)].append((p, ds))
    series: list[SeriesFiles] = []
    uidless = sum(1 for uid, _ in by_uid if not uid)
    for (uid, folder), found in by_uid.items():
        members, damaged = unique_instances(found, shown)
        for path, why in damaged:
            log.warning("%s: %s; a whole copy of this image is read instead", _shown(path, shown), why)
        # Several UID-less groups are told apart by folder, resolved, so that reading that folder
        # alone (as prepare does) or through a/../a names the group the same.
        name = uid or ("" if uidless == 1 else f"no-uid@{os.path.realpath(folder or '.')}")
        for part, stack in split_series(members):
            first = stack[0][1]
            frames = sum(max(1, header_int(ds, "NumberOfFrames", 1)) for _, ds in stack)
            series.append(
                SeriesFiles(
                    key=f"{name}#{part}" if part else name,
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
    return header_int(s.headers[0], "SeriesNumber")


def media_folder(path: Path) -> Path:
    """A DICOMDIR file's folder, which holds the series it indexes (as dcm2niix reads a
    DICOMDIR: by its folder); any other path as it is."""
    return path.parent if path.name.upper() == "DICOMDIR" and path.is_file() else path


def find_series(folder: Path, shown: Path | None = None) -> list[SeriesFiles]:
    """The series in ``folder`` (``shown``: the name warnings give it, an unpacked zip's)."""
    files = iter_files(folder)
    if not files:
        raise InputNotFoundError("folder is empty", folder)
    series = group_series(files, shown=None if shown is None else (folder, shown))
    if not series:
        raise ReadError(NO_DICOM_FOUND, folder)
    return series


def select_series(series: list[SeriesFiles], wanted: str | None, where: Path) -> SeriesFiles:
    """The one series to read: the only one, or the one named by ``wanted``."""
    if wanted and wanted.startswith("no-uid@") and [s.uid for s in series] == [""]:
        return series[0]  # the folder's one UID-less group, named in a tree that held several
    if wanted == NO_UID:  # the one UID-less group beside series that have one (its key is "")
        unnamed = [s for s in series if s.key == ""]
        if len(unnamed) == 1:
            return unnamed[0]
    if wanted:
        for s in series:
            if wanted in (s.key, s.uid):
                matches = [t for t in series if t.uid == wanted]
                if s.key == wanted or len(matches) == 1:
                    return s
        listing = "; ".join(s.summary() for s in series)
        parts = [s.key for s in series if s.uid == wanted]
        if parts:  # the UID itself, split by echo, acquisition, size or orientation
            raise SeriesSelectionError(
                f"series {wanted!r} holds {len(parts)} stacks, choose one with --series: {listing}", where
            )
        raise SeriesSelectionError(f"no series {wanted!r} here; found: {listing}", where)
    if len(series) == 1:
        return series[0]
    listing = "; ".join(s.summary() for s in series)
    # Descriptions are left to mrct info (see SeriesFiles.summary); the error says where they are.
    raise SeriesSelectionError(
        f"{len(series)} series found, choose one with --series UID ('mrct info' shows their descriptions): "
        f"{listing}",
        where,
    )
