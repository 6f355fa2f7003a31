"""Finding and naming the series of ``mrct batch`` (see :mod:`mrct.batch` for the layout).

``IN_DIR`` is searched recursively (hidden entries and ``OUT_DIR`` left out). NIfTI/NRRD/MHA
files are one series each; other files are read as DICOM headers and grouped by
SeriesInstanceUID, split like dcm2niix/3D Slicer when size, orientation, echo or multi-frame
against single-frame files differ, or when acquisitions repeat slice positions. A zip is
unpacked to list its series as its unpacked folder would be listed: one row per series (a
study's localiser, T1 and CT). Output names depend on the input tree only."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from mrct.errors import InputNotFoundError, MrctError, ReadError
from mrct.io import OutputFormat
from mrct.io.dicom_file import PIXEL_TAGS, check_deflated, incomplete_image, read_header_dataset
from mrct.io.dicom_scan import SeriesFiles, iter_files, unique_instances
from mrct.io.dicom_split import (
    Members,
    complex_part,
    echo_key,
    header_int,
    not_translated,
    orientation_key,
    placement_damage,
    same_orientation,
    split_series,
)
from mrct.io.discover import MIN_SERIES_FRAMES, SCAN_SUFFIXES, fit_name, safe_name, scan_stem
from mrct.translation import EXTENSIONS, input_format
from mrct.volume import Modality, SourceInfo, Volume

log = logging.getLogger(__name__)

# An earlier batch's outputs left inside IN_DIR (or OUT_DIR holding IN_DIR) are not inputs:
# DICOM ones carry this SeriesDescription (mrct.labels.series_description), files this name.
SYNTHETIC_LABEL = "mrct synthetic "
EARLIER_OUTPUT = "an mrct synthetic image (an earlier output); not translated again"
SCAN_IN_ZIP = "a scan file inside a zip; unzip it to translate it"
NO_IMAGES_IN_ZIP = "a zip holding no image files (DICOM, NIfTI, NRRD or MHA)"


@dataclass(frozen=True)
class Series:
    """One input series: a file for ``read_volume``, or a DICOM ``stack`` grouped here."""

    id: str  # unique: ``input``, plus ``#<SeriesInstanceUID>[#<part>]`` for DICOM
    input: str  # POSIX path relative to IN_DIR of the series' folder, or the file
    path: Path
    uid: str = ""
    modality: str = ""  # from the DICOM header; empty for other formats
    stack: SeriesFiles | None = None
    number: int = 0
    part: str = ""  # names one part of a split SeriesInstanceUID
    member: str = ""  # a zip's series: its row id in the unpacked zip's listing
    skip: str | None = None  # decided from the headers alone
    error: str | None = None
    output: str = ""  # relative to OUT_DIR
    fmt: OutputFormat = OutputFormat.NIFTI
    unlisted: bool = False  # a zip whose series could not be listed this time (``error`` says why)


INCOMPLETE = "incomplete DICOM image file (truncated?)"
UNREADABLE = "cannot read the file"


def _header(path: Path) -> tuple[Any, str | None, str | None]:
    """(dataset, skip, error) from the header alone: non-DICOM files are skipped, broken ones fail."""
    from pydicom.errors import InvalidDicomError

    try:
        check_deflated(path)  # a deflated file is inflated whole by pydicom: bound it first
        ds = read_header_dataset(path)
    except MrctError as err:
        return None, None, err.message
    except InvalidDicomError:
        return None, "not an image file (DICOM, NIfTI, NRRD, MHA or zip)", None
    except OSError as err:  # its permissions, an I/O error: it may be any file, a slice included
        return None, None, f"{UNREADABLE} ({err.strerror or type(err).__name__})"
    except Exception as err:  # truncated or malformed: pydicom raises many kinds
        return None, None, f"unreadable DICOM file ({type(err).__name__})"
    # A whole image without a SeriesInstanceUID (some exports drop it) groups with the others of
    # its folder, as the single-series reader groups them; one cut before that tag has no pixels.
    whole_image = "Rows" in ds and incomplete_image(path, ds) is None
    if "Rows" not in ds or ("SeriesInstanceUID" not in ds and not whole_image):
        if _image_storage(ds):  # pydicom stops quietly at a cut
            return None, None, INCOMPLETE
        if "SOPClassUID" not in ds and not _sop_class(ds):  # "DICM", then nothing it could parse
            return None, None, "unreadable DICOM file (no SOP class: corrupt?)"
        return None, f"no image in this DICOM file (modality {ds.get('Modality') or 'none'})", None
    return ds, None, None


def _sop_class(ds: Any) -> Any:
    """The file's SOP class: its meta group's, else (a bare dataset) its own."""
    from pydicom.uid import UID

    meta = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return meta or (UID(str(ds.SOPClassUID)) if "SOPClassUID" in ds else None)


def _image_storage(ds: Any) -> bool:
    """Whether the file says it is an image (its storage class), whatever it holds."""
    return "Image Storage" in getattr(_sop_class(ds), "name", "")


def _first_cut(members: Members, root: Path) -> str | None:
    """The error for the first file whose pixel data end past the end of the file, or that is an
    image file cut before its pixel data (a copy cut short, as dcm2niix's "File not large enough
    to store image data"); a file of another class without pixel data is left to the skip of its
    small stack."""
    for path, ds in members:
        if not any(tag in ds for tag in PIXEL_TAGS) and not _image_storage(ds):
            continue
        why = incomplete_image(path, ds)
        if why is not None:
            return f"{_rel(path, root)}: {why}"
    return None


def _first_misplaced(members: Members, root: Path) -> str | None:
    """The error for the first file whose orientation or position is damaged (NaN, a word). It
    stays in its series (grouping reads such a value as absent), which fails naming it: split off
    by it, each slice was a 1-image stack, skipped as a localiser."""
    for path, ds in members:
        why = placement_damage(ds)
        if why is not None:
            return f"{_rel(path, root)}: {why}"
    return None


def _odd_size(group: Members, parts: list[tuple[str, Members]], root: Path) -> str | None:
    """Why a small stack split off by its image size alone is no localiser: an original image
    of the same UID, orientation and echo as a larger stack of another size, lying where that
    stack lacks a slice (a gap, or one step past an end). It was skipped as "a localiser?", exit
    0, and the series was read without it (one slice short, or with a gap that --allow-gaps
    would fill over a slice that exists). A derived image (a thumbnail, a MIP) or one at a
    position the stack holds is another picture of the series, and stays skipped."""
    ds = group[0][1]
    if len(group) != 1 or "DERIVED" in [str(v).upper() for v in ds.get("ImageType") or []][:1]:
        return None
    size = (header_int(ds, "Rows"), header_int(ds, "Columns"))
    for _, other in parts:
        o = other[0][1]
        if (
            len(other) >= MIN_SERIES_FRAMES
            and same_orientation(orientation_key(o), orientation_key(ds))
            and echo_key(o) == echo_key(ds)
            and (header_int(o, "Rows"), header_int(o, "Columns")) != size
            and _fills_a_place(ds, other)
        ):
            rest = f"{header_int(o, 'Rows')} x {header_int(o, 'Columns')}"
            return (
                f"{_rel(group[0][0], root)}: {size[0]} x {size[1]} pixels, in a series of {rest} of "
                "the same orientation: a damaged or foreign slice; the rest is read without it"
            )
    return None


def _fills_a_place(ds: Any, stack: Members) -> bool:
    """Whether ``ds`` lies where ``stack`` lacks a slice: between its slices, off any of them, or
    one step past an end (positions along the slice normal)."""
    try:
        iop = [float(v) for v in ds.ImageOrientationPatient]
        normal = np.cross(iop[:3], iop[3:])
        levels = np.sort(
            [float(np.dot(normal, [float(v) for v in s.ImagePositionPatient])) for _, s in stack]
        )
        here = float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
    except (AttributeError, TypeError, ValueError):  # no geometry: nothing to tell by
        return False
    step = float(np.median(np.diff(levels))) if len(levels) > 1 else 0.0
    if not step > 0:
        return False
    off = float(np.min(np.abs(levels - here)))
    return off > step / 2 and levels[0] - 1.5 * step <= here <= levels[-1] + 1.5 * step


def _rel(path: Path, root: Path) -> str:
    return PurePosixPath(*path.relative_to(root).parts).as_posix() if path != root else "."


def _dicom_series(
    root: Path, files: list[Path], shown: Path | None = None, prefer: Sequence[Path] = ()
) -> list[Series]:
    """The DICOM series of ``files`` under ``root`` (``shown``: the name warnings give ``root``;
    ``prefer``: see :func:`discover`)."""
    found: list[Series] = []
    # By SeriesInstanceUID; images without one by folder, never merged across folders (patients).
    images: dict[tuple[str, Path | None], Members] = defaultdict(list)
    # folder -> a file there that may be one of its slices: an image cut before its series UID,
    # or a file that could not be read at all
    cut_short: dict[Path, tuple[Path, str]] = {}
    for f in files:
        ds, skip, error = _header(f)
        if ds is None:
            found.append(Series(_rel(f, root), _rel(f, root), f, skip=skip, error=error))
            if error is not None and (error == INCOMPLETE or error.startswith(UNREADABLE)):
                cut_short.setdefault(f.parent, (f, error))
        else:
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            images[(uid, None if uid else f.parent)].append((f, ds))
    for (uid, _), copies in images.items():
        members, damaged = unique_instances(copies, None if shown is None else (root, shown), prefer)
        for path, why in damaged:  # a failed row of its own: its series reads the whole copy
            rel = _rel(path, root)
            error = f"{rel}: {why}; its series was read from a whole copy of this image"
            found.append(Series(rel, rel, path, error=error))
        parts = split_series(members)
        for part, group in parts:
            first, paths = group[0][1], tuple(p for p, _ in group)
            frames = sum(max(1, header_int(ds, "NumberOfFrames", 1)) for _, ds in group)
            key, modality = f"{uid}#{part}" if part else uid, str(first.get("Modality", ""))
            description = str(first.get("SeriesDescription", ""))
            stack = SeriesFiles(key, uid, description, modality, paths, frames, tuple(d for _, d in group))
            where, number = Path(os.path.commonpath(paths)), str(first.get("SeriesNumber", "") or "")
            small = f"a {frames}-image stack (a localiser?)" if frames < MIN_SERIES_FRAMES else None
            small = EARLIER_OUTPUT if description.startswith(SYNTHETIC_LABEL) else small
            if kind := complex_part(first):  # a phase map translated to CT was noise, "done"
                small = not_translated(kind)
            # Checked from the headers, for every stack: a damaged series of the other modality
            # (never read) fails too, as does one whose folder holds an image cut too short to
            # say its series (it may be a slice of this one: read without it, the grid is wrong).
            cut = _first_cut(group, root) or _first_misplaced(group, root)
            if cut is None and small is not None and len(parts) > 1:
                cut = _odd_size(group, parts, root)
            orphan = next((cut_short[p.parent] for p, _ in group if p.parent in cut_short), None)
            if cut is None and orphan is not None:
                cut = f"{_rel(orphan[0], root)}: {orphan[1]} in this series' folder (one of its slices?)"
            n = int(number) if number.isdigit() else 0
            rel = _rel(where, root)
            fields = {"skip": small} if cut is None else {"error": cut}
            found.append(Series(f"{rel}#{key}", rel, where, uid, modality, stack, n, part, **fields))
    return found


def discover(in_dir: Path, exclude: Sequence[Path] = (), prefer: Sequence[Path] = ()) -> list[Series]:
    """Every series under ``in_dir`` (not under ``exclude``), sorted by input path, then SeriesNumber.
    ``prefer``: folders whose copies of an image are read first (see :func:`unique_instances`)."""
    excluded = [e.resolve() for e in exclude]

    def wanted(f: Path) -> bool:  # hidden entries iter_files leaves out itself
        return not any(f.resolve().is_relative_to(e) for e in excluded)

    unlisted: list[tuple[Path, str]] = []
    files = [f for f in iter_files(in_dir, unlisted, hidden=False) if wanted(f)]
    scans = [f for f in files if f.name.lower().endswith(SCAN_SUFFIXES)]
    series: list[Series] = []
    for folder, why in unlisted:
        if wanted(folder):
            rel = _rel(folder, in_dir)
            series.append(Series(rel, rel, folder, error=f"{why}; what it holds is not translated"))
    for f in scans:
        rel = _rel(f, in_dir)
        whole = Series(rel, rel, f, skip=EARLIER_OUTPUT if _is_output_name(f) else None)
        series += _zip_series(whole) if whole.skip is None and f.name.lower().endswith(".zip") else [whole]
    series += _dicom_series(in_dir, sorted(set(files) - set(scans)), prefer=prefer)
    return sorted(series, key=lambda s: (s.input, s.number, s.id))


def _zip_listing(folder: Path, zip_path: Path) -> list[Series]:
    """The rows of an unpacked zip, as :func:`discover` lists a folder (hidden entries, such as
    macOS's ``__MACOSX/._*`` files, left out)."""
    files = iter_files(folder, hidden=False)
    return _dicom_series(folder, files, zip_path)


def _zip_series(whole: Series) -> list[Series]:
    """A zip's rows, judged as its unpacked folder's (a localiser, an earlier output, a damaged
    file, by modality when planned): one per series or damaged file, so one damaged member fails
    alone. Ids name the series (``the.zip/its/folder#UID``, ``the.zip#UID`` at the zip's root), so
    they stay when the zip gains or loses series. A zip that cannot be listed is one failed row
    ``the.zip``, ``unlisted`` (see :func:`mrct.batch_plan.plan`)."""
    from mrct.io.dicom_zip import unzipped

    try:
        with unzipped(whole.path) as folder:
            listed = _zip_listing(folder, whole.path)
    except InputNotFoundError:  # no files at all: nothing to translate, as an empty folder
        return [replace(whole, skip=NO_IMAGES_IN_ZIP)]
    except Exception as err:  # a damaged zip, the memory limit, a full temporary folder
        log.debug("%s: series not listed", whole.path, exc_info=True)
        why = str(err).splitlines()[0] if isinstance(err, MrctError) else None
        why = why or f"{whole.path}: cannot list its series ({type(err).__name__}: {err})"
        return [replace(whole, error=why, unlisted=True)]
    found = [r for r in listed if r.stack is not None or r.error]  # not a DICOMDIR or a readme
    scans = [  # in a folder they would be translated: say why they are not
        replace(r, skip=SCAN_IN_ZIP)
        for r in listed
        if r.stack is None and r.error is None and r.path.name.lower().endswith(SCAN_SUFFIXES)
    ]
    if not found and not scans:  # documents, say: skipped, as they would be unzipped
        return [replace(whole, skip=NO_IMAGES_IN_ZIP)]
    rows = []
    for r in found + scans:
        inner = f"#{r.id[2:]}" if r.id.startswith(".#") else f"/{r.id}"
        error = r.error
        if error and r.stack is None and not error.startswith(f"{r.input}: "):
            error = f"{r.input}: {error}"  # a damaged file's row: in a folder its id names it
        error = f"{whole.input}: {error}" if error else None
        row = replace(r, id=whole.id + inner, error=error, member=r.id)
        rows.append(replace(row, input=whole.input, path=whole.path, stack=None))  # the zip, not its copy
    return rows


def zip_rows(zip_input: str, row_id: str) -> bool:
    """Whether ``row_id`` is a row of the zip at ``zip_input`` (itself, or one of its series)."""
    return row_id == zip_input or row_id.startswith((f"{zip_input}/", f"{zip_input}#"))


def read_zip_member(s: Series) -> Volume:
    """Read one series of a zip listed by :func:`_zip_series`, from a fresh unpacking; named
    ``the.zip/its/folder`` in warnings and errors."""
    from mrct.io.dicom_read import read_series_files
    from mrct.io.dicom_zip import unzipped

    with unzipped(s.path) as folder:
        row = next((r for r in _zip_listing(folder, s.path) if r.id == s.member), None)
        if row is None or row.stack is None:
            raise ReadError("the series is no longer in the zip (replaced since it was listed?)", s.path)
        where = s.path / row.input if row.input != "." else s.path
        volume = read_series_files(row.stack, where, None, False)
    return volume.replace(source=SourceInfo(str(s.path), "dicom-zip", volume.source.dicom))


# The most a folder's name may take (bytes): output folders are made, never renamed into place.
MAX_FOLDER_BYTES = 255


def _is_output_name(path: Path) -> bool:
    """Named as mrct names its outputs (``<name>_synthetic_ct.nii.gz``)."""
    name = path.name.lower()
    suffix = next((x for x in SCAN_SUFFIXES if name.endswith(x)), "")
    return name[: len(name) - len(suffix)].endswith(("_synthetic_ct", "_synthetic_mr"))


def _stem(s: Series) -> str:
    return scan_stem(s.path.name if s.input != "." else s.path.resolve().name)


def _output_format(s: Series, fmt: OutputFormat | None) -> tuple[OutputFormat, str]:
    """The format of a series' output (``fmt``, else DICOM for DICOM, else the input's) and its
    file extension ("" for a DICOM folder)."""
    out_fmt = fmt or (OutputFormat.DICOM if s.stack else input_format(s.path))
    return out_fmt, "" if out_fmt is OutputFormat.DICOM else EXTENSIONS[out_fmt]


def name_outputs(
    series: list[Series], to: Modality, fmt: OutputFormat | None, keep: dict[str, str] | None = None
) -> list[Series]:
    """Give each readable series its output (relative, file-safe, unique; see the module docstring).
    Names depend on the input tree only, never on which series a run translates. ``keep`` (series
    id -> output, from a resumed run's manifest) keeps those names, so a series added to the tree
    since does not rename outputs already written."""
    readable = [s for s in series if s.skip is None and s.error is None]
    per_folder: dict[str, int] = defaultdict(int)
    for s in readable:
        per_folder[s.input] += 1
    # Names an earlier run wrote are reserved, also for a series unreadable or gone this time (a
    # file cut short, a zip that could not be listed): another series must not take them meanwhile.
    readable_ids = {s.id for s in readable}
    taken = {str(v).lower() for k, v in (keep or {}).items() if v and k not in readable_ids}
    named: dict[str, Series] = {}
    for s in readable:
        out_fmt, ext = _output_format(s, fmt)
        old = PurePosixPath((keep or {}).get(s.id) or "")
        ours = old.name.endswith(f"_synthetic_{to.value.lower()}{ext}")
        if ours and not old.is_absolute() and ".." not in old.parts and str(old).lower() not in taken:
            taken.add(str(old).lower())
            named[s.id] = replace(s, output=str(old), fmt=out_fmt)
    for s in (s for s in readable if s.id not in named):
        base = fit_name(safe_name(_stem(s)))
        if per_folder[s.input] > 1:
            base += f"_s{s.number}" + (f"_{s.part}" if s.part else "")
        # A folder's name fits the file system as it is, but composed (NFC) it may not: U+0958 is
        # two code points composed, so 80 of them (240 bytes) become 480.
        folders = PurePosixPath(s.input).parent.parts
        parent = PurePosixPath(*(fit_name(safe_name(p), MAX_FOLDER_BYTES) for p in folders if p != "."))
        out_fmt, ext = _output_format(s, fmt)
        n, name = 1, base
        while (out := (parent / f"{name}_synthetic_{to.value.lower()}{ext}").as_posix()).lower() in taken:
            n, name = n + 1, f"{base}_{n + 1}"
        taken.add(out.lower())
        named[s.id] = replace(s, output=out, fmt=out_fmt)
    return [named.get(s.id, s) for s in series]
