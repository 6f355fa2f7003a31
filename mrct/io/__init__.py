"""Volume I/O: ``read_volume`` for every input, ``write_volume`` for every output.

Formats are chosen from the path: ``.nii``/``.nii.gz`` (NIfTI), ``.nrrd``/``.nhdr``
(NRRD), ``.mha``/``.mhd`` (MetaImage); a folder, a ``.zip`` or any other file
is read as DICOM. For writing, a path ending in ``/`` or naming an existing
folder means a DICOM series.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from mrct.errors import InputNotFoundError, ReadError

if TYPE_CHECKING:  # mrct.volume imports mrct.io.orientation; avoid the cycle at run time
    from mrct.io.anonymize import Anonymizer
    from mrct.io.dicom_scan import SeriesFiles
    from mrct.volume import Modality, Volume

__all__ = [
    "OutputFormat",
    "header_label",
    "output_format_for",
    "read_volume",
    "survey_volume",
    "write_volume",
]


class OutputFormat(str, Enum):
    NIFTI = "nifti"
    NRRD = "nrrd"
    MHA = "mha"
    DICOM = "dicom"


log = logging.getLogger(__name__)
_NIFTI = (".nii", ".nii.gz")
_ITK = (".nrrd", ".nhdr", ".mha", ".mhd")


def read_volume(
    path: str | Path,
    *,
    series: str | None = None,
    modality: Modality | None = None,
    allow_gaps: bool = False,
) -> Volume:
    """Read any supported input into a :class:`~mrct.volume.Volume`.

    Args:
        path: a NIfTI/NRRD/MHA file, a DICOM series folder, an enhanced
            multi-frame DICOM file, or a ``.zip`` of DICOM files.
        series: SeriesInstanceUID to pick when a folder holds several series.
        modality: overrides (or supplies, for formats without one) the modality.
        allow_gaps: interpolate across missing DICOM slices instead of failing.
    """
    from mrct.api_args import modality_arg, path_arg, text_arg

    p = path_arg(path, "path")
    series, modality = text_arg(series, "series"), modality_arg(modality)
    return _keep_synthetic_label(_guarded(p, lambda: _read(p, series, modality, allow_gaps)))


def survey_volume(
    path: str | Path, *, series: str | None = None, allow_gaps: bool = False
) -> tuple[list[SeriesFiles], Volume | None]:
    """What ``mrct info`` shows: the DICOM series of a folder, a zip or a DICOMDIR's media (none
    for a file of one volume), and the volume of the one chosen, ``series`` or the only one (None
    when there are several and none is named). One walk of a folder, and one unpacking of a zip,
    for both; errors as :func:`read_volume` raises them."""
    from mrct.api_args import path_arg, text_arg

    p, series = path_arg(path, "path"), text_arg(series, "series")

    def listed() -> tuple[list[SeriesFiles], Volume | None]:
        if (found := _check_input(p, series)) != DICOM_INPUT:
            return [], _read_as(found, p, series, None, allow_gaps)
        from mrct.io.dicom_input import survey

        return survey(p, series, allow_gaps)

    found, volume = _guarded(p, listed)
    return found, None if volume is None else _keep_synthetic_label(volume)


_T = TypeVar("_T")


def _guarded(p: Path, read: Callable[[], _T]) -> _T:
    """``read()``, with a missing input and the system's read errors said in one line."""
    if not p.exists():  # a name too long for the file system raises OSError: see cli_options.fail
        raise InputNotFoundError(why_missing(p), p)
    try:
        return read()
    except OSError as err:  # no permission, an I/O error, a file that vanished while read
        raise ReadError(f"cannot read the file: {err.strerror or err}", err.filename or p) from err


def _keep_synthetic_label(volume: Volume) -> Volume:
    """An mrct synthetic image read back keeps its label (and, without a header modality, the
    modality its label names), so that writing it again still says it is synthetic."""
    import dataclasses

    from mrct.labels import NOT_FOR_DIAGNOSIS, series_description, synthetic_source

    synthetic = synthetic_source(volume)
    if synthetic is None:
        return volume
    derivation = f"Derived from an mrct synthetic {synthetic.value}; {NOT_FOR_DIAGNOSIS}"
    source = dataclasses.replace(volume.source, label=series_description(synthetic), derivation=derivation)
    return volume.replace(source=source, modality=volume.modality or synthetic)


DICOM_INPUT = "dicom"


def _check_input(p: Path, series: str | None) -> str:
    """Refuse what no reader takes; the format read: "nifti", "itk" or ``DICOM_INPUT``."""
    if not p.is_file() and not p.is_dir():  # reading a pipe would wait forever
        raise ReadError("not a regular file or folder (a pipe, socket or device)", p)
    name = p.name.lower()
    if p.is_file() and p.stat().st_size == 0:
        raise ReadError("file is empty", p)
    if p.is_file():
        from mrct.io.sniff import check_name

        check_name(p)
    if series is not None and p.is_file() and name.endswith(_NIFTI + _ITK):
        log.warning("%s: holds one volume; --series applies to DICOM folders and zips and is ignored", p)
    if p.is_file() and name.endswith(_NIFTI):
        return "nifti"
    return "itk" if p.is_file() and name.endswith(_ITK) else DICOM_INPUT


