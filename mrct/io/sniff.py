"""Tell a file's format from its first bytes, to catch inputs whose name lies.

mrct picks a reader from the file name; a NIfTI saved as ``.mha`` or a DICOM
slice saved as ``.nii`` would otherwise fail deep inside a reader with a
message about the wrong format. :func:`check_name` compares the name with the
content and says which extension fits.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from mrct.errors import ReadError

NIFTI_GZ = "gzip-compressed NIfTI"
NIFTI = "uncompressed NIfTI"
DICOM = "DICOM"
NRRD = "NRRD"
METAIMAGE = "MetaImage"
NIFTI_PAIR = "NIfTI pair header"
ZIP = "zip"

# The extension to suggest for each format mrct reads.
_EXTENSION = {
    NIFTI_GZ: ".nii.gz",
    NIFTI: ".nii",
    DICOM: ".dcm",
    NRRD: ".nrrd",
    METAIMAGE: ".mha",
    ZIP: ".zip",
}
# Other common files people pass by mistake.
_MAGIC = (
    (b"\x89PNG", "a PNG picture"),
    (b"\xff\xd8\xff", "a JPEG picture"),
    (b"%PDF", "a PDF document"),
    (b"II*\x00", "a TIFF picture"),
    (b"MM\x00*", "a TIFF picture"),
)


def _nifti_magic(head: bytes, magic: tuple[bytes, bytes] = (b"n+1", b"n+2")) -> bool:
    """A single-file NIfTI-1/-2 header; with ``(b"ni1", b"ni2")``, the header of a .hdr/.img pair."""
    if len(head) < 348:
        return False
    for order in ("little", "big"):
        size = int.from_bytes(head[:4], order)  # type: ignore[arg-type]
        if size == 348 and head[344:347] == magic[0]:
            return True
        if size == 540 and head[4:7] == magic[1]:
            return True
    return False


PAIR_REFUSAL = (
    "is half of a NIfTI .hdr/.img pair, which mrct does not read; save it as one .nii.gz first "
    "(nibabel and 3D Slicer read pairs)"
)


# The elements an image dataset can start with, and their VRs: a group length, the file meta
# group's length or version, SpecificCharacterSet, ImageType, InstanceCreationDate/Time, or
# SOPClassUID (type 1).
_FIRST_ELEMENTS = {
    (0x0008, 0x0000): b"UL",  # old implicit-VR exports start with the group length
    (0x0008, 0x0001): b"UL",
    (0x0002, 0x0000): b"UL",
    (0x0002, 0x0001): b"OB",
    (0x0008, 0x0005): b"CS",
    (0x0008, 0x0008): b"CS",
    (0x0008, 0x0012): b"DA",
    (0x0008, 0x0013): b"TM",
    (0x0008, 0x0016): b"UI",
}


def raw_dicom_dataset(head: bytes) -> bool:
    """Whether ``head`` starts a DICOM dataset written without preamble and file meta group
    (``dcmconv -F``, old archives), little endian, which dcm2niix reads: its first element is
    one a dataset starts with, then that element's VR (explicit) or an even length (implicit).
    Readers then check that what pydicom parsed has a valid SOPClassUID."""
    if len(head) < 8 or head[128:132] == b"DICM":
        return False
    tag = (int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little"))
    if tag not in _FIRST_ELEMENTS:
        return False
    if head[4:6] == _FIRST_ELEMENTS[tag]:
        return True
    length = int.from_bytes(head[4:8], "little")
    return length % 2 == 0 and 0 < length <= 256


def sniff(path: Path) -> str | None:
    """The format of ``path`` from its content, or None when it is not recognised."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                inner = gz.read(540)
        except (OSError, EOFError, zlib.error):
            return None  # a damaged stream: let the reader say what is wrong
        return NIFTI_GZ if _nifti_magic(inner) else None
    if _nifti_magic(head):
        return NIFTI
    if _nifti_magic(head, (b"ni1", b"ni2")):
        return NIFTI_PAIR
    if head[128:132] == b"DICM" or raw_dicom_dataset(head):
        return DICOM
    if head.startswith(b"NRRD"):
        return NRRD
    if head.lstrip().startswith((b"ObjectType", b"NDims")):
        return METAIMAGE
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return ZIP
    return next((what for magic, what in _MAGIC if head.startswith(magic)), None)


def expected_format(path: Path) -> str:
    """The format the file name promises (anything unlisted is read as DICOM)."""
    name = path.name.lower()
    for fmt, suffixes in (
        (NIFTI_GZ, (".nii.gz",)),
        (NIFTI, (".nii",)),
        (NRRD, (".nrrd", ".nhdr")),
        (METAIMAGE, (".mha", ".mhd")),
        (ZIP, (".zip",)),
    ):
        if name.endswith(suffixes):
            return fmt
    return DICOM


def check_name(path: Path) -> None:
    """Refuse a file whose content is recognisably not what its name says."""
    found = sniff(path)
    if found == NIFTI_PAIR or (path.name.lower().endswith(".img") and path.with_suffix(".hdr").is_file()):
        raise ReadError(PAIR_REFUSAL, path)
    expected = expected_format(path)
    if found is None or found == expected:
        return
    if found not in _EXTENSION:
        raise ReadError(f"not a volume image: the content is {found}", path)
    ext = _EXTENSION[found]
    if expected == DICOM:  # any unlisted extension is read as DICOM
        raise ReadError(f"the content is {found}, but the name does not end in {ext}; rename it", path)
    raise ReadError(
        f"the content is {found}, not {expected} as the name says; rename it to end in {ext}", path
    )
