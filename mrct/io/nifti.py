"""NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel. NIfTI is RAS, like mrct.

The raw header is checked before nibabel sees it: nibabel quietly "fixes" a
zero or negative pixdim and logs to stderr, and would allocate whatever the
dimensions claim. A gzip stream is read to its end once, so its CRC is checked
(a corrupt stream can otherwise decode into plausible but wrong voxels) and its
size is bounded (a gzip bomb stops at the size the header implies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import logging
import math
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mrct.errors import GeometryError, ReadError, TooLargeError, WriteError
from mrct.io.atomic import atomic_file
from mrct.io.limits import format_size, max_memory
from mrct.io.validate import check_affine, check_shape, check_values, storable
from mrct.volume import SHEAR_TOL, Modality, SourceInfo, Volume, shear

if TYPE_CHECKING:
    from nibabel import Nifti1Image, Nifti2Image

# NIfTI datatype codes mrct reads (bytes per voxel), and those it refuses by name.
_ITEMSIZE = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}
_NOT_SCALAR = {32: "complex64", 128: "RGB24", 1536: "float128", 1792: "complex128", 2048: "complex256"}
_NOT_SCALAR |= {2304: "RGBA32"}
_CHUNK = 1 << 20
# Millimetres per spatial unit code (the low 3 bits of xyzt_units: 1 metre, 2 mm, 3 micron).
# Unknown (0), and codes NIfTI does not define, are read as mm (the common default).
_MM_PER_UNIT = {1: 1000.0, 3: 0.001}

log = logging.getLogger(__name__)


def read_nifti(path: Path, modality: Modality | None = None) -> Volume:
    """Read a NIfTI file, applying ``scl_slope``/``scl_inter``.

    The affine is nibabel's choice (sform when its code is set, else qform), in mm:
    a header whose spatial unit is metres or microns is scaled to mm. With neither
    code set, the geometry is unknown and nibabel's voxel-size-only affine is used,
    with a warning; so, with a warning giving the distance, is a sform that ITK (3D Slicer)
    would not use: with a qform that disagrees and sform_code other than 1, sheared, or scaled
    unlike pixdim. Unscaled integer data keep their dtype; scaled data become float32.
    """
    import nibabel as nib

    compressed = path.name.lower().endswith(".gz")
    end = check_header(path, compressed)
    if compressed:
        verify_gzip(path, end)
    try:
        with _nibabel_quiet():  # header fixes are logged, not raised
            img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for bad headers
        raise ReadError(f"not a readable NIfTI file ({_short(err)})", path) from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ReadError("not a NIfTI image", path)
    shape = check_shape(tuple(int(d) for d in img.shape), path)
    affine = _affine_mm(img, path)
    check_affine(affine, path)
    try:
        slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
        unscaled = slope == 1 and inter == 0
        data = np.asanyarray(img.dataobj) if unscaled else img.get_fdata(dtype=np.float32)
    except (EOFError, OSError, zlib.error, ValueError) as err:
        raise ReadError(f"truncated or corrupt image data ({_short(err)})", path) from err
    data = np.asarray(data).reshape(shape)
    if not data.dtype.isnative:  # a big-endian file: ITK (NRRD/MHA output) takes native order only
        data = data.astype(data.dtype.newbyteorder("="))
    check_values(data, path)  # before float32: a finite float64 beyond its range is said as such
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    description = bytes(img.header["descrip"]).split(b"\0")[0].decode("ascii", "replace")
    source = dataclasses.replace(_source(img, affine, shape, path), description=description)
    return Volume(data, affine, modality, source)


ITK_WARN_MM = 0.5  # where ITK places an image further from mrct than this, say so
_ITK_WARNINGS = threading.Lock()


def _source(
    img: Nifti1Image | Nifti2Image, affine: npt.NDArray[np.float64], shape: tuple[int, ...], path: Path
) -> SourceInfo:
    """SourceInfo, with the header's qform/sform pair when readers may place the image
    differently (see SourceInfo.nifti_qform), warning when ITK and 3D Slicer do."""
    hdr = img.header
    codes = (int(hdr["qform_code"]), int(hdr["sform_code"]))
    if codes == (0, 0):  # each reader's default: outputs keep none either
        return SourceInfo(
            str(path), "nifti", nifti_qform=_rows(affine), nifti_sform=_rows(affine), nifti_codes=codes
        )
    mm_per_unit = _MM_PER_UNIT.get(int(hdr["xyzt_units"]) & 0x07, 1.0)
    try:
        qform = np.asarray(img.get_qform(), dtype=np.float64)
    except ValueError:  # quatern_b, c, d outside the unit ball: no rotation (nibabel raises)
        if codes[0]:  # the sform places it (a qform alone would have failed to load)
            log.warning(
                "%s: its qform is not a rotation (quatern_b, c and d squared sum over 1); mrct uses "
                "the sform, ITK and 3D Slicer may place the image elsewhere, and NIfTI outputs get "
                "both forms from the sform",
                path,
            )
        return SourceInfo(str(path), "nifti")
    qform[:3, :] *= mm_per_unit
    apart = corner_distance(qform, affine, shape) if codes[0] and codes[1] else 0.0
    zooms = np.asarray(hdr["pixdim"][1:4], dtype=np.float64) * mm_per_unit
    scales_differ = not np.allclose(np.linalg.norm(affine[:3, :3], axis=0), zooms, rtol=1e-4)
    off = 0.0  # how far ITK places the image from the sform (mm)
    if apart > 1e-3 or shear(affine) > SHEAR_TOL or scales_differ:
        # Where ITK rejects the sform (sheared, or scaled unlike pixdim) or prefers the qform,
        # 3D Slicer shows the image elsewhere: ask ITK itself rather than restate its rules.
        itk = _itk_affine(path)
        off = corner_distance(itk, affine, shape) if itk is not None else 0.0
        if off > ITK_WARN_MM:
            why = [f"sform_code is {codes[1]}, not 1"] if apart > 1e-3 and codes[1] != 1 else []
            why += ["its sform is sheared"] if shear(affine) > SHEAR_TOL else []
            why += ["its sform's voxel sizes differ from pixdim"] if scales_differ else []
            log.warning(
                "%s: ITK and 3D Slicer place this image up to %.1f mm from where mrct does (mrct, "
                "nibabel and FSL use the sform; ITK does not, as %s). Levels from locate, --crop-mm "
                "and --crop-markups refer to the sform; NIfTI outputs keep both forms, NRRD, MHA "
                "and DICOM outputs follow the sform",
                path,
                off,
                " and ".join(why) or "its qform and sform disagree",
            )
    # One geometry that every reader uses: outputs get it as both forms. Otherwise (the forms
    # disagree, a sheared sform, or a sform alone that ITK reads by pixdim) they keep the header's.
    disagree = codes[0] != 0 and codes[1] != 0 and (apart > 1e-3 or shear(affine) > SHEAR_TOL)
    if not disagree and off <= ITK_WARN_MM:
        return SourceInfo(str(path), "nifti")
    return SourceInfo(
        str(path), "nifti", nifti_qform=_rows(qform), nifti_sform=_rows(affine), nifti_codes=codes
    )


def _itk_affine(path: Path) -> npt.NDArray[np.float64] | None:
    """The RAS affine ITK (and so 3D Slicer) reads from the header, or None when it cannot."""
    import SimpleITK as sitk

    from mrct.io.itk import ras_affine

    # ITK's warning switch is process-wide and batch reads in threads: one flip at a time.
    with _ITK_WARNINGS:
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "unexpected scales in sform" on stderr
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            if reader.GetDimension() < 3:
                return None
            return ras_affine(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
        except RuntimeError:  # a header ITK cannot read (NIfTI-2 in some builds): nothing to compare
            return None
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def corner_distance(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], shape: tuple[int, ...]) -> float:
    """How far apart (mm) two affines place the corner voxels of a grid of ``shape``."""
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    )
    return float(np.max(np.linalg.norm((corners @ a.T - corners @ b.T)[:, :3], axis=1)))


def _rows(matrix: npt.NDArray[np.float64]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in matrix)


def _affine_mm(img: Nifti1Image | Nifti2Image, path: Path) -> npt.NDArray[np.float64]:
    """The image's voxel-to-RAS affine in mm, warning when the header gives no geometry."""
    hdr = img.header
    if int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
        # The grid's size is known, its place and orientation not: nibabel centres it with x
        # flipped, ITK and 3D Slicer put it at the origin unflipped. NIfTI outputs keep both
        # codes 0 (see _source), so each reader places them where it places the input.
        log.warning(
            "%s: qform_code and sform_code are both 0, so the geometry is unknown; using nibabel's "
            "affine from the voxel size only (ITK and 3D Slicer place it elsewhere: NIfTI outputs "
            "keep it unset, NRRD, MHA and DICOM outputs get that affine)",
            path,
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    degenerate = not abs(np.linalg.det(affine[:3, :3])) > 1e-12
    if degenerate and int(hdr["sform_code"]) > 0 and int(hdr["qform_code"]) > 0:
        # An exporter that zeroed the sform but kept its code: ITK reads the qform then.
        log.warning("%s: the sform is degenerate (all zero?); using the qform, as ITK does", path)
        affine = np.asarray(img.get_qform(), dtype=np.float64)
    # Raw bits, not get_xyzt_units(): that raises KeyError on a time code it does not know.
    unit = int(hdr["xyzt_units"]) & 0x07
    if unit in _MM_PER_UNIT:
        log.warning(
            "%s: its spatial unit is %s; mrct reads it in mm, as ITK and 3D Slicer do, but nibabel and "
            "FSL ignore the unit, and mrct's outputs are written in mm, so those two place the outputs "
            "%g times as far from the origin as this input",
            path,
            "metres" if unit == 1 else "micrometres",
            _MM_PER_UNIT[unit],
        )
    affine[:3, :] *= _MM_PER_UNIT.get(unit, 1.0)
    return affine


def raw_header(path: Path, compressed: bool) -> np.void:
    """The header as a NIfTI-1 or NIfTI-2 structured record (fields read in the file's byte order)."""
    import nibabel as nib

    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as fh:
            head = fh.read(540)
    except (EOFError, zlib.error) as err:
        raise ReadError(f"truncated or corrupt image data (gzip: {_short(err)})", path) from err
    except gzip.BadGzipFile as err:
        raise ReadError("not a NIfTI file (the name ends in .gz but the content is not gzip)", path) from err
    for dtype in (nib.nifti1.header_dtype, nib.nifti2.header_dtype):
        for order in (dtype, dtype.newbyteorder()):
            if len(head) >= order.itemsize:
                hdr: np.void = np.frombuffer(head[: order.itemsize], order)[0]
                if int(hdr["sizeof_hdr"]) == order.itemsize:
                    return hdr
    if len(head) < 348:
        raise ReadError(f"not a NIfTI file (truncated: {len(head)} bytes, a header needs 348)", path)
    raise ReadError("not a NIfTI file (no NIfTI-1 or NIfTI-2 header)", path)


def check_header(path: Path, compressed: bool) -> int:
    """Check dimensions, data type, voxel size and data size; returns the byte where voxels end."""
    hdr = raw_header(path, compressed)
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7:
        raise ReadError(f"impossible image dimensions: dim[0] = {dim[0]} (NIfTI allows 1 to 7)", path)
    dims = tuple(dim[1 : dim[0] + 1])
    if any(d < 1 for d in dims):
        raise ReadError(f"impossible image dimensions {dims}", path)
    code = int(hdr["datatype"])
    if code in _NOT_SCALAR:
        raise ReadError(f"a single-channel real image is needed; this one holds {_NOT_SCALAR[code]}", path)
    if code not in _ITEMSIZE:
        raise ReadError(f"unknown NIfTI data type code {code}", path)
    check_shape(dims, path, _ITEMSIZE[code])
    pixdim = [float(p) for p in hdr["pixdim"][1 : 1 + min(3, dim[0])]]
    if not all(math.isfinite(p) and p > 0 for p in pixdim):
        shown = ", ".join(f"{p:.6g}" for p in pixdim)
        raise GeometryError(f"the header's voxel size is not a positive number (pixdim {shown})", path)
    size = hdr.dtype.itemsize
    offset = float(hdr["vox_offset"])
    if not math.isfinite(offset) or offset < 0:
        raise ReadError(f"impossible voxel offset {offset} in the header", path)
    offset = max(int(offset), size + 4)  # nibabel (and FSL) treat a too-small offset as the minimum
    end = offset + math.prod(dims) * _ITEMSIZE[code]
    if offset > max_memory():
        raise TooLargeError(f"the header puts the voxels at byte offset {offset}, beyond any image", path)
    if not compressed and path.stat().st_size < end:
        raise ReadError(
            f"truncated: the header needs {end} bytes (voxels from byte offset {offset}), "
            f"the file has {path.stat().st_size}",
            path,
        )
    return end


def verify_gzip(path: Path, end: int) -> None:
    """Decompress to the end (CRC checked), at most a little past ``end``, without keeping the data."""
    cap = 2 * end + _CHUNK  # writers may pad; a bomb's trailing gigabytes are refused
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                total += len(chunk)
                if total > cap:
                    raise TooLargeError(
                        f"the gzip stream expands beyond {format_size(cap)} although the header "
                        f"needs {format_size(end)} (a gzip bomb?)",
                        path,
                    )
    except EOFError as err:
        message = "truncated or corrupt image data (the gzip stream ends before its end marker)"
        raise ReadError(message, path) from err
    except (zlib.error, gzip.BadGzipFile) as err:
        raise ReadError(f"truncated or corrupt image data (gzip: {_short(err)})", path) from err
    if total < end:
        raise ReadError(f"truncated: the header needs {end} bytes, the gzip stream holds {total}", path)


NIFTI1_MAX_DIM = 32767


def write_nifti(volume: Volume, path: Path, overwrite: bool = False, description: str | None = None) -> Path:
    """Write with qform and sform both set to the volume's affine, units mm; ``description``
    (else "mrct CT" or "mrct MR"; see :func:`mrct.io.header_label`) goes into ``descrip``."""
    import nibabel as nib

    if max(volume.shape) > NIFTI1_MAX_DIM:  # dim[] is int16 (nibabel raised HeaderDataError)
        raise WriteError(
            f"NIfTI-1 holds at most {NIFTI1_MAX_DIM} voxels along an axis, the volume has "
            f"{volume.shape}; write .nrrd or .mha",
            path,
        )
    array, dtype = _on_disk(volume.array)
    img = nib.Nifti1Image(array, volume.affine, dtype=dtype)
    # Code 1 (scanner) as dcm2niix writes; both forms so every reader agrees. On its input's
    # grid, an image whose readers disagree keeps the input's pair and codes (SourceInfo.nifti_qform):
    # a sheared grid's qform, say, where nibabel's nearest rotation would move it by centimetres
    # in 3D Slicer, which reads the qform then.
    qform, codes, source = volume.affine, (1, 1), volume.source
    same_grid = source.nifti_sform is not None and np.allclose(volume.affine, source.nifti_sform, atol=1e-6)
    if source.nifti_qform is not None and same_grid:
        qform, codes = np.asarray(source.nifti_qform, dtype=np.float64), source.nifti_codes or (1, 1)
        if codes == (0, 0) and not np.allclose(
            _default_affine(volume.shape, volume.affine), volume.affine, atol=1e-4
        ):
            qform, codes = volume.affine, (1, 1)  # readers' defaults depend on the shape: a crop moves
    elif shear(volume.affine) > SHEAR_TOL:
        log.warning(
            "%s: the grid is sheared; the sform keeps it (nibabel, FSL), but ITK and 3D Slicer read the "
            "qform, its nearest unsheared grid, up to %.1f mm away",
            path,
            corner_distance(_unsheared_qform(volume.affine), volume.affine, volume.shape),
        )
    img.set_qform(qform, code=codes[0])
    img.set_sform(volume.affine, code=codes[1])
    img.header.set_xyzt_units(xyz="mm", t="sec")
    if description is None and volume.modality is not None:
        description = f"mrct {volume.modality.value}"
    if description:
        img.header["descrip"] = description.encode("ascii", "replace")[:80]
    with atomic_file(path, overwrite, keep=[volume.source.path]) as tmp:
        nib.save(img, str(tmp))
    return path


def _default_affine(shape: tuple[int, ...], affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """nibabel's affine for a header without qform or sform, for a grid of ``shape`` with the
    voxel sizes of ``affine``: centred on the grid, so it changes with the shape."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape[:3])
    header.set_zooms(tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)))
    return np.asarray(header.get_base_affine(), dtype=np.float64)


def _unsheared_qform(affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The qform nibabel stores for ``affine``: the nearest grid without shear."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_qform(affine, code=1)
    return np.asarray(header.get_qform(), dtype=np.float64)


def _on_disk(array: npt.NDArray) -> tuple[npt.NDArray, np.dtype]:
    """The array to save and its NIfTI data type, chosen explicitly: nibabel refuses int64 and
    uint64 without one (other tools misread them) and cannot store bool or float16 at all.

    64-bit integers shrink to int32 (else uint32) when every value fits, and keep their
    64-bit type otherwise, so no value changes; bool becomes uint8, float16 float32, and a
    wider float (long double) float64. Other types are stored as they are.
    """
    dtype = array.dtype
    if dtype.kind == "b" or (dtype.kind == "f" and dtype.itemsize not in (4, 8)):
        stored = storable(array)  # the same rules as for the other writers
        return stored, stored.dtype
    if dtype.kind in "iu" and dtype.itemsize == 8:
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for narrow in (np.dtype(np.int32), np.dtype(np.uint32)):
            info = np.iinfo(narrow)
            if info.min <= low and high <= info.max:
                return array, narrow
    return array, dtype


@contextlib.contextmanager
def _nibabel_quiet() -> Iterator[None]:
    """nibabel's header-fix messages kept off stderr while a file is read. Its own
    ``LoggingOutputSuppressor`` (nibabel 5.4) empties the handler list it keeps to restore, so
    after one read nibabel's logger had no handler for the rest of the process."""
    from nibabel.imageglobals import logger

    saved = list(logger.handlers)
    for handler in saved:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in saved:
            logger.addHandler(handler)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]
