"""Command line: parse arguments, call one function of :mod:`mrct.api`, map errors.

Heavy libraries are imported inside the commands, so ``mrct --help`` and
``mrct --version`` start fast and never import torch.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from mrct import __version__

app = typer.Typer(
    name="mrct",
    help="Translate head scans between MR and CT (3D CycleGAN). Synthetic images are not for diagnosis.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class ModalityChoice(str, Enum):
    ct = "ct"
    mr = "mr"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mrct {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    from mrct.log_privacy import redact_header_values

    redact_header_values(logging.root.handlers)  # pydicom quotes header values it finds invalid
    # Readers' notes on header oddities they tolerate (pydicom's value checks, nibabel's header
    # fixes) are not errors, and would break the one-line error rule; --verbose shows them.
    logging.captureWarnings(True)
    for name in ("py.warnings", "pydicom", "nibabel"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)


def _fail(err: BaseException) -> NoReturn:
    """One line on stderr, no traceback, and the error's exit code."""
    from mrct.errors import MrctError

    if isinstance(err, MrctError):
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code)
    if isinstance(err, KeyboardInterrupt):
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130)
    typer.echo(f"error: unexpected {type(err).__name__}: {err}".splitlines()[0], err=True)
    raise typer.Exit(70)


def _modality(choice: ModalityChoice | None):  # type: ignore[no-untyped-def]
    from mrct.volume import Modality

    return None if choice is None else Modality(choice.value.upper())


def _max_memory(value: str | None) -> str | None:
    from mrct.io.limits import set_max_memory

    try:
        set_max_memory(value)  # process-wide, so reader threads see it; None restores the default
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    return value


MaxMemoryOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--max-memory",
        envvar="MRCT_MAX_MEMORY",
        callback=_max_memory,
        help="Refuse inputs whose voxels need more memory than this, e.g. 8G "
        "(default: a quarter of the machine's memory).",
    ),
]
SeriesOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional on Python 3.11
    typer.Option("--series", help="SeriesInstanceUID to read when a folder holds several."),
]


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="NIfTI/NRRD/MHA file, DICOM folder, file or zip.")],
    series: SeriesOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Show modality, shape, spacing, orientation, value range, and the series in a folder."""
    from mrct import api

    try:
        result = api.info(path, series=series)
    except Exception as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2))
        return
    typer.echo(f"path:        {result.path}")
    typer.echo(f"format:      {result.format}")
    if result.series:
        typer.echo(f"series:      {len(result.series)}")
        for s in result.series:
            typer.echo(f"  {s.uid}  {s.modality or '?'}  {s.slices} slices  {s.description!r}")
    if result.shape is None:
        typer.echo("(several series: pass --series UID to describe one)")
        return
    typer.echo(f"modality:    {result.modality or 'unknown'} (from {result.modality_from})")
    typer.echo(f"shape:       {' x '.join(map(str, result.shape))} ({result.dtype})")
    typer.echo(f"spacing mm:  {' x '.join(f'{s:.4g}' for s in result.spacing_mm or ())}")
    typer.echo(f"orientation: {result.orientation} (RAS axis codes)")
    lo, hi = result.value_range or (0.0, 0.0)
    typer.echo(f"range:       {lo:.6g} .. {hi:.6g}")


AnonymizeOpt = Annotated[
    bool,
    typer.Option(
        "--anonymize",
        help="De-identify DICOM outputs (DICOM PS3.15 Basic Profile: no patient identity, new UIDs). "
        "Without it, DICOM outputs keep the source's patient and study.",
    ),
]


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Input image or DICOM folder/file/zip.")],
    dst: Annotated[str, typer.Argument(help="Output .nii.gz/.nii/.nrrd/.mha, or a folder/ for DICOM.")],
    series: SeriesOpt = None,
    modality: Annotated[
        Optional[ModalityChoice],  # noqa: UP045
        typer.Option("--modality", help="Set the modality (needed for DICOM output from NIfTI)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    allow_gaps: Annotated[
        bool, typer.Option("--allow-gaps", help="Interpolate across missing DICOM slices.")
    ] = False,
    anonymize: AnonymizeOpt = False,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Convert between NIfTI, NRRD, MHA and DICOM without translating."""
    from mrct import api

    try:
        out = api.convert(
            src,
            dst,
            series=series,
            modality=_modality(modality),
            overwrite=overwrite,
            allow_gaps=allow_gaps,
            anonymize=anonymize,
        )
    except Exception as err:
        _fail(err)
    typer.echo(f"wrote {out}")


