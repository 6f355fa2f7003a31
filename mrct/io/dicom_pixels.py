"""Decode a DICOM series' pixel data: load it for headers read with deferred values, decode
it with a message that says what is wrong, and apply the rescale (split from
:mod:`mrct.io.dicom_read`, which places the frames in space)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from mrct.errors import GeometryError, ReadError
from mrct.io import native_stderr
from mrct.io.dicom_scan import header_int

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


class FrameRef(Protocol):
    """Where one 2D image's pixels are: which file, and which frame of it (None: single-frame)."""

    @property
    def file_index(self) -> int: ...

    @property
    def frame_index(self) -> int | None: ...


def transfer_syntax_name(uid: object) -> str:
    """``JPEG Baseline (Process 1) (1.2.840.10008.1.2.4.50)``; the bare UID when unnamed."""
    name = getattr(uid, "name", str(uid))
    return f"{name} ({uid})" if name != str(uid) else str(uid)


# The Image Pixel module: what decoding pixel data needs besides the transfer syntax.
PIXEL_MODULE = (
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "PixelData", "FloatPixelData",
)  # fmt: skip
DEFLATED = "1.2.840.10008.1.2.1.99"


def pixel_dataset(header: Dataset) -> Dataset | None:
    """The Image Pixel module of a header read with deferred values
    (:func:`mrct.io.dicom_file.read_header_dataset`), its pixel data loaded from the file, as
    a new dataset: the header keeps its deferred element (a batch holds many headers). None
    when the header cannot give it (read without pixel data, or from a deflated file, whose
    offsets are those of the inflated stream)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset as PixelDataset
    from pydicom.filereader import read_deferred_data_element

    meta = getattr(header, "file_meta", None)
    filename = getattr(header, "filename", None)
    if meta is None or not isinstance(filename, str) or str(meta.get("TransferSyntaxUID", "")) == DEFLATED:
        return None
    if "PixelData" not in header and "FloatPixelData" not in header:
        return None
    # A file rewritten since its header was read (a batch reads hours after it searched):
    # read it whole again, so that header and pixels come from the same file.
    try:
        stat = os.stat(filename)
    except OSError:
        return None
    if header.timestamp is None or stat.st_mtime != header.timestamp:
        return None
    out = PixelDataset()
    for keyword in PIXEL_MODULE:
        element = header.get_item(keyword, keep_deferred=True) if keyword in header else None
        if isinstance(element, RawDataElement) and element.value is None and element.length:
            element = read_deferred_data_element(header.fileobj_type, filename, header.timestamp, element)
        if element is not None:
            out[element.tag] = element
    out.file_meta = meta
    implicit, little = header.original_encoding
    out.set_original_encoding(implicit, little, header.original_character_set)
    return out


def load_pixels(
    datasets: list[Dataset], frames: Sequence[FrameRef], files: tuple[Path, ...], rows: int, cols: int
) -> npt.NDArray:
    """Stored pixel values as [frame, row, col], in input frame order."""
    out: npt.NDArray | None = None
    decoded: dict[int, npt.NDArray] = {}
    for n, f in enumerate(frames):
        if f.file_index not in decoded:
            ds = datasets[f.file_index]
            if header_int(ds, "Rows") != rows or header_int(ds, "Columns") != cols:
                raise GeometryError("slices of different sizes in one series", files[f.file_index])
            arr = decode(ds, files[f.file_index])
            try:
                decoded = {f.file_index: arr.reshape((-1, rows, cols))}
            except ValueError as err:
                raise ReadError(
                    "the decoded pixel data do not fit Rows x Columns", files[f.file_index]
                ) from err
        plane = decoded[f.file_index][0 if f.frame_index is None else f.frame_index]
        if out is None:
            out = np.empty((len(frames), rows, cols), dtype=plane.dtype)
        out[n] = plane
    assert out is not None
    return out


def decode(ds: Dataset, path: Path) -> npt.NDArray:
    """``ds.pixel_array``, with a message that says what is wrong when it cannot be decoded."""
    from pydicom.uid import UID

    meta = ds.file_meta if hasattr(ds, "file_meta") else None
    if meta is not None and "TransferSyntaxUID" not in meta:
        # No transfer syntax (old files): the encoding pydicom read the file with says it.
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = UID(
            "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"
        )
    uid = getattr(meta, "TransferSyntaxUID", None)
    compressed = uid is not None and uid.is_transfer_syntax and uid.is_compressed
    printed: list[str] = []  # what a C decoder wrote on stderr meanwhile
    try:
        with native_stderr.caught(printed) if compressed else contextlib.nullcontext():
            pixels: npt.NDArray = ds.pixel_array
    except Exception as err:  # decoders raise many kinds
        said, rest = native_stderr.decoder_lines("".join(printed))
        native_stderr.echo(rest)
        syntax = transfer_syntax_name(uid)
        native = uid is not None and uid.is_transfer_syntax and not uid.is_compressed
        if native and "PixelData" in ds:
            frames = max(1, header_int(ds, "NumberOfFrames", 1))
            need = header_int(ds, "Rows") * header_int(ds, "Columns") * frames
            need *= max(1, header_int(ds, "BitsAllocated", 16) // 8)
            have = len(ds.PixelData)
            if have < need:
                message = f"truncated or corrupt pixel data: {have} bytes where Rows x Columns need {need}"
                raise ReadError(message, path) from err
        if isinstance(err, NotImplementedError):
            raise ReadError(f"transfer syntax {syntax} is not supported (no decoder for it)", path) from err
        # The C decoder's own first line (libjpeg's "Corrupt JPEG data: ...") says more than the
        # last plugin's exception.
        lines = said or [ln.strip() for ln in str(err).splitlines() if ln.strip()][-1:]
        why = lines[0][:200] if lines else type(err).__name__
        raise ReadError(f"cannot decode the pixel data (transfer syntax {syntax}): {why}", path) from err
    said, rest = native_stderr.decoder_lines("".join(printed))
    native_stderr.echo(rest)
    # libjpeg decodes a damaged stream with a warning and grey where the data ran out, and which
    # plugin pydicom reaches first (GDCM raises on it, or not) varies: damage is an error either way.
    if damage := next((line for line in said if native_stderr.DAMAGED_STREAM.search(line)), None):
        raise ReadError(
            f"cannot decode the pixel data (transfer syntax {transfer_syntax_name(uid)}): {damage}", path
        )
    native_stderr.echo("".join(f"{line}\n" for line in said))  # its other warnings, as it printed them
    return pixels


def rescale(pixels: npt.NDArray, slopes: npt.NDArray, intercepts: npt.NDArray) -> npt.NDArray:
    """Apply RescaleSlope/Intercept per frame; keep integers when the result is integral and fits
    int32. Float pixel data (FloatPixelData, as in parametric maps) stays float: with slope 1 it
    was cast to integers, dropping the fractions; and uint32 values past 2**31 wrapped negative."""
    if pixels.dtype.kind in "iu" and np.all(slopes == 1) and np.all(intercepts == np.round(intercepts)):
        lo = float(pixels.min()) + float(intercepts.min())
        hi = float(pixels.max()) + float(intercepts.max())
        if lo >= -(2**31) and hi < 2**31:
            dtype = np.int16 if lo >= -(2**15) and hi < 2**15 else np.int32
            out: npt.NDArray[np.signedinteger[Any]] = pixels.astype(dtype)
            if np.any(intercepts):
                out = np.add(out, intercepts.astype(dtype)[:, None, None], dtype=dtype)
            return out
    scaled = pixels.astype(np.float64) * slopes[:, None, None] + intercepts[:, None, None]
    return scaled.astype(np.float32)
