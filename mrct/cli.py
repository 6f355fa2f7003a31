"""Command line: parse arguments, call one function of :mod:`mrct.api`, map errors.

Heavy libraries are imported inside the commands, so ``mrct --help`` and
``mrct --version`` start fast and never import torch. The scan commands are here (``batch`` in
:mod:`mrct.cli_batch`); the model development ones (train, export, evaluate, models) in
:mod:`mrct.cli_models`; shared option types in :mod:`mrct.cli_options`.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from mrct import __version__
from mrct.cli_batch import register as register_batch_command
from mrct.cli_models import register as register_model_commands
from mrct.cli_options import (
    AllowGapsOpt,
    AnonymizeOpt,
    CropMarkupsOpt,
    CropMmOpt,
    DeviceOpt,
    FormatChoice,
    MaxMemoryOpt,
    ModalityChoice,
    ModelOpt,
    NoCropOpt,
    PrecisionChoice,
    PrecisionOpt,
    PreviewOpt,
    ReportOpt,
    SeriesOpt,
    TranslateOutOpt,
    expand_prepare_args,
    fail,
    modality_of,
    nonempty_path,
    output_path,
    output_text,
)
from mrct.cli_signals import end_quietly_with, environment_problem, install_signal_handlers

app = typer.Typer(
    name="mrct",
    help="Translate head scans between MR and CT (3D CycleGAN). Synthetic images are not for diagnosis.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


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
    from mrct.log_privacy import quiet_libraries, redact_header_values

    redact_header_values(logging.root.handlers)  # pydicom quotes header values it finds invalid
    # Readers' notes on header oddities they tolerate (pydicom's value checks, nibabel's header
    # fixes) are not errors, and would break the one-line error rule; --verbose shows them.
    logging.captureWarnings(True)
    quiet_libraries(logging.root.handlers, logging.WARNING if verbose else logging.CRITICAL)


@app.command()
def info(
    path: Annotated[
        Path,
        typer.Argument(
            help="NIfTI/NRRD/MHA file, DICOM folder, file or zip.", parser=nonempty_path, metavar="SCAN"
        ),
    ],
    series: SeriesOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    allow_gaps: AllowGapsOpt = False,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Show modality, shape, spacing, orientation, value range, and the series in a folder."""
    from mrct import api

    try:
        result = api.info(path, series=series, allow_gaps=allow_gaps)
    except (Exception, KeyboardInterrupt) as err:
        fail(err)
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
    if result.modality:
        typer.echo(f"modality:    {result.modality} (from {result.modality_from})")
    else:
        typer.echo("modality:    unknown (the header names neither CT nor MR; nor do the intensities tell)")
    typer.echo(f"shape:       {' x '.join(map(str, result.shape))} ({result.dtype})")
    typer.echo(f"spacing mm:  {' x '.join(f'{s:.4g}' for s in result.spacing_mm or ())}")
    typer.echo(f"orientation: {result.orientation} (RAS axis codes)")
    lo, hi = result.value_range or (0.0, 0.0)
    typer.echo(f"range:       {lo:.6g} .. {hi:.6g}")


