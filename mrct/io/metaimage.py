"""Check a MetaImage (``.mha``/``.mhd``) before SimpleITK reads it.

ITK's MetaIO reports what is wrong with a header on the C-level stderr (which
mrct cannot turn into a one-line error) and throws a bare "Reason: No such file
or directory"; worse, it loops forever on a corrupt compressed stream. So the
header is parsed here, as strictly as MetaIO needs it, and the voxel data are
checked to be complete (compressed data are inflated once, bounded, without
keeping them) before ITK sees the file.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

from mrct.errors import GeometryError, ReadError
from mrct.io.limits import check_bytes, check_voxels

# Bytes per channel of the element types ITK writes and reads (MetaIO's MET_ValueTypeSize).
ELEMENT_SIZE = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
# Fields holding NDims numbers (1) or NDims x NDims numbers (2); MetaIO needs NDims first.
_ARRAYS = {
    "dimsize": 1,
    "elementspacing": 1,
    "elementsize": 1,
    "offset": 1,
    "origin": 1,
    "position": 1,
    "centerofrotation": 1,
    "transformmatrix": 2,
    "rotation": 2,
    "orientation": 2,
}
_BOOLEANS = ("binarydata", "binarydatabyteordermsb", "elementbyteordermsb", "compresseddata")
_HEADER_BYTES = 1 << 16
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# A field name: printable ASCII. Besides MetaIO's own fields, ITK writes an image's metadata
# dictionary as fields of its own, under names such as "dim[0]", "ITK_original_spacing",
# "0008|0060" (DICOM tags) or ones with spaces; MetaIO reads and ignores them all.
_KEY = re.compile(r"[!-~]([ -~]*[!-~])?")


def _header(path: Path) -> tuple[dict[str, str], list[str], int]:
    """Fields (lower-case keys), their order, and the byte where the header ends."""
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_BYTES)
    fields: dict[str, str] = {}
    order: list[str] = []
    end = 0
    for number, raw in enumerate(head.split(b"\n")[:-1], start=1):
        end += len(raw) + 1
        line = raw.decode("latin-1").rstrip("\r")
        if not line.strip(" \t"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip(" \t")  # MetaIO's white space; str.strip() would also take e.g. U+00A0
        control = any(ch < " " and ch != "\t" for ch in line)
        if not sep or control or not _KEY.fullmatch(key):
            raise ReadError(f"malformed MetaImage header (line {number}: {line[:40]!r})", path)
        fields[key.lower()] = value.strip(" \t")
        order.append(key.lower())
        if key.lower() == "elementdatafile":
            return fields, order, end
    raise ReadError("the MetaImage header has no ElementDataFile line (truncated?)", path)


def data_file(path: Path) -> Path | None:
    """The one file a detached header's voxels are in (``ElementDataFile``), or None: the
    header's own (LOCAL), several (LIST, a pattern), or a header that cannot be read."""
    try:
        name = _header(path)[0]["elementdatafile"]
    except (ReadError, OSError):
        return None
    if not name or name.split()[0].upper() in ("LOCAL", "LIST") or "%" in name:
        return None
    return path.parent / name


def _numbers(fields: dict[str, str], key: str, count: int, path: Path) -> list[float]:
    words = fields[key].replace("\t", " ").split(" ")
    values = [float(w) for w in words if _NUMBER.fullmatch(w)]
    if len(values) != len([w for w in words if w]):
        values = []  # a word that is not a plain decimal number
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ReadError(f"MetaImage {key!r} needs {count} numbers, got {fields[key][:60]!r}", path)
    return values


