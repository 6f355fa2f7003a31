"""Translate one scan file or DICOM folder into an output file: naming, formats, report, preview.

This is what ``mrct translate`` (and each series of ``mrct batch``) runs. The maths is in
:mod:`mrct.inference`; reading and writing in :mod:`mrct.io`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrct import __version__
from mrct.api_args import without_trailing_slash
from mrct.errors import InputNotFoundError, MrctError, OutputExistsError
from mrct.io import OutputFormat, output_format_for
from mrct.io.anonymize import Anonymizer
from mrct.io.atomic import (
    atomic_file,
    check_apart,
    check_outside,
    check_replaceable,
    check_writable,
    empty_folder,
    folder_mode,
    give_folder_mode,
    occupied,
)
from mrct.io.discover import fit_name, scan_stem
from mrct.io.leftovers import TMP_MARK, remove_leftover
from mrct.io.published import Identity, identity, recording
from mrct.labels import NOT_FOR_DIAGNOSIS, derivation_description, series_description
from mrct.preprocessing.crop import CropRequest
from mrct.volume import Modality

EXTENSIONS = {OutputFormat.NIFTI: ".nii.gz", OutputFormat.NRRD: ".nrrd", OutputFormat.MHA: ".mha"}

log = logging.getLogger(__name__)


def input_format(src: Path) -> OutputFormat:
    """The format an input is in: NIfTI, NRRD, MHA, or DICOM (folder, zip, single file)."""
    name = src.name.lower()
    if src.is_dir():
        return OutputFormat.DICOM
    if name.endswith((".nii", ".nii.gz")):
        return OutputFormat.NIFTI
    if name.endswith((".nrrd", ".nhdr")):
        return OutputFormat.NRRD
    if name.endswith((".mha", ".mhd")):
        return OutputFormat.MHA
    return OutputFormat.DICOM


def default_output(src: Path, to: Modality, fmt: OutputFormat, series: str | None = None) -> Path:
    """``scan.nii.gz`` -> ``scan_synthetic_ct.nii.gz``; a DICOM folder -> a sibling folder.

    With ``series`` the name carries it (``study_<UID>_synthetic_ct``), so translating a
    second series of the same folder does not collide with the first.
    """
    src = without_trailing_slash(src)
    if src.name in ("", ".", ".."):  # "mrct translate ." in a DICOM folder: named after the folder
        src = Path(os.path.abspath(src))
    stem = scan_stem(src.name)
    if series:
        stem += "_" + re.sub(r"[^A-Za-z0-9.-]+", "_", series)
    base = src.parent / f"{fit_name(stem)}_synthetic_{to.value.lower()}"
    return base if fmt is OutputFormat.DICOM else base.with_name(base.name + EXTENSIONS[fmt])


def resolve_output(
    src: Path, dst: str | Path | None, to: Modality, fmt: OutputFormat | None, series: str | None = None
) -> tuple[Path, OutputFormat]:
    """The output path and format from ``-o`` and ``--format`` (either, both, or neither)."""
    if dst is None:
        chosen = fmt or input_format(src)
        return default_output(src, to, chosen, series), chosen
    if str(dst) == "-":
        raise MrctError("mrct writes files, not standard output; give a file or folder name", dst)
    implied = None
    try:
        implied = output_format_for(dst)
    except ValueError as err:
        if fmt is not OutputFormat.DICOM:  # a DICOM series folder may have any name
            raise MrctError(str(err).removeprefix(f"{dst}: "), dst) from None
    if (
        fmt is not None
        and implied is not None
        and implied is not fmt
        and not (
            fmt is OutputFormat.DICOM and implied is not OutputFormat.DICOM and "." not in Path(str(dst)).name
        )
    ):
        raise MrctError(f"--format {fmt.value} does not match the output name (a {implied.value} path)", dst)
    return without_trailing_slash(dst), fmt or implied or OutputFormat.NIFTI


@dataclass
class TranslateSummary:
    """What ``mrct translate`` reports: where the output went and the run report's content."""

    output: Path
    report: dict[str, Any] = field(default_factory=dict)


