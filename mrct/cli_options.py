"""What the command modules share: choices, option types, the one-line error exit, and the
expansion of ``prepare --mr a b`` into one flag per path.

Nothing here imports torch (``mrct --help`` must start fast).
"""

from __future__ import annotations

import errno
import os
import signal
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer


class ModalityChoice(str, Enum):
    ct = "ct"
    mr = "mr"


def fail(err: BaseException) -> NoReturn:
    """One line on stderr, no traceback, and the error's exit code."""
    from mrct.errors import MrctError, on_one_line

    if isinstance(err, MrctError):
        typer.echo(f"error: {on_one_line(str(err))}", err=True)
        raise typer.Exit(err.exit_code)
    if isinstance(err, KeyboardInterrupt):
        signum = getattr(err, "signum", signal.SIGINT)  # mrct.errors.StoppedBySignal
        how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        typer.echo(f"error: {how}", err=True)
        raise typer.Exit(128 + signum)
    if isinstance(err, OSError) and err.errno == errno.ENAMETOOLONG and err.filename is not None:
        # A name made from the input's (scan_synthetic_ct.nii.gz), or an option's, past 255 bytes:
        # pathlib raises it from exists(), wherever a path is first looked at.
        name = on_one_line(os.fsdecode(err.filename))
        from mrct.api_args import NAME_TOO_LONG

        typer.echo(f"error: {name}: {NAME_TOO_LONG}", err=True)
        raise typer.Exit(2)
    typer.echo(f"error: unexpected {type(err).__name__}: {err}".splitlines()[0], err=True)
    raise typer.Exit(70)


def nonempty_text(text: str) -> str:
    """A path or name kept as text (``-o out/`` means DICOM; ``--model`` takes a name too). An
    empty one (an unset shell variable) is refused: ``--model "$MODEL"`` with MODEL unset used
    the bundled model without a word."""
    if text == "":
        raise typer.BadParameter("is empty (an unset shell variable?); give a file or folder name")
    return text


def nonempty_path(text: str) -> Path:
    """A path argument or option, refused when empty: as a Path it was the current folder, so
    ``mrct batch "$IN" -o "$OUT"`` with IN unset translated the folder it ran in."""
    return Path(nonempty_text(text))


def output_text(text: str) -> str:
    """An output file or folder, kept as text (a trailing "/" means DICOM). "-" is refused rather
    than taken as a file named "-": by the usual convention it asks for standard output, which
    mrct does not write to."""
    if text == "-":
        raise typer.BadParameter("'-' (standard output) is not supported; give a file or folder name")
    return nonempty_text(text)


def output_path(text: str) -> Path:
    """An output file or folder option (see :func:`output_text`)."""
    return Path(output_text(text))


def count(n: int, noun: str) -> str:
    """``count(1, "scan")`` -> "1 scan", ``count(3, "scan")`` -> "3 scans" (regular plurals only)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def modality_of(choice: ModalityChoice | None):  # type: ignore[no-untyped-def]
    from mrct.volume import Modality

    return None if choice is None else Modality(choice.value.upper())


def _max_memory(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    from mrct.io.limits import set_max_memory

    try:
        set_max_memory(value)  # process-wide, so reader threads see it; None restores the default
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    # For this command only: an app that runs commands in its own process (tests, a notebook)
    # kept the limit for everything that followed.
    ctx.call_on_close(lambda: set_max_memory(None))
    source = ctx.get_parameter_source(param.name) if param.name else None
    if getattr(source, "name", None) == "ENVIRONMENT":  # by name: typer vendors its own click
        # Taken from MRCT_MAX_MEMORY: the default limit reads it too, and its messages then name
        # the variable the user set rather than an option they did not give.
        set_max_memory(None)
    return value


MaxMemoryOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        envvar="MRCT_MAX_MEMORY",
        callback=_max_memory,
        help="Refuse inputs whose voxels need more memory than this, e.g. 8G "
        "(default: a quarter of the machine's memory).",
    ),
]
SeriesOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional on Python 3.11
    typer.Option("--series", metavar="UID", help="SeriesInstanceUID to read when a folder holds several."),
]


AllowGapsOpt = Annotated[
    bool,
    typer.Option(
        "--allow-gaps",
        help="Interpolate across missing DICOM slices instead of refusing the series.",
    ),
]
AnonymizeOpt = Annotated[
    bool,
    typer.Option(
        "--anonymize",
        help="De-identify DICOM outputs (DICOM PS3.15 Basic Profile: no patient identity, new UIDs). "
        "Without it, DICOM outputs keep the source's patient and study.",
    ),
]


class FormatChoice(str, Enum):
    nifti = "nifti"
    dicom = "dicom"
    nrrd = "nrrd"
    mha = "mha"


CropMmOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--crop-mm",
        metavar="SUP,INF",
        help="Slab levels SUP,INF in RAS mm along S, instead of the automatic slab.",
    ),
]
CropMarkupsOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--crop-markups",
        metavar="FILE.mrk.json",
        help="3D Slicer .mrk.json with the brow and jaw points.",
        parser=nonempty_path,
    ),
]
NoCropOpt = Annotated[bool, typer.Option("--no-crop", help="Use the whole field of view as one slab.")]
ModelOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--model",
        metavar="NAME|DIR",
        help="Model package folder or bundled model name (default: the bundled one).",
        parser=nonempty_text,
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")]


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


TranslateOutOpt = Annotated[
    Optional[str],  # noqa: UP045 - text: a trailing "/" means DICOM
    typer.Option(
        "--output",
        "-o",
        metavar="PATH",
        help="Output file, or folder/ for DICOM (default: beside the input).",
        parser=output_text,
    ),
]
ReportOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--report",
        metavar="FILE.json",
        help="Write a JSON run report (no patient names).",
        parser=output_path,
    ),
]
PreviewOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--preview", metavar="FILE.png", help="Write a PNG of the input and the output.", parser=output_path
    ),
]
