"""Broken and hostile files for the bad-input corpus: NIfTI, NRRD/MHA, misnamed files,
zips and paths (no patient data). Each builder takes a scratch folder and returns the
path to hand to mrct; tests/bad_inputs.py lists them with the error each must give.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from mrct.io import read_volume, write_volume
from tests.dicom_factory import write_series
from tests.phantoms import phantom

# -------------------------------------------------------------------------- helpers


def good_nifti(folder: Path, name: str = "good.nii.gz", dtype: type = np.int16) -> Path:
    """A small valid CT phantom (oblique, anisotropic)."""
    vol = phantom(shape=(12, 10, 7))
    return write_volume(vol.replace(array=vol.array.astype(dtype)), folder / name)


def good_series(folder: Path, **kwargs: object) -> Path:
    """A small valid single-frame MR series (6 slices of 20 x 24, with rescale tags).

    MR, so that ``mrct batch --to ct`` reads it rather than skipping it as a CT.
    """
    options: dict[str, object] = {"modality": "MR", "shape": (20, 24, 6), "rescale_slope": 1.0} | kwargs
    return write_series(folder, **options).folder  # type: ignore[arg-type]


def _nifti_bytes(dims: tuple[int, ...], datatype: int = 4, bitpix: int = 16, two: bool = False) -> bytes:
    """A bare NIfTI-1 (or -2) header with ``dims`` and identity geometry, and no voxels."""
    kind = nib.nifti2 if two else nib.nifti1
    hdr = np.zeros((), kind.header_dtype)
    hdr["sizeof_hdr"] = kind.header_dtype.itemsize
    hdr["magic"] = b"n+2\0\r\n\x1a\n" if two else b"n+1"
    hdr["dim"][: len(dims) + 1] = (len(dims), *dims)
    hdr["datatype"], hdr["bitpix"] = datatype, bitpix
    hdr["pixdim"][:4] = (1.0, 1.0, 1.0, 1.0)
    hdr["vox_offset"] = 544 if two else 352
    hdr["scl_slope"], hdr["sform_code"] = 1.0, 1
    hdr["srow_x"][:], hdr["srow_y"][:], hdr["srow_z"][:] = (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0)
    return hdr.tobytes() + b"\0" * 4


def _edit_nifti_header(src: Path, dst: Path, **fields: object) -> Path:
    """Copy a .nii.gz with some raw header fields changed (``dim``, ``pixdim`` ... as arrays)."""
    raw = bytearray(gzip.decompress(src.read_bytes()))
    hdr = np.frombuffer(bytes(raw[:348]), nib.nifti1.header_dtype).copy()
    for key, value in fields.items():
        hdr[key] = value
    raw[:348] = hdr.tobytes()
    dst.write_bytes(gzip.compress(bytes(raw)))
    return dst


# -------------------------------------------------------------------------- NIfTI


def nifti_truncated_gz(tmp: Path) -> Path:
    full = good_nifti(tmp, "full.nii.gz")
    (tmp / "cut.nii.gz").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    return tmp / "cut.nii.gz"


def nifti_corrupt_gz(tmp: Path) -> Path:
    data = bytearray(good_nifti(tmp, "full.nii.gz").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0x5A for b in data[middle : middle + 16])
    (tmp / "full.nii.gz").unlink()
    (tmp / "corrupt.nii.gz").write_bytes(bytes(data))
    return tmp / "corrupt.nii.gz"


def nifti_bad_crc(tmp: Path) -> Path:
    """Intact deflate stream, wrong CRC-32 in the gzip trailer: only a full read notices."""
    data = bytearray(good_nifti(tmp, "full.nii.gz").read_bytes())
    data[-8:-4] = struct.pack("<I", (struct.unpack("<I", data[-8:-4])[0] + 1) & 0xFFFFFFFF)
    (tmp / "full.nii.gz").unlink()
    (tmp / "crc.nii.gz").write_bytes(bytes(data))
    return tmp / "crc.nii.gz"


def nifti_truncated_raw(tmp: Path) -> Path:
    full = good_nifti(tmp, "full.nii")
    (tmp / "cut.nii").write_bytes(full.read_bytes()[:600])
    full.unlink()
    return tmp / "cut.nii"


def nifti_impossible_dims(tmp: Path) -> Path:
    src = good_nifti(tmp, "src.nii.gz")
    out = _edit_nifti_header(src, tmp / "dims.nii.gz", dim=[9, 12, 10, 7, 1, 1, 1, 1])
    src.unlink()
    return out


def nifti_negative_dim(tmp: Path) -> Path:
    src = good_nifti(tmp, "src.nii.gz")
    out = _edit_nifti_header(src, tmp / "negdim.nii.gz", dim=[3, 12, -10, 7, 1, 1, 1, 1])
    src.unlink()
    return out


def nifti_zero_pixdim(tmp: Path) -> Path:
    src = good_nifti(tmp, "src.nii.gz")
    out = _edit_nifti_header(src, tmp / "zero.nii.gz", pixdim=[1, 0.7, 0, 2.5, 1, 0, 0, 0])
    src.unlink()
    return out


def nifti_negative_pixdim(tmp: Path) -> Path:
    src = good_nifti(tmp, "src.nii.gz")
    out = _edit_nifti_header(src, tmp / "neg.nii.gz", pixdim=[1, 0.7, -0.9, 2.5, 1, 0, 0, 0])
    src.unlink()
    return out


def nifti_huge_dims(tmp: Path) -> Path:
    """NIfTI-1's largest dimensions, 32767^3 int16 (70 TB), in a 352-byte gzip file."""
    (tmp / "huge.nii.gz").write_bytes(gzip.compress(_nifti_bytes((32767, 32767, 32767))))
    return tmp / "huge.nii.gz"