@app.command()
def preview(
    scan: Annotated[Path, typer.Argument(help="Input image or DICOM folder/file/zip.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write (must end in .png).")],
    series: SeriesOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
) -> None:
    """Write a PNG of the axial, coronal and sagittal planes through the scan's centre."""
    from mrct import api

    try:
        out = api.preview(scan, output, series=series, overwrite=overwrite)
    except Exception as err:
        _fail(err)
    typer.echo(f"wrote {out}")


@app.command()
def locate(
    scan: Annotated[Path, typer.Argument(help="NIfTI/NRRD/MHA file, DICOM folder, file or zip.")],
    series: SeriesOpt = None,
    modality: Annotated[
        Optional[ModalityChoice],  # noqa: UP045
        typer.Option("--modality", help="Override the modality (else from the header or intensities)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Find the brow-to-jaw slab: superior (brow) and inferior (jaw) levels in RAS mm along S."""
    from mrct import api

    try:
        result = api.locate(scan, series=series, modality=_modality(modality))
    except Exception as err:
        _fail(err)
    slab = result.slab
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "superior_mm": round(slab.superior_mm, 1),
                    "inferior_mm": round(slab.inferior_mm, 1),
                    "confidence": round(slab.confidence or 0.0, 2),
                }
            )
        )
        return
    typer.echo(f"superior (brow): S = {slab.superior_mm:.1f} mm (RAS)")
    typer.echo(f"inferior (jaw):  S = {slab.inferior_mm:.1f} mm (RAS)")
    typer.echo(f"slab height:     {slab.height_mm:.1f} mm")
    typer.echo(f"confidence:      {slab.confidence or 0.0:.2f}")


