"""How mrct labels what it computes: every synthetic image says so, in every format.

A synthetic series' DICOM SeriesDescription (and a NIfTI ``descrip`` or NRRD/MHA
``Description``) reads "mrct synthetic CT – not for diagnosis"; its DerivationDescription
names mrct's version and the model's checksum. Reading such an image back recognises the label.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mrct import __version__
from mrct.volume import Modality

NOT_FOR_DIAGNOSIS = "not for diagnosis"


def series_description(to: Modality) -> str:
    """What every DICOM series we write says about itself (DICOM LO: 64 characters at most)."""
    return f"mrct synthetic {to.value} – {NOT_FOR_DIAGNOSIS}"


def synthetic_source(volume: Any, path: Path) -> Modality | None:
    """The modality of an mrct synthetic image being read back (its DICOM SeriesDescription,
    NIfTI ``descrip`` or NRRD/MHA ``Description`` says "mrct synthetic CT|MR"), else None:
    ``mrct convert`` keeps such an image labelled instead of calling it a plain conversion."""
    text = ""
    try:
        if volume.source.dicom is not None:
            text = volume.source.dicom.series_description
        elif volume.source.format == "nifti":
            import nibabel as nib

            header: Any = nib.load(str(path)).header
            text = bytes(header["descrip"]).split(b"\0")[0].decode("ascii", "replace")
        elif volume.source.format in ("nrrd", "mha"):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            text = reader.GetMetaData("Description") if reader.HasMetaDataKey("Description") else ""
    except Exception:  # the image itself was read already; an unreadable label is no label
        return None
    match = re.match(r"mrct synthetic (CT|MR)\b", text.strip())
    return Modality(match.group(1)) if match else None


def derivation_description(to: Modality, package: Any) -> str:
    """The DerivationDescription of every synthetic series: version, model and its checksum."""
    return (
        f"Synthetic {to.value} computed by mrct {__version__} with model {package.name} "
        f"(sha256 {package.checksum[:16]}); {NOT_FOR_DIAGNOSIS}"
    )
