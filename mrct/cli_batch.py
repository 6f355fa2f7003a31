"""``mrct batch``: translate every matching series under a folder (kept apart from
:mod:`mrct.cli` to keep each module readable; nothing here imports torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mrct.cli_options import (
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
    fail,
    nonempty_path,
    output_path,
)


def batch(
    in_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder searched recursively for DICOM series and scans.",
            parser=nonempty_path,
            metavar="IN_DIR",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Output folder (mirrors IN_DIR's folders).",
            parser=output_path,
        ),
    ],
    to: Annotated[ModalityChoice, typer.Option("--to", help="The modality to synthesise.")],
    output_format: Annotated[
        Optional[FormatChoice],  # noqa: UP045
        typer.Option("--format", help="Output format (default: each input's own)."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", metavar="N", min=1, help="Threads reading (and writing) around the model."),
    ] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo every series.")] = False,
    shard: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--shard", metavar="K/N", help="K/N: translate the K-th of N disjoint parts of the series list."
        ),
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
    except KeyboardInterrupt:
        typer.echo(
            f"error: {output}: interrupted; finished series are kept and listed in its manifest, "
            "run the same command again to resume",
            err=True,
        )
        raise typer.Exit(130) from None
    except Exception as err:
        fail(err)
    done, skipped, failed = (result.count(s) for s in ("done", "skipped", "failed"))
    # A failure found from the headers alone (a slice cut short) is not attempted, but is not done;
    # a first run that skipped every series by its header (a folder of CTs) was not a re-run.
    lead = "nothing left to do: " if result.resumed and not result.attempted and not failed else ""
    earlier = f" ({result.earlier} by an earlier run)" if result.earlier else ""
    typer.echo(f"{lead}{done} done{earlier}, {skipped} skipped, {failed} failed; manifest {result.manifest}")
    if failed:
        typer.echo(f'error: {failed} series failed; see {result.manifest} (status "failed")', err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``mrct batch`` to ``app``."""
    app.command()(batch)