def _write(
    volume: Any, dst: Path, fmt: OutputFormat, to: Modality, overwrite: bool, derivation: str, anonymizer: Any
) -> Path:
    from mrct.io import write_volume

    target = str(dst) + "/" if fmt is OutputFormat.DICOM else dst
    return write_volume(
        volume,
        target,
        overwrite=overwrite,
        series_description=series_description(to),
        derivation_description=derivation,
        anonymizer=anonymizer,
    )


def translate_file(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    to: Modality,
    translator: Any = None,
    model: str | Path | None = None,
    fmt: OutputFormat | None = None,
    device: str | None = "auto",
    precision: str = "auto",
    crop: CropRequest | None = None,
    full_fov: bool = False,
    series: str | None = None,
    allow_gaps: bool = False,
    report: str | Path | None = None,
    preview: str | Path | None = None,
    overwrite: bool = False,
    force: bool = False,
    anonymize: bool = False,
) -> TranslateSummary:
    """Read ``src``, translate it to ``to``, write the result (and optionally a report and a preview).

    Outputs are checked before any work (an existing one is refused without ``overwrite``)
    and written under a temporary name, then renamed: all or none, as a failure or interruption
    once the image is in place takes back what was written. The report holds no patient names or
    IDs: paths, checksums, the model, the device and precision, the slab and the time each
    stage took (``timings_s``: load_model, read, localise, preprocess, forward, invert, write,
    preview, checksum, and ``other`` = total minus those, so the stages add up to ``total``).
    ``anonymize`` de-identifies a DICOM output (:mod:`mrct.io.anonymize`); ``allow_gaps``
    interpolates across missing DICOM slices instead of refusing the series.
    """
    from mrct.inference import Translator
    from mrct.io import read_volume, why_missing
    from mrct.io.dicom_scan import media_folder
    from mrct.io.discover import sha256_files

    src = media_folder(Path(src))  # a DICOMDIR: its folder, for the output's name and place too
    if not src.exists():  # said before the outputs are checked and the model loads (seconds)
        raise InputNotFoundError(why_missing(src), src)
    started = time.perf_counter()
    out_path, out_fmt = resolve_output(src, dst, to, fmt, series)
    if preview is not None and Path(preview).suffix.lower() != ".png":
        raise MrctError("a preview is written as PNG; give --preview a name ending in .png", preview)
    named = [(o, Path(p)) for o, p in (("-o", out_path), ("--report", report), ("--preview", preview)) if p]
    for n, (option, given) in enumerate(named):  # a report written over the image lost the image
        if other := next((o for o, q in named[:n] if q.resolve() == given.resolve()), None):
            raise MrctError(f"{option} names the same file as {other}; give each output its own name", given)
        check_apart(src, given)
        check_outside(src, given, option)
        if option != "-o" and given.is_dir():  # first: --overwrite would not help
            raise OutputExistsError(f"is a folder; {option} needs a file name", given)
        into_empty = option == "-o" and out_fmt is OutputFormat.DICOM and empty_folder(given)
        if occupied(given) and not overwrite and not into_empty:
            raise OutputExistsError("output exists; pass --overwrite to replace it", given)
        check_writable(given)  # before the slow part, so a failure leaves no output
    if out_fmt is OutputFormat.DICOM:
        from mrct.io.dicom_write import SERIES_FILES

        check_replaceable(out_path, SERIES_FILES)  # before the slow part; the writer checks again
        for option, path in (("--report", report), ("--preview", preview)):
            # A series folder holds the series alone (what PACS import and --overwrite expect).
            if path is not None and Path(path).resolve().is_relative_to(out_path.resolve()):
                raise MrctError(f"{option} inside the DICOM output folder; write it beside the folder", path)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    translator = translator or Translator.from_package(model, device, precision=precision)
    timings["load_model"] = time.perf_counter() - t
    what = f"{translator.package.name} on {translator.device} ({translator.precision})"
    log.info("model %s loaded in %.1f s", what, timings["load_model"])  # mrct -v: progress
    t = time.perf_counter()
    volume = read_volume(src, series=series, allow_gaps=allow_gaps)
    timings["read"] = time.perf_counter() - t
    spacing = " x ".join(f"{v:.3g}" for v in volume.spacing)
    log.info(
        "read %s: %s voxels of %s mm in %.1f s",
        src,
        " x ".join(map(str, volume.shape)),
        spacing,
        timings["read"],
    )
    check_grid_fits(volume, out_fmt, out_path)
    result = translator.translate(volume, to, crop, full_fov=full_fov, force=force)
    timings.update(result.timings)
    for slab in result.slabs:
        log.info("slab %.1f to %.1f mm (%s)", slab["superior_mm"], slab["inferior_mm"], slab["source"])
    took = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    log.info("translated to %s: %s", to.value, took)
    warn_outside_fov(src, result.slabs[0], to, report=report is not None)
    package = translator.package
    derivation = derivation_description(to, package)
    # What the output paths hold before anything is written: nothing, what --overwrite replaces,
    # or an empty folder made for the series.
    extra = [Path(p) for p in (report, preview) if p is not None]
    earlier = {p: identity(p) for p in extra} if overwrite else {}
    empty = out_fmt is OutputFormat.DICOM and empty_folder(out_path)
    made_for_it = folder_mode(out_path) if empty else None
    published: list[tuple[Path, Identity]] = []
    try:
        with recording() as published:
            t = time.perf_counter()
            anonymizer = Anonymizer() if anonymize else None  # a new key: new UIDs for this run
            written = _write(result.volume, out_path, out_fmt, to, overwrite, derivation, anonymizer)
            timings["write"] = time.perf_counter() - t
            if preview is not None:
                t = time.perf_counter()
                write_preview(volume, result.volume, Path(preview), overwrite, result.slabs)
                timings["preview"] = time.perf_counter() - t
            t = time.perf_counter()
            # The files the volume was read from: with --series, or beside other files, not the whole folder.
            files = sorted(Path(f) for f in volume.source.files) or [src]
            checksum = sha256_files(files)
            timings["checksum"] = time.perf_counter() - t
            stages = sum(timings.values())
            timings["total"] = time.perf_counter() - started
            timings["other"] = max(0.0, timings["total"] - stages)  # option checks, imports on first use
            content = {
                "mrct_version": __version__,
                "input": {
                    "path": str(src),
                    "sha256": checksum,
                    "files": len(files),
                    "series": series,
                    "allow_gaps": allow_gaps,
                },
                "output": {"path": str(written), "format": out_fmt.value, "modality": to.value},
                "anonymized": anonymize,
                "model": {"name": package.name, "path": str(package.path), "checksum": package.checksum},
                "device": str(translator.device),
                "precision": translator.precision,
                "threads": translator.threads_used(),
                "direction": f"{'MR' if to is Modality.CT else 'CT'} -> {to.value}",
                "slabs": result.slabs,
                "full_fov": full_fov,
                "timings_s": {k: round(v, 3) for k, v in timings.items()},
                "host": {"python": platform.python_version(), "machine": platform.machine()},
            }
            if report is not None:
                with atomic_file(Path(report), overwrite=overwrite, keep=[src]) as tmp:
                    tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        # All or none: a run stopped after its image was in place (Ctrl-C, SIGTERM, a full disk
        # for the report) exited non-zero yet left the image without its report, and the retry
        # of the same command was refused on it ("output exists").
        _take_back(published, earlier, out_path, made_for_it)
        raise
    return TranslateSummary(written, content)