def nifti2_absurd_dims(tmp: Path) -> Path:
    """10^5 x 10^5 x 10 voxels, a NIfTI-2 header and no data."""
    (tmp / "absurd.nii").write_bytes(_nifti_bytes((10**5, 10**5, 10), two=True))
    return tmp / "absurd.nii"


def nifti_over_limit(tmp: Path) -> Path:
    """1024 x 1024 x 512 int16 (1 GiB, 2 GiB as float32): over a 1 GiB limit, a tiny file."""
    (tmp / "big.nii.gz").write_bytes(gzip.compress(_nifti_bytes((1024, 1024, 512))))
    return tmp / "big.nii.gz"


def nifti_huge_offset(tmp: Path) -> Path:
    """Voxels said to start 2 GB into a 1 kB file."""
    raw = bytearray(_nifti_bytes((8, 8, 8)))
    raw[108:112] = struct.pack("<f", 2.0e9)
    (tmp / "offset.nii").write_bytes(bytes(raw) + b"\0" * 1024)
    return tmp / "offset.nii"


def nifti_bad_datatype(tmp: Path) -> Path:
    (tmp / "dtype.nii").write_bytes(_nifti_bytes((8, 8, 8), datatype=9999) + b"\0" * 1024)
    return tmp / "dtype.nii"


def nifti_rgb(tmp: Path) -> Path:
    (tmp / "rgb.nii").write_bytes(_nifti_bytes((8, 8, 8), datatype=128, bitpix=24) + b"\0" * 1536)
    return tmp / "rgb.nii"


def _float_nifti(tmp: Path, name: str, value: float, count: int) -> Path:
    a = np.zeros((6, 5, 4), np.float32)
    a.flat[:count] = value
    nib.save(nib.Nifti1Image(a, np.diag([0.8, 0.8, 2.0, 1.0])), tmp / name)
    return tmp / name


def nifti_nan(tmp: Path) -> Path:
    return _float_nifti(tmp, "nan.nii.gz", np.nan, 3)


def nifti_inf(tmp: Path) -> Path:
    return _float_nifti(tmp, "inf.nii.gz", -np.inf, 2)


