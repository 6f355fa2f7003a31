"""Whether an input is one a model translates to ``to``: refused (unless forced) when it is
already that modality, another modality by its DICOM header, or an MR phase image; as
``mrct batch`` skips such series by their headers."""

from __future__ import annotations

from mrct.errors import ModalityError
from mrct.io.dicom_split import not_translated
from mrct.volume import Modality, Volume, guess_modality


def source_modality(volume: Volume, to: Modality, force: bool) -> Modality:
    """The input's modality (header, else intensities); refuses translating CT to CT and MR to MR."""
    header = volume.modality
    dicom = volume.source.dicom
    # PET, SPECT, an X-ray: batch skips them by header, and so does this. "OT" (other) is judged
    # from its intensities, as batch judges it.
    other = dicom.modality if dicom is not None and header is None else ""
    if other not in ("", "OT") and not force:
        source = "an MR" if to is Modality.CT else "a CT"
        raise ModalityError(
            f"its DICOM Modality is {other}, not {source[-2:]}; --to {to.value.lower()} needs "
            f"{source} (pass --force to translate anyway)",
            volume.source.path or None,
        )
    if dicom is not None and dicom.complex_part and not force:  # as mrct batch skips it
        raise ModalityError(
            f"{not_translated(dicom.complex_part)} (pass --force to translate anyway)",
            volume.source.path or None,
        )
    found = header or guess_modality(volume)
    if found is to and not force:
        how = "its header says" if header else "its intensities look like"
        raise ModalityError(
            f"{how} {found.value} already; --to {to.value.lower()} needs "
            f"{'an MR' if to is Modality.CT else 'a CT'} (pass --force to translate anyway)",
            volume.source.path or None,
        )
    return Modality.MR if to is Modality.CT else Modality.CT