def _take_back(
    published: list[tuple[Path, Identity]],
    earlier: dict[Path, Identity | None],
    out_path: Path,
    made_for_it: tuple[int, int] | None,
) -> None:
    """Withdraw what this run put in place and still stands there (nothing another process wrote
    at those paths meanwhile). ``earlier``: with --overwrite, the report and preview there before
    the run, which described the image it replaced; regular files only, never a device or FIFO.
    ``made_for_it``: the mode and group of the empty folder the series took the place of, made
    again (a folder made private for patient data stays private for the retry)."""
    mine = [path for path, held in published if identity(path) == held]
    for path in reversed(mine):
        _withdraw(path)
    if mine:
        for path, held in earlier.items():
            if held is not None and identity(path) == held and path.is_file() and not path.is_symlink():
                _withdraw(path)
    if made_for_it is not None and mine and not os.path.lexists(out_path):
        with contextlib.suppress(OSError):
            out_path.mkdir()
            give_folder_mode(out_path, made_for_it)


def _withdraw(path: Path) -> None:
    """Take an output this run put in place back out of view: first renamed to a hidden temporary
    name (one atomic step, so a second Ctrl-C meanwhile leaves no half-deleted series in view, only
    a leftover that later writes of the output remove), then deleted."""
    try:
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent))
        aside.rmdir()
        os.replace(path, aside)
    except OSError as err:
        log.error("%s: left in place after the failure, without its report (%s)", path, err.strerror)
        return
    remove_leftover(aside)


