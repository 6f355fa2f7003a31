"""How mrct labels what it computes: every synthetic image says so, in every format.

A synthetic series' DICOM SeriesDescription (and a NIfTI ``descrip`` or NRRD/MHA
``Description``) reads "mrct synthetic CT – not for diagnosis"; its DerivationDescription
names mrct's version and the model's checksum. Reading such an image back recognises the label.
"""

from __future__ import annotations

import re
from typing import Any

from mrct import __version__
from mrct.volume import Modality

NOT_FOR_DIAGNOSIS = "not for diagnosis"


def series_description(to: Modality) -> str:
    """What every DICOM series we write says about itself (DICOM LO: 64 characters at most)."""
    return f"mrct synthetic {to.value} – {NOT_FOR_DIAGNOSIS}"


def synthetic_source(volume: Any) -> Modality | None:
    """The modality of an mrct synthetic image being read back (its DICOM SeriesDescription,
    NIfTI ``descrip`` or NRRD/MHA ``Description``, as the reader recorded it, says "mrct
    synthetic CT|MR"), else None: such an image stays labelled when written again."""
    source = volume.source
    text = source.dicom.series_description if source.dicom is not None else source.description
    match = re.match(r"mrct synthetic (CT|MR)\b", text.strip())
    return Modality(match.group(1)) if match else None


def derivation_description(to: Modality, package: Any) -> str:
    """The DerivationDescription of every synthetic series: version, model and its checksum."""
    return (
        f"Synthetic {to.value} computed by mrct {__version__} with model {package.name} "
        f"(sha256 {package.checksum[:16]}); {NOT_FOR_DIAGNOSIS}"
    )