@app.command()
def prepare(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the prepared training set.")],
    mr: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option("--mr", help="MR scans: files, DICOM folders, or folders of scans (several allowed)."),
    ] = None,
    ct: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option("--ct", help="CT scans: files, DICOM folders, or folders of scans (several allowed)."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Scans prepared in parallel.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the 70/30 train/test split.")] = 0,
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", help="YAML config; its preprocessing: section is used."),
    ] = None,
    crop_mm: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--crop-mm", help="Slab levels SUP,INF in RAS mm along S for every scan."),
    ] = None,
    crop_markups: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--crop-markups", help="3D Slicer .mrk.json with the brow and jaw points."),
    ] = None,
    no_crop: Annotated[bool, typer.Option("--no-crop", help="Use the whole field of view.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Preprocess MR and CT scans into a training set (arrays, records, QC pictures, manifest).

    Re-running with the same output resumes: finished scans are skipped, failed ones retried.
    """
    from mrct import api

    try:
        result = api.prepare(
            mr or [],
            ct or [],
            output,
            config=config,
            crop_mm=crop_mm,
            crop_markups=crop_markups,
            no_crop=no_crop,
            workers=workers,
            seed=seed,
            progress=not quiet,
        )
    except Exception as err:
        _fail(err)
    counts = result.counts
    earlier = f"; {result.skipped} from an earlier run" if result.skipped else ""
    typer.echo(
        f"prepared {result.ready} scans (mr {counts['mr'].ready}, ct {counts['ct'].ready}{earlier}), "
        f"{result.failed} failed; manifest {result.manifest}"
    )
    if result.failed:
        typer.echo(
            f'error: {result.failed} scans failed; their errors are in {result.manifest} (status "failed")',
            err=True,
        )
        raise typer.Exit(1)


class FormatChoice(str, Enum):
    nifti = "nifti"
    dicom = "dicom"
    nrrd = "nrrd"
    mha = "mha"


CropMmOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--crop-mm", help="Slab levels SUP,INF in RAS mm along S, instead of the automatic slab."),
]
CropMarkupsOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--crop-markups", help="3D Slicer .mrk.json with the brow and jaw points."),
]
NoCropOpt = Annotated[bool, typer.Option("--no-crop", help="Use the whole field of view as one slab.")]
ModelOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--model", help="Model package folder or bundled model name (default: the bundled one)."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


class PrecisionChoice(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


PrecisionOpt = Annotated[
    PrecisionChoice,
    typer.Option(
        "--precision",
        help="Generator arithmetic: auto (bf16 on CPUs with native bf16, else fp32), fp32 or bf16.",
    ),
]


@app.command()
def translate(
    scan: Annotated[Path, typer.Argument(help="NIfTI/NRRD/MHA file, DICOM folder, file or zip.")],
    to: Annotated[ModalityChoice, typer.Option("--to", help="The modality to synthesise.")],
    output: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--output", "-o", help="Output file, or folder/ for DICOM (default: beside the input)."),
    ] = None,
    output_format: Annotated[
        Optional[FormatChoice],  # noqa: UP045
        typer.Option("--format", help="Output format (default: from -o, else the input's)."),
    ] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = PrecisionChoice.auto,
    series: SeriesOpt = None,
    crop_mm: CropMmOpt = None,
    crop_markups: CropMarkupsOpt = None,
    no_crop: NoCropOpt = False,
    full_fov: Annotated[
        bool, typer.Option("--full-fov", help="Translate the whole field of view, slab by slab.")
    ] = False,
    report: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--report", help="Write a JSON run report (no patient names)."),
    ] = None,
    preview: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--preview", help="Write a PNG of the input and the output."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Translate even if the input already is the target modality.")
    ] = False,
    anonymize: AnonymizeOpt = False,
    max_memory: MaxMemoryOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Translate a head scan MR -> CT (--to ct) or CT -> MR (--to mr) onto the scan's own grid.

    Synthetic images are not for diagnosis.
    """
    from mrct import api

    try:
        result = api.translate_file(
            scan,
            output,
            to=to.value,
            model=model,
            output_format=None if output_format is None else output_format.value,
            device=device,
            precision=precision.value,
            crop_mm=crop_mm,
            crop_markups=crop_markups,
            no_crop=no_crop,
            full_fov=full_fov,
            series=series,
            report=report,
            preview=preview,
            overwrite=overwrite,
            force=force,
            anonymize=anonymize,
        )
    except Exception as err:
        _fail(err)
    if not quiet:
        took = result.report["timings_s"]["total"]
        typer.echo(f"wrote {result.output} ({took:.1f} s)")


@app.command()
def train(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Training config (YAML), e.g. configs/cpu_small.yaml.")
    ],
    data: Annotated[Path, typer.Option("--data", help="A training set built by mrct prepare.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder: checkpoints, logs, previews.")],
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from the newest checkpoint (a new run if there is none)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Discard a run already in the folder.")
    ] = False,
    device: DeviceOpt = "auto",
    until: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--until", min=1, help="Stop at this iteration (the schedule stays the config's)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train the 3D CycleGAN (or a 2D baseline). Under torchrun, one process per GPU.

    Ctrl-C saves a checkpoint and stops; --resume continues exactly where it stopped.
    """
    from mrct import api

    try:
        result = api.train(
            config,
            data,
            output,
            resume=resume,
            overwrite=overwrite,
            device=device,
            until=until,
            progress=not quiet,
        )
    except Exception as err:
        _fail(err)
    if not result.main:
        return  # under torchrun, the main process reports
    where = f"; checkpoint {result.checkpoint}" if result.checkpoint else ""
    if result.interrupted:
        typer.echo(
            f"error: interrupted at iteration {result.iteration}{where}; continue with --resume", err=True
        )
        raise typer.Exit(130)
    typer.echo(f"trained to iteration {result.iteration}{where}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by mrct train.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model package folder, e.g. models/NAME.")],
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--name", help="Model name (default: the output folder's name)."),
    ] = None,
    checkpoint: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--checkpoint", help="A checkpoint folder name, e.g. iter_0002000 (default: the newest)."
        ),
    ] = None,
    license: Annotated[
        str, typer.Option("--license", help="Licence of the weights, for the model card.")
    ] = "unspecified",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing package.")] = False,
) -> None:
    """Package a run's generators (safetensors + model.json + model card) for mrct translate."""
    from mrct import api

    try:
        out = api.export(
            run_dir, output, name=name, checkpoint=checkpoint, license=license, overwrite=overwrite
        )
    except Exception as err:
        _fail(err)
    typer.echo(f"wrote {out}")


class MetricChoice(str, Enum):
    ct = "ct"
    mnist_l2 = "mnist-l2"


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted volume, or a folder (matched by file name).")],
    gt: Annotated[Path, typer.Argument(help="Ground-truth volume, or a folder of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Per-case results (CSV).")],
    mask: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--mask", help="Mask volume for every case, or a folder of them (voxels > 0 count)."),
    ] = None,
    metric: Annotated[
        MetricChoice,
        typer.Option(
            "--metric",
            help="ct: SynthRAD2023 MAE/PSNR/SSIM in HU; mnist-l2: Volumetric MNIST L2 ([-1, 1] .npy). "
            "Both add slice flicker.",
        ),
    ] = MetricChoice.ct,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing CSV.")] = False,
) -> None:
    """Compare translations with ground truth: a CSV row per case, and a summary table."""
    from mrct import api

    try:
        result = api.evaluate(pred, gt, output, mask=mask, metric=metric.value, overwrite=overwrite)
    except Exception as err:
        _fail(err)
    typer.echo(result.table())
    typer.echo(f"wrote {result.csv} ({len(result.rows)} cases)")


