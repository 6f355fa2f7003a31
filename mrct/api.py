"""The functions the CLI calls. Each takes plain values and returns plain results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mrct import api_args
from mrct.api_args import (
    flags_arg,
    int_arg,
    modality_arg,
    model_arg,
    output_format_arg,
    path_arg,
    paths_arg,
    target_arg,
    text_arg,
)
from mrct.api_info import SeriesSummary, VolumeInfo, info
from mrct.api_training import evaluate, export, prepare, train
from mrct.errors import ModalityError, MrctError, OutputExistsError
from mrct.io import OutputFormat, output_format_for, read_volume, write_volume
from mrct.io.anonymize import Anonymizer
from mrct.io.atomic import check_apart, check_outside, check_replaceable, empty_folder, occupied
from mrct.model_info import ModelInfo, list_models, model_info
from mrct.volume import Modality, guess_modality

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mrct.batch import BatchSummary
    from mrct.preprocessing.slab_checks import Localisation
    from mrct.translation import TranslateSummary
    from mrct.volume import Volume

log = logging.getLogger(__name__)

__all__ = [
    "ModelInfo",
    "SeriesSummary",
    "VolumeInfo",
    "batch",
    "convert",
    "evaluate",
    "export",
    "guess_modality",
    "info",
    "list_models",
    "locate",
    "model_info",
    "prepare",
    "preview",
    "train",
    "translate",
    "translate_file",
]


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    series: str | None = None,
    modality: Modality | None = None,
    overwrite: bool = False,
    allow_gaps: bool = False,
    anonymize: bool = False,
) -> Path:
    """Convert between formats without translation. ``dst`` ending in ``/`` means DICOM;
    ``anonymize`` de-identifies it (:mod:`mrct.io.anonymize`)."""
    src_p, series, modality = path_arg(src, "src"), text_arg(series, "series"), modality_arg(modality)
    path_arg(dst, "dst")  # checked only: a str's trailing "/" means DICOM
    dst_p = api_args.without_trailing_slash(dst)  # the root stays the root
    if str(dst) == "-":
        raise MrctError("mrct writes files, not standard output; give a file or folder name", dst_p)
    try:
        fmt = output_format_for(dst)
    except ValueError as err:
        raise MrctError(str(err).removeprefix(f"{dst}: "), dst_p) from err
    check_apart(src_p, dst_p)  # first: --overwrite, which "output exists" suggests, cannot help
    check_outside(src_p, dst_p)
    into_empty = fmt is OutputFormat.DICOM and empty_folder(dst_p)
    if occupied(dst_p) and not overwrite and not into_empty:
        raise OutputExistsError("output exists; pass --overwrite to replace it", dst_p)
    if fmt is OutputFormat.DICOM:  # before reading a large input (a file where the series goes)
        from mrct.io.dicom_write import SERIES_FILES

        check_replaceable(dst_p, SERIES_FILES)
    vol = read_volume(src_p, series=series, allow_gaps=allow_gaps)
    header = vol.source.dicom.modality.strip().upper() if vol.source.dicom is not None else ""
    if modality is not None and header not in ("", "OT", modality.value):
        # MR values (or a PET's) in a CT series, labelled HU: --modality says what a NIfTI does not.
        raise ModalityError(
            f"its DICOM header says {header}, not {modality.value}; --modality sets the modality "
            "of a NIfTI, NRRD or MHA input's DICOM output (or of a DICOM series of modality OT)",
            src_p,
        )
    vol = vol if modality is None else vol.replace(modality=modality)
    from mrct.labels import NOT_FOR_DIAGNOSIS, series_description, synthetic_source

    synthetic = synthetic_source(vol)
    if synthetic is not None and vol.modality is None:
        vol = vol.replace(modality=synthetic)  # what its label says, rather than a guess
    if fmt is OutputFormat.DICOM and vol.modality is None:
        guessed = guess_modality(vol)
        if guessed is None:
            raise MrctError("cannot tell CT from MR; pass --modality ct or --modality mr", src_p)
        log.warning("%s: no modality in the header; writing %s (from intensities)", src_p, guessed.value)
        vol = vol.replace(modality=guessed)
    return write_volume(
        vol,
        str(dst),
        overwrite=overwrite,
        # A synthetic image stays labelled as one, in every format it is converted to.
        series_description=series_description(synthetic)
        if synthetic is not None
        else f"mrct convert ({vol.modality.value if vol.modality else 'image'})",
        derivation_description=f"Format conversion by mrct from {vol.source.format}"
        + (f" of an mrct synthetic {synthetic.value}; {NOT_FOR_DIAGNOSIS}" if synthetic is not None else ""),
        anonymizer=Anonymizer() if anonymize else None,
    )


def locate(
    path: str | Path,
    *,
    series: str | None = None,
    modality: Modality | None = None,
    check: bool = True,
    allow_gaps: bool = False,
) -> Localisation:
    """Find the brow-to-jaw slab in a scan (RAS mm along S, with a confidence).

    Returns a :class:`mrct.preprocessing.slab_checks.Localisation`. With ``check``,
    a level outside the field of view or a doubtful result raises
    :class:`~mrct.errors.CropError`, whose message names the overrides.
    """
    from mrct.preprocessing.localise import locate_volume
    from mrct.preprocessing.slab_checks import check_slab_in_scan

    vol = read_volume(path, series=series, modality=modality, allow_gaps=allow_gaps)
    try:
        loc = locate_volume(vol)
    except MrctError as err:
        raise err.naming(path) from None
    if check:
        check_slab_in_scan(loc, str(path))
    if loc.outside_fov_mm > 0:  # translate warns the same way; the model would see background there
        log.warning("%s: %.1f mm of the brow-to-jaw slab lies outside the scan", path, loc.outside_fov_mm)
    if loc.jaw_guessed_near_edge:
        from mrct.preprocessing.slab_checks import JAW_GUESSED

        log.warning("%s: %s; translate, batch and prepare take --crop-mm", path, JAW_GUESSED)
    return loc


def preview(
    src: str | Path,
    dst: str | Path,
    *,
    series: str | None = None,
    overwrite: bool = False,
    allow_gaps: bool = False,
) -> Path:
    """Write a PNG of the axial, coronal and sagittal planes through the scan's centre.

    Planes are resampled on a world-aligned RAS grid with square pixels (see
    :mod:`mrct.qc`), so oblique and anisotropic scans keep their true shape. A picture of an
    mrct synthetic image says so, under it and in its PNG ``Description``, as translate's does.
    """
    from mrct import qc
    from mrct.labels import series_description, synthetic_source

    dst_p, series = path_arg(dst, "dst"), text_arg(series, "series")
    if dst_p.suffix.lower() != ".png":
        raise MrctError("a preview is written as PNG; give an output ending in .png", dst_p)
    if occupied(dst_p) and not overwrite:  # fail before reading a large scan
        raise OutputExistsError("output exists; pass --overwrite to replace it", dst_p)
    check_outside(path_arg(src, "src"), dst_p)
    vol = read_volume(src, series=series, allow_gaps=allow_gaps)
    picture, label = qc.three_plane_mosaic(vol), ""
    if (synthetic := synthetic_source(vol)) is not None:
        label = series_description(synthetic)
        picture = qc.with_caption(picture, label.replace("–", "-"))  # the font may lack the dash
    return qc.write_png(picture, dst_p, overwrite=overwrite, source=vol.source.path, description=label)


def translate(
    volume_or_path: Volume | str | Path,
    to: str | Modality = "ct",
    model: str | Path | None = None,
    *,
    device: str | None = "auto",
    precision: str = "auto",
    crop_mm: str | Sequence[float] | None = None,
    crop_markups: str | Path | None = None,
    no_crop: bool = False,
    full_fov: bool = False,
    force: bool = False,
    series: str | None = None,
    allow_gaps: bool = False,
) -> Volume:
    """Translate a scan (a :class:`~mrct.volume.Volume` or anything :func:`read_volume` reads).

    Returns the synthetic volume on the input's grid: CT in HU (int16, -1024..3071), MR on
    an arbitrary 0..1000 scale, labelled synthetic (``source.label``), so that
    :func:`~mrct.io.write_volume` writes it as "mrct synthetic CT – not for diagnosis"; a
    DICOM source's patient, study and frame of reference stay with it. ``model`` is a package
    folder or a bundled model's name (default: :data:`mrct.inference.DEFAULT_MODEL`).
    ``precision`` is the generator's arithmetic: ``auto`` (bf16 on CPUs with native bf16, else
    fp32), ``fp32`` or ``bf16`` (:mod:`mrct.runtime`). ``crop_mm`` is ``"SUP,INF"`` or two
    numbers (RAS mm). ``series`` picks one of several series in a DICOM folder; ``allow_gaps``
    interpolates across missing DICOM slices of a path instead of refusing it. A slab partly
    outside the scan, or a jaw level guessed, is logged as a warning, as ``mrct translate`` says it.
    """
    from mrct.inference import Translator
    from mrct.io.validate import check_in_memory
    from mrct.preprocessing.crop import CropRequest
    from mrct.volume import Volume

    target = target_arg(to)  # before reading the scan and loading the model
    flags_arg(no_crop=no_crop, full_fov=full_fov, force=force, allow_gaps=allow_gaps)
    model_arg(model)
    if isinstance(volume_or_path, Volume):
        if series is not None or allow_gaps:
            raise MrctError("series and allow_gaps choose how a path is read; a Volume is read already")
        volume = volume_or_path
        check_in_memory(volume)
    else:
        volume = read_volume(volume_or_path, series=series, allow_gaps=allow_gaps)
    crop = CropRequest.from_options(crop_mm=crop_mm, markups=crop_markups, no_crop=no_crop)
    translator = Translator.from_package(model, device, precision=precision)
    result = translator.translate(volume, target, crop, full_fov=full_fov, force=force)
    from mrct.translation import warn_outside_fov

    where = volume_or_path if not isinstance(volume_or_path, Volume) else volume.source.path or "the volume"
    warn_outside_fov(where, result.slabs[0], target, report=False)
    return result.volume


def translate_file(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    to: str | Modality = "ct",
    model: str | Path | None = None,
    output_format: str | None = None,
    device: str | None = "auto",
    precision: str = "auto",
    crop_mm: str | Sequence[float] | None = None,
    crop_markups: str | Path | None = None,
    no_crop: bool = False,
    full_fov: bool = False,
    series: str | None = None,
    allow_gaps: bool = False,
    report: str | Path | None = None,
    preview: str | Path | None = None,
    overwrite: bool = False,
    force: bool = False,
    anonymize: bool = False,
) -> TranslateSummary:
    """Translate the scan at ``src`` and write it to ``dst`` (default: beside the input, named
    ``<input>_synthetic_<to>``, in the input's format); see :func:`mrct.translation.translate_file`."""
    from mrct.preprocessing.crop import CropRequest
    from mrct.translation import translate_file as run

    path_arg(src, "src")
    switches = {"no_crop": no_crop, "full_fov": full_fov, "allow_gaps": allow_gaps, "force": force}
    flags_arg(**switches, overwrite=overwrite, anonymize=anonymize)
    model_arg(model)
    for value, what in ((dst, "dst"), (report, "report"), (preview, "preview")):
        if value is not None:  # "" would name the current folder
            path_arg(value, what)
    text_arg(series, "series")
    crop = CropRequest.from_options(crop_mm=crop_mm, markups=crop_markups, no_crop=no_crop)
    fmt = output_format_arg(output_format)
    return run(
        src,
        dst,
        to=target_arg(to),
        model=model,
        fmt=fmt,
        device=device,
        precision=precision,
        crop=crop,
        full_fov=full_fov,
        series=series,
        allow_gaps=allow_gaps,
        report=report,
        preview=preview,
        overwrite=overwrite,
        force=force,
        anonymize=anonymize,
    )


def batch(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    to: str | Modality = "ct",
    output_format: str | None = None,
    workers: int = 1,
    overwrite: bool = False,
    shard: str | None = None,
    model: str | Path | None = None,
    device: str | None = "auto",
    precision: str = "auto",
    crop_mm: str | Sequence[float] | None = None,
    crop_markups: str | Path | None = None,
    no_crop: bool = False,
    progress: bool = True,
    search_dirs: Sequence[Path] | None = None,
    anonymize: bool = False,
) -> BatchSummary:
    """Translate every MR (``to="ct"``) or CT (``to="mr"``) series under ``in_dir`` into ``out_dir``,
    mirroring its folders, with a manifest; resumable. See :mod:`mrct.batch` for the layout.
    ``shard`` is ``"K/N"``: the K-th of N disjoint parts of the sorted series list;
    ``anonymize`` de-identifies DICOM outputs (:mod:`mrct.io.anonymize`); ``precision`` as
    for :func:`translate_file` (``auto``, ``fp32`` or ``bf16``)."""
    from mrct.batch import run_batch
    from mrct.preprocessing.crop import CropRequest

    path_arg(in_dir, "in_dir")
    path_arg(out_dir, "out_dir")
    workers = int_arg(workers, "workers", minimum=1)
    search_dirs = None if search_dirs is None else paths_arg(search_dirs, "search_dirs")
    crop = CropRequest.from_options(crop_mm=crop_mm, markups=crop_markups, no_crop=no_crop)
    fmt = output_format_arg(output_format)
    return run_batch(
        in_dir,
        out_dir,
        to=target_arg(to),
        fmt=fmt,
        workers=workers,
        overwrite=overwrite,
        shard=shard,
        model=model,
        device=device,
        precision=precision,
        crop=crop,
        progress=progress,
        search_dirs=search_dirs,
        anonymize=anonymize,
    )
