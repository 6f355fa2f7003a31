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
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrct.errors import (
    GeometryError,
    InputNotFoundError,
    MrctError,
    ReadError,
    SeriesSelectionError,
    TooLargeError,
)
from mrct.io.dicom_split import Members, header_int, placement_damage, split_series
from mrct.io.limits import limit_hint, max_memory
from mrct.io.sniff import raw_dicom_dataset

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)
NO_DICOM_FOUND = "no DICOM image files found in folder"

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
DEFLATED = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
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


def check_deflated(path: Path) -> None:
    """Bound what a deflated DICOM file inflates to, before pydicom inflates all of it in memory.

    Raises TooLargeError past the memory limit, ReadError for a corrupt stream.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)  # the file meta group, where the transfer syntax is
    # Only a file with a meta group can be deflated; a notes file quoting the UID is not DICOM.
    if head[128:132] != b"DICM" or DEFLATED not in head:
        return
    import pydicom

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        start = 132 + 12 + int(meta.FileMetaInformationGroupLength)  # preamble, DICM, (0002,0000)
    except Exception as err:  # pydicom raises many kinds for a broken meta group
        raise ReadError(f"unreadable DICOM file meta information ({type(err).__name__})", path) from err
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED.decode():
        return
    cap, total = max_memory(), 0
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            while (chunk := fh.read(1 << 20)) and not inflater.eof:
                while chunk and not inflater.eof:  # past the end, padding stays unconsumed
                    total += len(inflater.decompress(chunk, 1 << 22))
                    if total > cap:
                        raise TooLargeError(
                            f"the deflated DICOM file expands beyond {limit_hint()}",
                            path,
                        )
                    chunk = inflater.unconsumed_tail
    except zlib.error as err:
        raise ReadError(f"corrupt deflated DICOM file ({err})", path) from err


def read_header(path: Path) -> Dataset | None:
    """The header of a DICOM image file, or None when the file is not one.

    Raises ReadError for a damaged DICOM file (one that says "DICM"), so that a
    slice cannot silently drop out of its series.
    """
    from pydicom.errors import InvalidDicomError

    check_deflated(path)
    try:
        return _image_header(path)
    except InvalidDicomError:
        return None
    except (MrctError, MemoryError):
        raise
    except Exception as err:  # pydicom raises many kinds (struct.error, EOFError...), also lazily
        with open(path, "rb") as fh:
            head = fh.read(132)
            if head[128:] != b"DICM" and not raw_dicom_dataset(head):
                return None  # not DICOM at all
        why = f"{type(err).__name__}; truncated or corrupt?"
        raise ReadError(f"unreadable DICOM file ({why})", path) from err


# Header values longer than this are not loaded when a file's header is read, only located
# (pydicom's deferred read). The reader loads the pixel data from there
# (:func:`mrct.io.dicom_pixels.pixel_dataset`) instead of parsing every file a second time.
DEFER_BYTES = 64 * 1024
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData


def dcmread(path: Path, **kwargs: Any) -> Dataset:
    """``pydicom.dcmread``, forced for a dataset without preamble and file meta group (as
    dcm2niix reads them): pydicom refuses those unless forced, and forcing it on other files
    would parse any file as DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    try:
        return pydicom.dcmread(path, **kwargs)  # the usual file: opened once
    except InvalidDicomError:
        with open(path, "rb") as fh:
            if not raw_dicom_dataset(fh.read(132)):
                raise
    ds = pydicom.dcmread(path, force=True, **kwargs)
    # Forced, pydicom parses any bytes: only a dataset naming a valid SOP class is DICOM.
    if not UID(str(ds.get("SOPClassUID", "") or "")).is_valid:
        raise InvalidDicomError(f"{path}: no DICOM dataset (no valid SOPClassUID)")
    return ds


def read_header_dataset(path: Path) -> Dataset:
    """``pydicom.dcmread`` of a file's header: every element parsed, long values and the pixel
    data left in the file (a batch holds the headers of every file it found)."""
    from pydicom.dataelem import RawDataElement

    ds = dcmread(path, defer_size=DEFER_BYTES)
    for tag in PIXEL_TAGS:  # small images' pixel data is under DEFER_BYTES: defer it too
        element = ds.get_item(tag, keep_deferred=True) if tag in ds else None
        if isinstance(element, RawDataElement) and element.value is not None and element.length:
            ds[tag] = element._replace(value=None)
    return ds


def _image_header(path: Path) -> Dataset | None:
    from pydicom.uid import UID

    ds = read_header_dataset(path)
    sop_class = str(ds.get("SOPClassUID", ""))
    meta_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
    if DICOMDIR_CLASS in (sop_class, str(meta_class)):
        return None
    if "Rows" not in ds:
        # pydicom stops quietly at a cut; a bare dataset has no meta group, only its own class.
        if "Image Storage" in getattr(meta_class or UID(sop_class), "name", ""):
            raise ReadError("incomplete DICOM image file (truncated?)", path)
        return None  # structured reports, presentation states...
    # Values used to group files are parsed here, so that damage shows now, naming this file.
    for key in ("SeriesInstanceUID", "SeriesDescription", "Modality", "SeriesNumber"):
        str(ds.get(key, ""))
    if (why := placement_damage(ds)) is not None:  # grouped by it, the slice would fall out
        raise GeometryError(why, path)
    return ds


def incomplete_image(path: Path, header: Dataset) -> str | None:
    """Why a file's image is incomplete, judged from its header (read with deferred pixel data):
    no pixel data, or pixel data that end past the end of the file (a copy cut short: dcm2niix's
    "File not large enough to store image data"). None when whole, or when it cannot be told
    (encapsulated pixel data have no length to check)."""
    from pydicom.dataelem import RawDataElement

    present = [tag for tag in PIXEL_TAGS if tag in header]
    if not present:
        return "DICOM file has no pixel data (truncated, or not an image)"
    element = header.get_item(present[0], keep_deferred=True)
    if not isinstance(element, RawDataElement) or element.length in (0, 0xFFFFFFFF):
        return None
    if str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "")) == DEFLATED.decode():
        return None  # value_tell counts in the inflated stream, not in the file
    end = element.value_tell + element.length
    try:
        size = path.stat().st_size
    except OSError:
        return None  # reading it says why
    if end > size:
        return f"truncated DICOM image file ({size} bytes; its pixel data end at byte {end})"
    return None


def unique_instances(
    members: Members, shown: tuple[Path, Path] | None = None
) -> tuple[Members, list[tuple[Path, str]]]:
    """One file per SOPInstanceUID, as dcm2niix removes duplicate images: a series copied twice
    into a tree would otherwise read as slices that share positions. Of an instance's copies
    the first whole one is kept (see :func:`incomplete_image`). ``shown``: (folder, name) to
    name that folder by in the warning (an unpacked zip by the zip's name).

    Returns the files kept, in their order, and each damaged copy left out with why it is
    damaged; whole copies left out are only logged. Files without a SOPInstanceUID are kept.
    """
    copies: dict[str, Members] = defaultdict(list)
    for path, ds in members:
        copies[str(ds.get("SOPInstanceUID", "") or "") or f"no-uid:{path}"].append((path, ds))
    chosen: set[Path] = set()
    damaged: list[tuple[Path, str]] = []
    n_whole_copies = 0
    for group in copies.values():
        if len(group) == 1:
            chosen.add(group[0][0])
            continue
        why = {path: incomplete_image(path, ds) for path, ds in group}
        keep = next((path for path, _ in group if why[path] is None), group[0][0])
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