def check_metaimage(path: Path) -> None:
    """Raise ReadError (or GeometryError, TooLargeError) unless ITK can read ``path`` cleanly."""
    fields, order, header_end = _header(path)
    if fields.get("objecttype", "Image").lower() != "image":
        raise ReadError(f"a MetaImage of ObjectType {fields['objecttype']!r} is not an image", path)
    try:
        ndims = int(fields.get("ndims", ""))
    except ValueError:
        raise ReadError("the MetaImage header has no valid NDims", path) from None
    if not 1 <= ndims <= 8:
        raise ReadError(f"impossible MetaImage NDims {ndims}", path)
    for key, rank in _ARRAYS.items():
        if key in fields:
            if order.index(key) < order.index("ndims"):
                raise ReadError(f"MetaImage {key!r} comes before NDims", path)
            _numbers(fields, key, ndims**rank, path)
    for key in _BOOLEANS:
        if fields.get(key, "false").lower() not in ("true", "false"):
            raise ReadError(f"MetaImage {key!r} must be True or False, got {fields[key][:20]!r}", path)
    if "dimsize" not in fields:
        raise ReadError("the MetaImage header has no DimSize", path)
    dims = _numbers(fields, "dimsize", ndims, path)
    if not all(d >= 1 and d == int(d) for d in dims):
        raise ReadError(f"impossible image dimensions {fields['dimsize']!r}", path)
    spacing_key = "elementspacing" if "elementspacing" in fields else "elementsize"
    if spacing_key in fields and min(_numbers(fields, spacing_key, ndims, path)) <= 0:
        raise GeometryError(f"zero or negative voxel spacing ({fields[spacing_key]})", path)
    element = fields.get("elementtype", "").upper()
    if element not in ELEMENT_SIZE:
        raise ReadError(f"unknown MetaImage ElementType {fields.get('elementtype', '')!r}", path)
    try:
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        channels = 0
    if channels != 1:
        raise ReadError("a single-channel image is needed", path)
    check_voxels([int(d) for d in dims], ELEMENT_SIZE[element], path)
    raw_bytes = math.prod(int(d) for d in dims) * ELEMENT_SIZE[element]
    _check_data(path, fields, header_end, raw_bytes)


def _check_data(path: Path, fields: dict[str, str], header_end: int, raw_bytes: int) -> None:
    """The voxel data are all there; a compressed stream inflates to exactly ``raw_bytes``."""
    data_file = fields["elementdatafile"]
    if not data_file or not data_file.isprintable():
        raise ReadError(f"malformed MetaImage ElementDataFile {data_file[:40]!r}", path)
    if data_file.upper() == "LIST" or "%" in data_file:
        return  # slices in several files: ITK checks them
    source, start = (path, header_end) if data_file.upper() == "LOCAL" else (path.parent / data_file, 0)
    if not source.is_file():
        raise ReadError(f"the data file {data_file!r} named by the header is missing", path)
    present = source.stat().st_size - start
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if not compressed:
        if present < raw_bytes:
            message = f"truncated: the header needs {raw_bytes} bytes of voxels, {present} are present"
            raise ReadError(message, path)
        return
    check_bytes(present, "the compressed voxel data", path)
    size = fields.get("compresseddatasize", "")
    if not size and source == path:  # MetaIO then misreads the stream (wrong voxels, no error)
        raise ReadError("compressed voxels in the file but no CompressedDataSize in the header", path)
    if size and (not re.fullmatch(r"[0-9]+", size) or int(size) > present):
        message = f"truncated: the header says {size} bytes of compressed voxels, {present} are present"
        raise ReadError(message, path)
    with open(source, "rb") as fh:
        fh.seek(start)
        packed = fh.read(int(size) if size else present)
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip framing, as MetaIO accepts
    inflated = 0
    try:
        while packed and not inflater.eof and inflated <= raw_bytes:
            inflated += len(inflater.decompress(packed, 1 << 22))
            packed = inflater.unconsumed_tail
    except zlib.error as err:
        raise ReadError(f"corrupt compressed voxel data ({err})", path) from err
    if inflated != raw_bytes or not inflater.eof:  # eof: the checksum at the end was read
        message = f"truncated or corrupt: the voxels inflate to {inflated} bytes, not {raw_bytes}"
        raise ReadError(message, path)