def check_grid_fits(volume: Any, fmt: OutputFormat, out_path: Path) -> None:
    """Refuse, before the slow part, an output format that cannot hold a sheared grid (a gantry
    tilt that dcm2niix kept as shear); the writers would refuse it only after translating."""
    from mrct.volume import ROUNDING_SHEAR, shear

    if fmt is not OutputFormat.NIFTI and shear(volume.affine) > ROUNDING_SHEAR:
        raise MrctError(
            f"the input's grid is sheared (a gantry tilt?) and {fmt.value.upper()} cannot store that; "
            "write NIfTI (.nii.gz), which keeps it",
            out_path,
        )


def warn_outside_fov(src: Path | str, slab: dict[str, Any], to: Modality, report: bool = True) -> None:
    """Say when part of the brow-to-jaw slab lies outside the scan (up to 20 mm is accepted):
    the model saw background there, so the synthetic image near that end is less reliable.
    ``report``: the run has a report to point to."""
    missing = float(slab.get("outside_fov_mm", 0.0))
    if missing > 0:
        log.warning(
            "%s: %.1f mm of the brow-to-jaw slab lies outside the scan; the synthetic %s near its "
            "edge is less reliable%s",
            src,
            missing,
            to.value,
            " (see outside_fov_mm in the report)" if report else "",
        )
    if slab.get("jaw_guessed_near_edge"):
        from mrct.preprocessing.slab_checks import JAW_GUESSED

        log.warning("%s: %s; check --preview, or give the levels with --crop-mm", src, JAW_GUESSED)


def write_preview(
    source: Any, translated: Any, path: Path, overwrite: bool, slabs: list[dict[str, Any]] | None = None
) -> Path:
    """The input's and the output's three planes, one above the other, through the same point.

    The point is the centre of the source's bounding box, moved to the middle of the first
    translated slab along S (``slabs`` from the translation), so the axial plane shows the
    translation: the bounding-box centre of a head MR often lies above the brow-to-jaw slab.
    """
    import numpy as np

    from mrct import qc

    centre = qc.world_centre(source)
    if slabs:
        centre[2] = (float(slabs[0]["superior_mm"]) + float(slabs[0]["inferior_mm"])) / 2
    px = qc.default_pixel_mm(source)
    top = qc.three_plane_mosaic(source, centre, px)
    bottom = qc.three_plane_mosaic(translated, centre, px)
    width = max(top.shape[1], bottom.shape[1])
    pad = [np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0))) for a in (top, bottom)]
    gap = np.full((4, width, 3), 64, dtype=np.uint8)
    picture = np.concatenate([pad[0], gap, pad[1]], axis=0)
    # Labelled as synthetic, as every image mrct writes is: a panel cut out of it still says so
    # in the file's Description, and the whole picture says which row is which.
    modality = translated.modality
    label = series_description(modality) if modality else f"mrct synthetic image – {NOT_FOR_DIAGNOSIS}"
    # Pillow's default font lacks the label's en dash.
    picture = qc.with_caption(picture, f"top: the scan; bottom: {label.replace('–', '-')}")
    return qc.write_png(picture, path, overwrite=overwrite, source=source.source.path, description=label)