@app.command()
def convert(
    src: Annotated[
        Path,
        typer.Argument(help="Input image or DICOM folder/file/zip.", parser=nonempty_path, metavar="SRC"),
    ],
    dst: Annotated[
        str,
        typer.Argument(
            help="Output .nii.gz/.nii/.nrrd/.mha, or a folder/ for DICOM.", parser=output_text, metavar="DST"
        ),
    ],
    series: SeriesOpt = None,
    modality: Annotated[
        Optional[ModalityChoice],  # noqa: UP045
        typer.Option(
            "--modality",
            help="Set the modality of a DICOM output from NIfTI/NRRD/MHA (else judged from the "
            "intensities, with a warning).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    allow_gaps: AllowGapsOpt = False,
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
            modality=modality_of(modality),
            overwrite=overwrite,
            allow_gaps=allow_gaps,
            anonymize=anonymize,
        )
    except (Exception, KeyboardInterrupt) as err:
        fail(err)
    typer.echo(f"wrote {out}")


@app.command()
def preview(
    scan: Annotated[
        Path,
        typer.Argument(help="Input image or DICOM folder/file/zip.", parser=nonempty_path, metavar="SCAN"),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", metavar="FILE.png", help="PNG to write (must end in .png).", parser=output_path
        ),
    ],
    series: SeriesOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    allow_gaps: AllowGapsOpt = False,
) -> None:
    """Write a PNG of the axial, coronal and sagittal planes through the scan's centre."""
    from mrct import api

    try:
        out = api.preview(scan, output, series=series, overwrite=overwrite, allow_gaps=allow_gaps)
    except (Exception, KeyboardInterrupt) as err:
        fail(err)
    typer.echo(f"wrote {out}")


@app.command()
def locate(
    scan: Annotated[
        Path,
        typer.Argument(
            help="NIfTI/NRRD/MHA file, DICOM folder, file or zip.", parser=nonempty_path, metavar="SCAN"
        ),
    ],
    series: SeriesOpt = None,
    modality: Annotated[
        Optional[ModalityChoice],  # noqa: UP045
        typer.Option("--modality", help="Override the modality (else from the header or intensities)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    allow_gaps: AllowGapsOpt = False,
) -> None:
    """Find the brow-to-jaw slab: superior (brow) and inferior (jaw) levels in RAS mm along S."""
    from mrct import api

    try:
        result = api.locate(scan, series=series, modality=modality_of(modality), allow_gaps=allow_gaps)
    except (Exception, KeyboardInterrupt) as err:
        from mrct.errors import CropError
        from mrct.preprocessing.crop import OVERRIDES_HINT

        if isinstance(err, CropError):  # locate has no overrides; translate and prepare do
            hint = "translate, batch and prepare take " + OVERRIDES_HINT.removeprefix("pass ")
            err = CropError(err.message.replace(OVERRIDES_HINT, hint), err.path)
        fail(err)
    slab = result.slab
    missing = round(result.outside_fov_mm, 1)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "superior_mm": round(slab.superior_mm, 1),
                    "inferior_mm": round(slab.inferior_mm, 1),
                    "confidence": round(slab.confidence or 0.0, 2),
                    "outside_fov_mm": missing,
                }
            )
        )
        return
    typer.echo(f"superior (brow): S = {slab.superior_mm:.1f} mm (RAS)")
    typer.echo(f"inferior (jaw):  S = {slab.inferior_mm:.1f} mm (RAS)")
    typer.echo(f"slab height:     {slab.height_mm:.1f} mm")
    typer.echo(f"confidence:      {slab.confidence or 0.0:.2f}")
    typer.echo(f"outside scan:    {missing:.1f} mm")


@app.command()
def translate(
    scan: Annotated[
        Path,
        typer.Argument(
            help="NIfTI/NRRD/MHA file, DICOM folder, file or zip.", parser=nonempty_path, metavar="SCAN"
        ),
    ],
    to: Annotated[ModalityChoice, typer.Option("--to", help="The modality to synthesise.")],
    output: TranslateOutOpt = None,
    output_format: Annotated[
        Optional[FormatChoice],  # noqa: UP045
        typer.Option("--format", help="Output format (default: from -o, else the input's)."),
    ] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = PrecisionChoice.auto,
    series: SeriesOpt = None,
    allow_gaps: AllowGapsOpt = False,
    crop_mm: CropMmOpt = None,
    crop_markups: CropMarkupsOpt = None,
    no_crop: NoCropOpt = False,
    full_fov: Annotated[
        bool, typer.Option("--full-fov", help="Translate the whole field of view, slab by slab.")
    ] = False,
    report: ReportOpt = None,
    preview: PreviewOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Translate even if the input already is the target modality.")
    ] = False,
    anonymize: AnonymizeOpt = False,
    max_memory: MaxMemoryOpt = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing on success (warnings still go to stderr).")
    ] = False,
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
            allow_gaps=allow_gaps,
            report=report,
            preview=preview,
            overwrite=overwrite,
            force=force,
            anonymize=anonymize,
        )
    except (Exception, KeyboardInterrupt) as err:
        fail(err)
    end_quietly_with(0)  # every output is in place: a signal now cannot make the run a failure
    if not quiet:
        took = result.report["timings_s"]["total"]
        typer.echo(f"wrote {result.output} ({took:.1f} s)")


register_batch_command(app)
register_model_commands(app)


def main() -> None:
    install_signal_handlers()
    if problem := environment_problem(sys.argv[1:]):  # before any command: one line, as a bad option is
        typer.echo(f"error: {problem}", err=True)
        sys.exit(2)
    try:
        code = app(args=expand_prepare_args(sys.argv[1:]), standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C while click parsed, or as a command returned
        typer.echo("error: interrupted", err=True)
        code = 130
    except typer.TyperException as err:  # click's usage errors: a wrong option, a missing argument
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError":  # ``mrct``, ``mrct models``: the help, on stdout
            if ctx is not None:
                typer.echo(ctx.get_help())
            code = 0
        else:
            # One line, as every other mrct error (click draws a framed box of several).
            where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
            message = err.format_message().replace("Value error, ", "")  # type: ignore[attr-defined]
            # click lists choices one per line ("Choose from:\n\tct,\n\tmr"): joined into one.
            message = " ".join(part.strip() for part in message.splitlines()).rstrip(".")
            typer.echo(f"error: {message}{where}", err=True)
            code = int(getattr(err, "exit_code", 2))
    code = code if isinstance(code, int) else 0
    end_quietly_with(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
