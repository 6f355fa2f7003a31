"""One DICOM file's header: read with its pixel data left in the file, refused when damaged
(cut short, a deflated stream that inflates past the memory limit), and told from a file that is
not a DICOM image."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrct.errors import GeometryError, MrctError, ReadError, TooLargeError
from mrct.io.dicom_split import placement_damage
from mrct.io.limits import limit_hint, max_memory
from mrct.io.sniff import raw_dicom_dataset

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
DEFLATED = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


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
