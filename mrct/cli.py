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


SeriesOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional on Python 3.11
    typer.Option("--series", help="SeriesInstanceUID to read when a folder holds several."),
]


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="NIfTI/NRRD/MHA file, DICOM folder, file or zip.")],
    series: SeriesOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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
) -> None:
    """Convert between NIfTI, NRRD, MHA and DICOM without translating."""
    from mrct import api

    try:
        out = api.convert(
            src, dst, series=series, modality=_modality(modality), overwrite=overwrite, allow_gaps=allow_gaps
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