def nifti_singular_affine(tmp: Path) -> Path:
    src = good_nifti(tmp, "src.nii.gz")
    zero = np.zeros(4)
    out = _edit_nifti_header(src, tmp / "flat.nii.gz", qform_code=0, srow_z=zero)
    src.unlink()
    return out


# -------------------------------------------------------------------------- wrong names, NRRD/MHA


def text_named_nifti(tmp: Path) -> Path:
    (tmp / "notes.nii.gz").write_text("patient was cold\n")
    return tmp / "notes.nii.gz"


def plain_nifti_named_gz(tmp: Path) -> Path:
    good_nifti(tmp, "plain.nii").rename(tmp / "plain.nii.gz")
    return tmp / "plain.nii.gz"


def dicom_named_nifti(tmp: Path) -> Path:
    series = good_series(tmp / "s")
    first = sorted(series.glob("*.dcm"))[0].rename(tmp / "slice.nii")
    shutil.rmtree(series)
    return first


def nifti_named_mha(tmp: Path) -> Path:
    return good_nifti(tmp, "scan.nii.gz").rename(tmp / "scan.mha")


def nifti_named_dcm(tmp: Path) -> Path:
    return good_nifti(tmp, "scan.nii.gz").rename(tmp / "scan.dcm")


def mha_truncated(tmp: Path) -> Path:
    full = good_nifti(tmp, "full.nii.gz")
    mha = write_volume(read_volume(full), tmp / "full.mha")
    (tmp / "cut.mha").write_bytes(mha.read_bytes()[: mha.stat().st_size - 200])
    full.unlink()
    mha.unlink()
    return tmp / "cut.mha"


def mha_absurd_dims(tmp: Path) -> Path:
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 10\nElementType = MET_SHORT\n"
        "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n"
    )
    (tmp / "absurd.mha").write_bytes(header.encode() + b"\0" * 64)
    return tmp / "absurd.mha"


def mha_zero_spacing(tmp: Path) -> Path:
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
        "ElementSpacing = 1 0 1\nElementDataFile = LOCAL\n"
    )
    (tmp / "zero.mha").write_bytes(header.encode() + b"\0" * 128)
    return tmp / "zero.mha"


def mhd_slices(tmp: Path, data_file: str, names: str = "s%03d.raw", compressed: bool = False) -> Path:
    """``slices.mhd`` (4 x 3 x 5 int16) whose ElementDataFile is ``data_file``, beside its five
    slice files s000.raw ... s004.raw (zlib streams if ``compressed``), 24 bytes each raw."""
    array = np.arange(60, dtype=np.int16).reshape(5, 3, 4) * 11 - 200  # [z, y, x], as MetaIO stores
    for k in range(5):
        data = array[k].tobytes()
        (tmp / (names % k)).write_bytes(zlib.compress(data) if compressed else data)
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 4 3 5\nElementType = MET_SHORT\n"
        f"ElementSpacing = 1 1 2\nCompressedData = {compressed}\nElementDataFile = {data_file}\n"
    )
    (tmp / "slices.mhd").write_bytes(header.encode())
    return tmp / "slices.mhd"


def mhd_list_short(tmp: Path) -> Path:
    """ITK read the three slices named and left the other two zero (or uninitialised)."""
    return mhd_slices(tmp, "LIST\ns000.raw\ns001.raw\ns002.raw")


def mhd_pattern_short(tmp: Path) -> Path:
    return mhd_slices(tmp, "s%03d.raw 0 2 1")


def mhd_slice_missing(tmp: Path) -> Path:
    return mhd_slices(tmp, "LIST\ns000.raw\ns001.raw\ngone.raw\ns003.raw\ns004.raw")


def mhd_slice_short(tmp: Path) -> Path:
    mhd = mhd_slices(tmp, "s%03d.raw 0 4 1")
    (tmp / "s003.raw").write_bytes(b"\0" * 7)
    return mhd


def mhd_compressed_slice_cut(tmp: Path) -> Path:
    mhd = mhd_slices(tmp, "LIST\nz000.raw\nz001.raw\nz002.raw\nz003.raw\nz004.raw", "z%03d.raw", True)
    (tmp / "z002.raw").write_bytes((tmp / "z002.raw").read_bytes()[:12])
    return mhd


