"""What a NRRD header names as its voxel data, checked before teem reads it.

A detached header (``.nhdr``, or a ``.nrrd`` with a ``data file:`` field) may name any path.
Named after a pipe, ``/dev/stdin`` or a device, teem blocked for good (``mrct batch`` then
could not stop, even on SIGTERM) or read ``/dev/zero`` as an all-zero volume. The NRRD format
(teem's "data file" field) has three forms: one file name; ``LIST [<subdim>]`` with the names
on the lines after the header; and ``<printf format> <min> <max> <step> [<subdim>]``.
"""

from __future__ import annotations

import re
from pathlib import Path

from mrct.errors import ReadError

HEADER_BYTES = 1 << 16  # a header is a few hundred bytes; attached voxels follow a blank line
LIST_LIMIT = 16 << 20  # a detached header's LIST of 100,000 names is about 2 MB
MAX_DATA_FILES = 100_000


def check_nrrd_data_files(path: Path) -> None:
    """Raise ReadError, naming ``path``, when the header names data that are not regular files."""
    try:
        with path.open("rb") as fh:
            head = fh.read(HEADER_BYTES)  # not the megabytes of an attached volume's voxels
            if re.search(rb"data\s?file\s*:\s*LIST", head, re.I):
                head += fh.read(LIST_LIMIT - len(head))
    except OSError:
        return  # the reader that follows names the problem
    text = head.decode("latin-1")
    lines = text.split("\n")
    header_end = next((n for n, line in enumerate(lines) if not line.strip()), len(lines))
    field = re.compile(r"\s*data\s?file\s*:(?!=)", re.I)  # not a "datafile:=..." key/value pair
    at = next((n for n, line in enumerate(lines[:header_end]) if field.match(line)), None)
    if at is None:
        return  # voxels attached to the header
    value = lines[at].split(":", 1)[1].strip()
    # "data file" is the header's last field: a LIST's names are the lines after it.
    for name in _named_files(value, lines[at + 1 : header_end], path):
        data = Path(name) if Path(name).is_absolute() else path.parent / name
        if not data.is_file():  # follows links; False for pipes, devices, folders and missing files
            what = "is missing" if not data.exists() else "is not a regular file (a pipe or device?)"
            raise ReadError(f"the data file {name!r} named by the header {what}", path)


def _named_files(value: str, after: list[str], path: Path) -> list[str]:
    words = value.split()
    if words and words[0] == "LIST":
        # The names follow the header, one per line (teem: the lines after "data file: LIST").
        return [line.strip() for line in after if line.strip()]
    if len(words) >= 4 and "%" in words[0]:
        try:
            low, high, step = (int(w) for w in words[1:4])
        except ValueError:
            raise ReadError(f"malformed NRRD data file field {value[:60]!r}", path) from None
        if step == 0 or (high - low) // step + 1 > MAX_DATA_FILES or (high - low) * step < 0:
            raise ReadError(f"malformed NRRD data file range {value[:60]!r}", path)
        try:
            return [words[0] % i for i in range(low, high + (1 if step > 0 else -1), step)]
        except (TypeError, ValueError):
            raise ReadError(f"malformed NRRD data file format {words[0][:40]!r}", path) from None
    return [value] if value else []