@app.command()
def batch(
    in_dir: Annotated[Path, typer.Argument(help="Folder searched recursively for DICOM series and scans.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (mirrors IN_DIR's folders).")],
    to: Annotated[ModalityChoice, typer.Option("--to", help="The modality to synthesise.")],
    output_format: Annotated[
        Optional[FormatChoice],  # noqa: UP045
        typer.Option("--format", help="Output format (default: each input's own)."),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Threads reading (and writing) around the model.")
    ] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo every series.")] = False,
    shard: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--shard", help="K/N: translate the K-th of N disjoint parts of the series list."),
    ] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = PrecisionChoice.auto,
    crop_mm: CropMmOpt = None,
    crop_markups: CropMarkupsOpt = None,
    no_crop: NoCropOpt = False,
    anonymize: AnonymizeOpt = False,
    max_memory: MaxMemoryOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Translate every MR (--to ct) or CT (--to mr) series under a folder; other series are skipped.

    Writes OUT/manifest.json and manifest.csv (one row per series). Re-running resumes: done
    series are kept, failed ones retried. Exit code 1 when any series failed.
    """
    from mrct import api

    try:
        result = api.batch(
            in_dir,
            output,
            to=to.value,
            output_format=None if output_format is None else output_format.value,
            workers=workers,
            overwrite=overwrite,
            shard=shard,
            model=model,
            device=device,
            precision=precision.value,
            crop_mm=crop_mm,
            crop_markups=crop_markups,
            no_crop=no_crop,
            progress=not quiet,
            anonymize=anonymize,
        )
    except Exception as err:
        _fail(err)
    done, skipped, failed = (result.count(s) for s in ("done", "skipped", "failed"))
    lead = "nothing left to do: " if not result.attempted else ""
    earlier = f" ({result.earlier} by an earlier run)" if result.earlier else ""
    typer.echo(f"{lead}{done} done{earlier}, {skipped} skipped, {failed} failed; manifest {result.manifest}")
    if failed:
        typer.echo(f'error: {failed} series failed; see {result.manifest} (status "failed")', err=True)
        raise typer.Exit(1)


models_app = typer.Typer(help="List and inspect model packages.", no_args_is_help=True)
app.add_typer(models_app, name="models")
ModelsDirOpt = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option("--dir", help="Folder of model packages (default: the repository's models/); repeatable."),
]


@models_app.command("list")
def models_list(
    search_dir: ModelsDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Name, directions, license, mrct version and path of every package (checksums not verified)."""
    from mrct import api

    try:
        found = api.list_models(search_dir)
    except Exception as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps([{**asdict(p), "path": str(p.path)} for p in found], indent=2))
        return
    if not found:
        from mrct.inference import REPO_MODELS

        typer.echo(f"no model packages in {', '.join(map(str, search_dir or [REPO_MODELS]))}")
        return
    rows = [("name", "directions", "license", "mrct", "path")]
    for p in found:
        directions = ",".join(d.replace("_to_", "->") for d in p.directions) or "-"
        first = (p.name, directions, p.license or "-", p.mrct_version or "-")
        rows.append((*first, f"{p.path}" + (f"  (unreadable: {p.problem})" if p.problem else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        typer.echo("  ".join([*(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)), r[4]]))


@models_app.command("info")
def models_info(
    name_or_dir: Annotated[str, typer.Argument(help="Package folder, or a package name in models/.")],
    search_dir: ModelsDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a package's manifest summary and verify every checksum (exit code 7 if any fails)."""
    from mrct import api

    try:
        info = api.model_info(name_or_dir, search_dir)
    except Exception as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(asdict(info), indent=2))
        return
    grid = info.grid
    typer.echo(f"name:         {info.name}")
    typer.echo(f"description:  {' '.join(info.description.split())}")
    typer.echo(f"path:         {info.path}")
    typer.echo(f"directions:   {', '.join(d.replace('_to_', ' -> ').upper() for d in info.directions)}")
    typer.echo(f"license:      {info.license}")
    note = f" (note: {info.version_note})" if info.version_note else ""
    typer.echo(f"mrct version: {info.mrct_version}{note}")
    typer.echo(f"created:      {info.created}")
    typer.echo(f"parameters:   {info.parameters:,} per generator")
    typer.echo(
        f"grid:         {grid.get('depth')} x {grid.get('height')} x {grid.get('width')}"
        f" at {grid.get('inplane_mm')} mm in plane"
    )
    typer.echo(f"checksum:     {info.checksum}")
    typer.echo(f"verified:     ok, {info.files_verified} weight files match model.json (size and sha256)")


# Options of `prepare` that take several paths: click options take one value each.
MULTI_PATH_OPTIONS = ("--mr", "--ct")


def expand_prepare_args(args: list[str]) -> list[str]:
    """For ``prepare`` only, give each path after ``--mr``/``--ct`` its own flag.

    ``prepare --mr a b --ct c`` -> ``prepare --mr a --mr b --ct c``: the paths run
    up to the next token starting with ``-``. Other commands are left alone.
    """
    command = next((n for n, a in enumerate(args) if not a.startswith("-")), None)
    if command is None or args[command] != "prepare":
        return list(args)
    out, flag, taken = list(args[: command + 1]), None, 0
    for token in args[command + 1 :]:
        if token.startswith("-"):
            if flag is not None and not taken:
                out.append(flag)  # no value: let click report it
            flag, taken = (token, 0) if token in MULTI_PATH_OPTIONS else (None, 0)
            if flag is None:
                out.append(token)
        elif flag is not None:
            out += [flag, token]
            taken += 1
        else:
            out.append(token)
    if flag is not None and not taken:
        out.append(flag)
    return out


def main() -> None:
    app(args=expand_prepare_args(sys.argv[1:]))


if __name__ == "__main__":
    main()
