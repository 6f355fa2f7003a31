"""Arguments of the Python API, checked where they enter: the CLI's parser checks its options,
and Python callers get the same one-line :class:`ArgumentError` rather than a TypeError from
deep inside (or, for a path given as text where a list was expected, a walk of every folder
its letters name)."""

from __future__ import annotations

import errno
import numbers
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mrct.errors import MrctError
from mrct.io import OutputFormat
from mrct.volume import Modality


class ArgumentError(MrctError):
    """A Python API argument of the wrong type or value."""

    exit_code = 2  # as the CLI's own parser reports a malformed option


def shown(value: object) -> str:
    """A value for a one-line message: its repr when short, else its type (a Volume or an
    array given by mistake would print thousands of characters over many lines)."""
    text = repr(value)
    return text if len(text) <= 80 and "\n" not in text else f"a {type(value).__name__}"


def _is_path(value: object) -> bool:
    return isinstance(value, str | os.PathLike) and not isinstance(value, bytes)


# pathlib raises OSError (ENAMETOOLONG) wherever such a path is first looked at; the CLI's last
# resort (cli_options.fail) says the same.
NAME_TOO_LONG = "file name too long for the file system (most hold 255 bytes per name)"


def path_arg(value: object, what: str) -> Path:
    """A path given as text or a ``Path``; not empty (``Path("")`` is the current folder)."""
    if not _is_path(value):
        raise ArgumentError(f"{what} must be a path (str or pathlib.Path), got {shown(value)}")
    if os.fspath(value) == "":  # type: ignore[call-overload]
        raise ArgumentError(f"{what} is empty; give a file or folder name")
    path = Path(os.fspath(value))  # type: ignore[call-overload]
    try:  # the file system's own limit on a name's length (255 bytes on most; others differ)
        os.lstat(path)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise ArgumentError(NAME_TOO_LONG, path) from None
    return path


def without_trailing_slash(value: str | os.PathLike[str]) -> Path:
    """``out/`` (DICOM output's mark) as ``out``; the root stays the root (``/`` became ``.``,
    the folder the command ran in)."""
    text = os.fspath(value)
    return Path(text.rstrip("/\\") or text[:1])


def optional_path(value: object, what: str) -> Path | None:
    return None if value is None else path_arg(value, what)


def paths_arg(value: object, what: str) -> list[Path]:
    """One path, or several (a list or tuple): a lone string is one path, not its letters."""
    if _is_path(value):
        return [path_arg(value, what)]
    if isinstance(value, Iterable) and not isinstance(value, bytes | dict):
        return [path_arg(v, f"each of {what}") for v in value]
    raise ArgumentError(f"{what} must be a path or a list of paths, got {shown(value)}")


def int_arg(value: object, what: str, minimum: int | None = None) -> int:
    """A whole number (numpy's too, but not a bool or a float), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(f"{what} must be a whole number, got {shown(value)}")
    if minimum is not None and int(value) < minimum:
        raise ArgumentError(f"{what} must be at least {minimum}, got {int(value)}")
    return int(value)


def flags_arg(**flags: object) -> None:
    """Switches are True or False (numpy's too): ``full_fov="no"`` was taken as true."""
    for what, value in flags.items():
        if not isinstance(value, bool | np.bool_):
            raise ArgumentError(f"{what} must be True or False, got {shown(value)}")


def model_arg(value: object) -> None:
    """A package folder or a bundled model's name, or None for the default (not "", which
    silently meant the default)."""
    if value is not None:
        path_arg(value, "model")


def text_arg(value: object, what: str) -> str | None:
    """Text or None (a series UID, a name, a pattern)."""
    if value is not None and not isinstance(value, str):
        raise ArgumentError(f"{what} must be text (str), got {shown(value)}")
    return value


def modality_arg(value: object, what: str = "modality") -> Modality | None:
    """``"ct"``, ``"MR"``, a :class:`Modality` or None."""
    if value is None or isinstance(value, Modality):
        return value
    if isinstance(value, str) and value.upper() in Modality.__members__:
        return Modality(value.upper())
    raise ArgumentError(f"{what} must be 'ct', 'mr' or None, got {shown(value)}")


def target_arg(to: str | Modality) -> Modality:
    text = to.value if isinstance(to, Modality) else str(to)
    if text.upper() not in ("CT", "MR"):
        raise ArgumentError(f"to must be 'ct' or 'mr', got {shown(to)}")
    return Modality(text.upper())


def output_format_arg(name: str | OutputFormat | None) -> OutputFormat | None:
    if name is None or isinstance(name, OutputFormat):
        return name
    try:
        return OutputFormat(str(name).lower())
    except ValueError:
        choices = ", ".join(f.value for f in OutputFormat)
        raise ArgumentError(f"output_format must be one of {choices}, got {shown(name)}") from None