def mhd_pattern_step_zero(tmp: Path) -> Path:
    """Files 0 to 4 over 5 slices: MetaIO's step, (4 - 0) / 5, is 0 and it divides by it (SIGFPE)."""
    return mhd_slices(tmp, "s%03d.raw 0 4")


def nhdr_missing_data(tmp: Path) -> Path:
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nspace: left-posterior-superior\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: raw\n"
        "data file: gone.raw\n"
    )
    (tmp / "detached.nhdr").write_text(header)
    return tmp / "detached.nhdr"


def nhdr_data_in_a_pipe(tmp: Path) -> Path:
    """teem blocked on the pipe for good (``mrct batch`` could not even stop on SIGTERM)."""
    os.mkfifo(tmp / "pipe.raw")
    return _nhdr(tmp, "data file: pipe.raw\n")


def nhdr_data_from_dev_zero(tmp: Path) -> Path:
    """Read as an all-zero volume, exit 0."""
    return _nhdr(tmp, "data file: /dev/zero\n")


def nhdr_list_file_missing(tmp: Path) -> Path:
    (tmp / "s0.raw").write_bytes(bytes(32))
    return _nhdr(tmp, "data file: LIST 2\n", after="s0.raw\ns1.raw\n")


def _nhdr(tmp: Path, data_file: str, after: str = "") -> Path:
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 2\nspace: left-posterior-superior\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: raw\n"
    )
    (tmp / "detached.nhdr").write_text(header + data_file + after)
    return tmp / "detached.nhdr"


# -------------------------------------------------------------------------- zips


def zip_declares_huge(tmp: Path) -> Path:
    """The directory says a member expands to 1 TB (a zip bomb's signature)."""
    path = tmp / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("series/a.dcm", b"\0" * 1000)
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # the central directory entry; uncompressed size at +24
    data[cd + 24 : cd + 28] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    return path


def zip_high_ratio(tmp: Path) -> Path:
    """64 MiB of zeros in 64 kB (a ratio of 1000): over a 32 MiB limit."""
    path = tmp / "zeros.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("series/zeros.dcm", b"\0" * (64 * 1024**2))
    return path


def zip_lying_sizes(tmp: Path) -> Path:
    """The directory says 10 bytes; the member holds more (stops at 10, then fails its CRC)."""
    path = good_series_zip(tmp)
    data = bytearray(path.read_bytes())
    start = 0
    while (at := data.find(b"PK\x01\x02", start)) >= 0:
        data[at + 24 : at + 28] = struct.pack("<I", 10)
        start = at + 4
    start = 0
    while (at := data.find(b"PK\x03\x04", start)) >= 0:
        data[at + 22 : at + 26] = struct.pack("<I", 10)
        start = at + 4
    path.write_bytes(bytes(data))
    return path


def good_series_zip(tmp: Path) -> Path:
    folder = good_series(tmp / "zipped")
    path = tmp / "series.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"series/{f.name}")
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    return path


def zip_traversal(tmp: Path) -> Path:
    path = tmp / "escape.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../../evil.dcm", b"x")
    return path


def text_named_zip(tmp: Path) -> Path:
    (tmp / "notes.zip").write_text("not a zip\n")
    return tmp / "notes.zip"


# -------------------------------------------------------------------------- paths


def symlink_loop(tmp: Path) -> Path:
    link = tmp / "loop.nii.gz"
    os.symlink(link.name, link)  # points at itself
    return link


def broken_symlink(tmp: Path) -> Path:
    link = tmp / "gone.nii.gz"
    os.symlink("nowhere.nii.gz", link)
    return link


def odd_name_nan(tmp: Path) -> Path:
    """A bad file whose name has spaces and non-ASCII letters; the message must show it."""
    return _float_nifti(tmp, "Kopf Ärztin 頭 scan.nii.gz", np.nan, 1)
