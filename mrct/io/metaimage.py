"""Check a MetaImage (``.mha``/``.mhd``) before SimpleITK reads it.

ITK's MetaIO reports what is wrong with a header on the C-level stderr (which
mrct cannot turn into a one-line error) and throws a bare "Reason: No such file
or directory"; worse, it loops forever on a corrupt compressed stream. So the
header is parsed here, as strictly as MetaIO needs it, and the voxel data are
checked to be complete (compressed data are inflated once, bounded, without
keeping them) before ITK sees the file. That includes voxels split over several
files (``ElementDataFile = LIST`` or a ``slice_%03d.raw`` pattern): given too few
files, MetaIO leaves the other slices zero or uninitialised, without an error.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Iterable
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
    shape = [int(d) for d in dims]
    check_voxels(shape, ELEMENT_SIZE[element], path)
    _check_data(path, fields, header_end, shape, ELEMENT_SIZE[element])


def _check_data(path: Path, fields: dict[str, str], header_end: int, shape: list[int], item: int) -> None:
    """The voxel data are all there; a compressed stream inflates to exactly their bytes."""
    data_file = fields["elementdatafile"]
    if not data_file or not data_file.isprintable():
        raise ReadError(f"malformed MetaImage ElementDataFile {data_file[:40]!r}", path)
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if data_file.startswith("LIST") or "%" in data_file:  # MetaIO's tests, in its order
        _check_slice_files(path, fields, header_end, shape, item, compressed)
        return
    raw_bytes = math.prod(shape) * item
    source, start = (path, header_end) if data_file.upper() == "LOCAL" else (path.parent / data_file, 0)
    if not source.is_file():
        raise ReadError(f"the data file {data_file!r} named by the header is missing", path)
    present = source.stat().st_size - start
    if not compressed:
        if present < raw_bytes:
            message = f"truncated: the header needs {raw_bytes} bytes of voxels, {present} are present"
            raise ReadError(message, path)
        return
    size = fields.get("compresseddatasize", "")
    if not size and source == path:  # MetaIO then misreads the stream (wrong voxels, no error)
        raise ReadError("compressed voxels in the file but no CompressedDataSize in the header", path)
    _check_stream(path, source, start, size, raw_bytes, "")


def _check_stream(path: Path, source: Path, start: int, size: str, raw_bytes: int, where: str) -> None:
    """The compressed voxels in ``source`` from ``start`` (``size`` bytes, or all) inflate to
    exactly ``raw_bytes``; ``where`` names a slice file in the messages."""
    present = source.stat().st_size - start
    check_bytes(present, "the compressed voxel data", path)
    if size and (not re.fullmatch(r"[0-9]+", size) or int(size) > present):
        message = f"truncated: the header says {size} bytes of compressed voxels, {present} are present"
        raise ReadError(message + where, path)
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
        raise ReadError(f"corrupt compressed voxel data{where} ({err})", path) from err
    if inflated != raw_bytes:
        message = f"truncated or corrupt: the voxels{where} inflate to {inflated} bytes, not {raw_bytes}"
        raise ReadError(message, path)
    if not inflater.eof:  # the checksum at the end was not read: cut short, or CompressedDataSize
        raise ReadError(f"truncated: the compressed voxels{where} end before their checksum", path)


def _check_slice_files(
    path: Path, fields: dict[str, str], header_end: int, shape: list[int], item: int, compressed: bool
) -> None:
    """Every file MetaIO will read the voxels from is there and holds its part. MetaIO reads
    the files it is given: too few (or a last name without a line end) leave the other
    slices zero or uninitialised without an error, and a missing or short one gets ITK's
    bare "No such file or directory"."""
    names, voxels = _slice_files(path, fields, header_end, shape)
    need = voxels * item
    skip = fields.get("headersize", "0")
    if not re.fullmatch(r"-?[0-9]+", skip):
        raise ReadError(f"MetaImage 'headersize' must be a whole number, got {skip[:20]!r}", path)
    # MetaIO skips HeaderSize bytes of each uncompressed file (-1: the data end the file);
    # it inflates compressed ones from their first byte (CompressedDataSize of each, or all).
    skip_bytes = max(int(skip), 0)
    size = fields.get("compresseddatasize", "")
    for name in names:
        source = path.parent / name
        if not source.is_file():
            raise ReadError(f"the slice file {name!r} named by the header is missing", path)
        if compressed:
            _check_stream(path, source, 0, size, need, f" in the slice file {name!r}")
        elif source.stat().st_size < skip_bytes + need:
            after = f" after a {skip_bytes}-byte header" if skip_bytes else ""
            message = f"truncated: the slice file {name!r} is {source.stat().st_size} bytes"
            raise ReadError(f"{message}, one slice needs {need}{after}", path)


# One printf integer conversion, as MetaIO formats a file number (no '#', whose octal and
# hexadecimal forms differ from C's, and no length modifier: MetaIO passes an int).
_CONVERSION = re.compile(r"%[-+ 0]*[0-9]{0,3}(\.[0-9]{0,3})?[diouxX]")


def _slice_files(
    path: Path, fields: dict[str, str], header_end: int, shape: list[int]
) -> tuple[Iterable[str], int]:
    """The files MetaIO reads the voxels from, in order, and the voxels it reads from each."""
    spec = fields["elementdatafile"]
    words = spec.split()
    if spec.startswith("LIST"):  # "LIST" or "LIST 2D": the names follow, one a line
        found = re.match(r"[-+]?[0-9]+", words[1]) if len(words) > 1 else None
        dim = int(found.group()) if found else 0  # MetaIO's atof: "2D" is 2
        dim = len(shape) - 1 if dim == 0 or dim > len(shape) else dim
        if dim < 0 or dim == len(shape):  # MetaIO then indexes outside its arrays: garbage
            message = f"ElementDataFile {spec!r}: each file must hold 1 to {len(shape) - 1} dimensions"
            raise ReadError(message, path)
        needed = math.prod(shape[dim:])
        names: list[str] = []
        line = b""
        with open(path, "rb") as fh:
            fh.seek(header_end)
            # MetaIO strips the end of each line (white space, bytes that are not printable
            # ASCII), not its start, and drops a last line that has no line end.
            while len(names) < needed and (line := fh.readline(4096)).endswith(b"\n"):
                names.append(os.fsdecode(line.rstrip(bytes([*range(0x21), *range(0x7F, 0x100)]))))
        if len(names) < needed:
            what = "slices" if dim == len(shape) - 1 else f"files of {dim}D blocks"
            cut = line.strip() and len(line) < 4096  # a name, not the start of a long line
            hint = " (the last line has no line end, which ITK skips)" if cut else ""
            message = f"ElementDataFile LIST names {len(names)} files, DimSize needs {needed} {what}"
            raise ReadError(message + hint, path)
        return names, math.prod(shape[:dim])
    # A pattern: "name%03d.raw [first [last [step]]]" (a name with spaces: all three numbers).
    pattern, numbers = (" ".join(words[:-3]), words[-3:]) if len(words) >= 5 else (words[0], words[1:])
    pattern = os.fsdecode(pattern.encode("latin-1"))  # the header's bytes, as MetaIO opens them
    if not all(_NUMBER.fullmatch(w) and abs(float(w)) < 2**31 for w in numbers):  # C ints
        raise ReadError(f"ElementDataFile {spec!r}: the file numbers are not numbers", path)
    values = [int(float(w)) for w in numbers]  # MetaIO's atof, then truncated
    count = shape[-1]
    first, last, step = 1, count, 1  # MetaIO's defaults
    if values:
        first, last = values[0], values[0] + count - 1
    if len(values) >= 2:
        last, step = values[1], math.trunc((values[1] - first) / count)  # C's integer division
    if len(values) >= 3:
        step = values[2]
    if step < 1:  # 0: ITK divides by it and the process dies (SIGFPE); < 0: it never ends
        raise ReadError(f"ElementDataFile {spec!r}: the file number step is {step}, not 1 or more", path)
    if first < 0:  # C and Python print negative numbers differently in %u, %x, %o
        raise ReadError(f"ElementDataFile {spec!r}: negative file numbers", path)
    found_files = max(0, (last - first) // step + 1)  # MetaIO reads no more than DimSize needs
    if found_files < count:
        message = f"ElementDataFile {spec!r} names {found_files} files, DimSize needs {count} slices"
        raise ReadError(message, path)
    bare = pattern.replace("%%", "")
    if len(_CONVERSION.findall(bare)) != 1 or "%" in _CONVERSION.sub("", bare):
        # MetaIO passes the pattern to sprintf: "%s" or two conversions read past its argument
        raise ReadError(f"ElementDataFile {spec!r}: the file name needs one conversion like %03d", path)
    return (pattern % (first + k * step) for k in range(count)), math.prod(shape[:-1])
