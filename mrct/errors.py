"""Typed errors raised by the library.

The CLI turns each into one line (``path: problem``) and an exit code; the
library itself never prints or exits.
"""

from __future__ import annotations

from pathlib import Path


class MrctError(Exception):
    """Base class. ``str(err)`` is the one-line message shown to users."""

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)

    def naming(self, path: str | Path | None) -> MrctError:
        """This error, naming ``path`` if it names no file yet: errors raised on a volume in
        memory (a slab that cannot be found) learn the input's path on their way to the user."""
        if self.path is None and path:
            self.path = str(path)
            self.args = (f"{self.path}: {self.message}",)
        return self


class StoppedBySignal(KeyboardInterrupt):
    """A second stop signal to ``mrct train``, which stops at once: it carries the signal, so that
    a second SIGTERM exits 143 as the first does, not 130 as Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class InputNotFoundError(MrctError):
    """The input path does not exist, or holds nothing readable."""

    exit_code = 2


class ReadError(MrctError):
    """The input exists but is not a readable image, or its content is unusable."""

    exit_code = 3


class GeometryError(ReadError):
    """The slices or header do not describe a consistent 3D grid."""


class TooLargeError(ReadError):
    """The input would need more memory than the limit allows (checked before reading voxels)."""


class SeriesSelectionError(ReadError):
    """A folder holds several series and none (or an unknown one) was chosen."""


class OutputExistsError(MrctError):
    """The output exists and ``overwrite`` was not given."""

    exit_code = 4


class WriteError(MrctError):
    """The output could not be written."""

    exit_code = 5


class OutputBusyError(MrctError):
    """Another mrct process is writing to the same output (a batch folder's lock is held)."""

    exit_code = 9


class ConfigError(MrctError):
    """A configuration file or value is invalid; the message names the key."""

    exit_code = 1


class ConfigValueError(ConfigError):
    """A config value that only shows as wrong once training starts (a patch the networks cannot
    take, fp16 without CUDA): the caller that knows the config file names it."""


class DivergedError(MrctError):
    """Training losses stopped being finite numbers; the message names the iteration."""

    exit_code = 1


class CropError(MrctError):
    """The brow-to-jaw slab cannot be found or is not usable; the message names the overrides."""

    exit_code = 6


class CropOptionError(CropError):
    """The crop options themselves are wrong (a malformed --crop-mm, several overrides at once):
    an option value mrct cannot use (exit 1), not a slab it could not find."""

    exit_code = 1


class MarkupsError(MrctError):
    """A 3D Slicer markups file is not what a crop override needs: a malformed override (1)."""

    exit_code = 1


class ModelError(MrctError):
    """A model package is missing, incomplete, altered or unsafe; the message names the file."""

    exit_code = 7


class ModalityError(MrctError):
    """The input already is the requested output modality (``--force`` overrides)."""

    exit_code = 8


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-blank line of a library's error message (or its type), for a one-line error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]


def on_one_line(text: str) -> str:
    """``text`` with its line breaks shown escaped (as ``ls -b`` shows them): mrct's messages are
    one line but for a break inside a file name, which would split the line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")
