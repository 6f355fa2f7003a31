"""Model development commands: ``prepare``, ``train``, ``export``, ``evaluate``, ``models list|info``.

Registered on the main app by :func:`register` (called from :mod:`mrct.cli`); like every
command, they import heavy libraries inside, so ``mrct --help`` never imports torch.
"""

from __future__ import annotations

import json
import signal
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mrct.cli_options import DeviceOpt, count, fail, nonempty_path, output_path


def prepare(
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", metavar="DIR", help="Folder for the prepared training set.", parser=output_path
        ),
    ],
    mr: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(
            "--mr",
            metavar="PATH",
            help="MR scans: files, DICOM folders, or folders of scans (several allowed).",
            parser=nonempty_path,
        ),
    ] = None,
    ct: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(
            "--ct",
            metavar="PATH",
            help="CT scans: files, DICOM folders, or folders of scans (several allowed).",
            parser=nonempty_path,
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", metavar="N", min=1, help="Scans prepared in parallel.")
    ] = 1,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the 70/30 train/test split.")] = 0,
    hold_out_from: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--hold-out-from",
            metavar="PATTERN",
            help="Draw the test split only from scan ids matching this pattern (e.g. 'IXI*'); "
            "the others always train.",
        ),
    ] = None,
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--config",
            metavar="FILE.yaml",
            help="YAML config; its preprocessing: section is used.",
            parser=nonempty_path,
        ),
    ] = None,
    crop_mm: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--crop-mm", metavar="SUP,INF", help="Slab levels SUP,INF in RAS mm along S for every scan."
        ),
    ] = None,
    crop_markups: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--crop-markups",
            metavar="FILE.mrk.json",
            help="3D Slicer .mrk.json with the brow and jaw points.",
            parser=nonempty_path,
        ),
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
            hold_out_from=hold_out_from,
            progress=not quiet,
        )
    except (Exception, KeyboardInterrupt) as err:
        fail(err)
    counts = result.counts
    earlier = f"; {result.skipped} from an earlier run" if result.skipped else ""
    typer.echo(
        f"prepared {count(result.ready, 'scan')} (mr {counts['mr'].ready}, ct {counts['ct'].ready}"
        f"{earlier}), {result.failed} failed; manifest {result.manifest}"
    )
    if result.failed:
        typer.echo(
            f"error: {count(result.failed, 'scan')} failed; "
            f'their errors are in {result.manifest} (status "failed")',
            err=True,
        )
        raise typer.Exit(1)


def train(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            metavar="FILE.yaml",
            help="Training config (YAML), e.g. configs/cpu_small.yaml.",
            parser=nonempty_path,
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data", metavar="DIR", help="A training set built by mrct prepare.", parser=nonempty_path
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Run folder: checkpoints, logs, previews.",
            parser=output_path,
        ),
    ],
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
        typer.Option(
            "--until", metavar="N", min=1, help="Stop at this iteration (the schedule stays the config's)."
        ),
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
    except (Exception, KeyboardInterrupt) as err:
        fail(err)
    if not result.main:
        return  # under torchrun, the main process reports
    where = f"; checkpoint {result.checkpoint}" if result.checkpoint else ""
    if result.interrupted:
        how = "terminated (SIGTERM)" if result.stop_signal == signal.SIGTERM else "interrupted"
        typer.echo(f"error: {how} at iteration {result.iteration}{where}; continue with --resume", err=True)
        raise typer.Exit(128 + result.stop_signal)  # 130 for Ctrl-C, 143 for SIGTERM, as elsewhere
    typer.echo(f"trained to iteration {result.iteration}{where}")


def export(
    run_dir: Annotated[
        Path,
        typer.Argument(help="A run folder written by mrct train.", parser=nonempty_path, metavar="RUN_DIR"),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Model package folder, e.g. models/NAME.",
            parser=output_path,
        ),
    ],
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--name", metavar="NAME", help="Model name (default: the output folder's name)."),
    ] = None,
    checkpoint: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--checkpoint",
            metavar="NAME",
            help="A checkpoint folder name, e.g. iter_0002000 (default, or latest: the newest).",
        ),
    ] = None,
    license: Annotated[
        str, typer.Option("--license", metavar="TEXT", help="Licence of the weights, for the model card.")
    ] = "unspecified",
    description: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--description",
            metavar="TEXT",
            help="Opening text of the model card: the training data and their licences, limitations.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing package.")] = False,
) -> None:
    """Package a run's generators (safetensors + model.json + model card) for mrct translate."""
    from mrct import api

    try:
        out = api.export(
            run_dir,
            output,
            name=name,
            checkpoint=checkpoint,
            license=license,
            description=description,
            overwrite=overwrite,
        )
    except (Exception, KeyboardInterrupt) as err:
        fail(err)
    typer.echo(f"wrote {out}")


class MetricChoice(str, Enum):
    ct = "ct"
    mnist_l2 = "mnist-l2"


def evaluate(
    pred: Annotated[
        Path,
        typer.Argument(
            help="Predicted volume, or a folder (matched by file name).", parser=nonempty_path, metavar="PRED"
        ),
    ],
    gt: Annotated[
        Path,
        typer.Argument(
            help="Ground-truth volume, or a folder of them.", parser=nonempty_path, metavar="TRUTH"
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", metavar="FILE.csv", help="Per-case results (CSV).", parser=output_path
        ),
    ],
    mask: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--mask",
            metavar="PATH",
            help="Mask volume for every case, or a folder of them (voxels > 0 count).",
            parser=nonempty_path,
        ),
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
    except (Exception, KeyboardInterrupt) as err:
        fail(err)
    typer.echo(result.table())
    typer.echo(f"wrote {result.csv} ({count(len(result.rows), 'case')})")


models_app = typer.Typer(help="List and inspect model packages.", no_args_is_help=True, rich_markup_mode=None)
ModelsDirOpt = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option(
        "--dir",
        metavar="DIR",
        help="Folder of model packages (default: the repository's models/); repeatable.",
        parser=nonempty_path,
    ),
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
    except (Exception, KeyboardInterrupt) as err:
        fail(err)
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
    name_or_dir: Annotated[
        str, typer.Argument(help="Package folder, or a package name in models/.", metavar="NAME|DIR")
    ],
    search_dir: ModelsDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a package's manifest summary and verify every checksum (exit code 7 if any fails)."""
    from mrct import api

    try:
        info = api.model_info(name_or_dir, search_dir)
    except (Exception, KeyboardInterrupt) as err:
        fail(err)
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
    typer.echo(
        f"verified:     ok, {info.files_verified} weight files match model.json (size and sha256) "
        "and load into its architecture"
    )


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for command in (prepare, train, export, evaluate):
        app.command()(command)
    app.add_typer(models_app, name="models")