def _read(p: Path, series: str | None, modality: Modality | None, allow_gaps: bool) -> Volume:
    return _read_as(_check_input(p, series), p, series, modality, allow_gaps)


def _read_as(found: str, p: Path, series: str | None, modality: Modality | None, allow_gaps: bool) -> Volume:
    if found == "nifti":
        from mrct.io.nifti import read_nifti

        return read_nifti(p, modality)
    if found == "itk":
        from mrct.io.itk import read_itk

        return read_itk(p, modality)
    from mrct.io.dicom_input import read_dicom

    return read_dicom(p, series=series, modality=modality, allow_gaps=allow_gaps)


def why_missing(p: Path) -> str:
    """Why ``p`` cannot be read: no such file, or a symbolic link that leads nowhere."""
    if not p.is_symlink():
        return "no such file or folder"
    try:
        p.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "symbolic link loop"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
    return f"broken symbolic link (to {os.readlink(p)}, which does not exist)"


def output_format_for(path: str | Path) -> OutputFormat:
    text = str(path)
    name = Path(text).name.lower()
    if text.endswith(("/", "\\")) or Path(text).is_dir():
        return OutputFormat.DICOM
    if name.endswith(_NIFTI):
        return OutputFormat.NIFTI
    if name.endswith((".nhdr", ".mhd")):
        # Detached headers name their data file; the atomic rename cannot keep
        # the pair consistent, so only single-file variants are written.
        raise ValueError(f"{path}: write single-file .nrrd or .mha instead of .nhdr/.mhd")
    if name.endswith(".nrrd"):
        return OutputFormat.NRRD
    if name.endswith(".mha"):
        return OutputFormat.MHA
    if "." not in name:
        return OutputFormat.DICOM
    raise ValueError(f"{path}: unknown output format; use .nii.gz, .nii, .nrrd, .mha, or a folder/ for DICOM")


def header_label(text: str) -> str:
    """A description fit for a NIfTI ``descrip`` (80 ASCII bytes) or a NRRD/MHA header line:
    dashes made ASCII, other non-ASCII as "?", control characters (a newline would start a
    header field of its own) as spaces."""
    text = text.replace("\u2013", "-").replace("\u2014", "-")
    text = text.encode("ascii", "replace").decode("ascii")
    return "".join(c if " " <= c < "\x7f" else " " for c in text).strip()[:80]


def write_volume(
    volume: Volume,
    path: str | Path,
    *,
    overwrite: bool = False,
    series_description: str | None = None,
    derivation_description: str | None = None,
    anonymizer: Anonymizer | None = None,
) -> Path:
    """Write ``volume`` in the format ``path`` implies; returns the path written.

    ``series_description`` also labels NIfTI (``descrip``), NRRD and MHA (``Description``) outputs,
    so a synthetic image says so in every format; by default, the volume's own label
    (``source.label``: mrct's synthetic images carry one) and derivation. ``anonymizer``
    de-identifies DICOM output; NIfTI, NRRD and MHA outputs hold no patient data.
    """
    from mrct.api_args import ArgumentError, path_arg, text_arg, without_trailing_slash
    from mrct.volume import Volume

    if not isinstance(volume, Volume):
        raise ArgumentError(f"write_volume writes a mrct.Volume, got {type(volume).__name__}")
    path_arg(path, "path")  # checked only: a str's trailing "/" (DICOM) must stay
    text_arg(series_description, "series_description")
    text_arg(derivation_description, "derivation_description")
    try:
        fmt = output_format_for(path)
    except ValueError as err:
        raise ArgumentError(str(err).removeprefix(f"{path}: "), path) from None
    if series_description is None:
        series_description = volume.source.label or None
    if derivation_description is None:
        derivation_description = volume.source.derivation or "Converted by mrct"
    p = without_trailing_slash(path)
    from mrct.io.validate import writable

    volume = writable(volume, p)
    label = None if series_description is None else header_label(series_description)
    if fmt is OutputFormat.NIFTI:
        from mrct.io.nifti import write_nifti

        return write_nifti(volume, p, overwrite, description=label)
    if fmt in (OutputFormat.NRRD, OutputFormat.MHA):
        from mrct.io.itk import write_itk

        return write_itk(volume, p, overwrite, description=label)
    from mrct.io.dicom_write import write_dicom_series

    write_dicom_series(
        volume,
        p,
        series_description=series_description or "mrct output",
        derivation_description=derivation_description,
        overwrite=overwrite,
        anonymizer=anonymizer,
    )
    return p
