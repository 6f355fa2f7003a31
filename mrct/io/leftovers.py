"""The temporaries of mrct's atomic writes, and the leftovers of killed ones.

:mod:`mrct.io.atomic` writes each output under a hidden name beside it
(``.scan.mrct-tmp-XXXXXXXX.nii.gz``) and renames it at the end. A writer killed outright
(SIGKILL, the OOM killer, a power cut) skips its clean-up, so the next write of the same output
removes what is left once nobody has touched it for an hour (:func:`remove_stale`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)
TMP_MARK = ".mrct-tmp-"
# What mrct.io.atomic names its temporary files and folders (tempfile's 8 random characters).
LEFTOVER = re.compile(r"^\..+\.mrct-(?:tmp|old)-[a-z0-9_]{8}(?:\..+)?$")
# A temporary of the same output untouched this long is a killed writer's (SIGKILL, the OOM
# killer, a power cut): a live one is written to within seconds and lives for minutes at most.
STALE_AFTER_S = 3600.0


def compound_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``; the last suffix otherwise."""
    name = path.name.lower()
    for multi in (".nii.gz", ".tar.gz"):
        if name.endswith(multi):
            return path.name[-len(multi) :]
    return path.suffix


def leftover_prefixes(path: Path) -> tuple[str, str]:
    """How the temporaries of ``path`` begin: atomic_file drops the suffix, atomic_dir keeps the
    whole name (``.scan.mrct-tmp-XXXXXXXX.nii.gz``, ``.scan_dicom.mrct-old-XXXXXXXX``)."""
    stem = path.name[: len(path.name) - len(compound_suffix(path))]
    return f".{stem}.mrct-", f".{path.name}.mrct-"


def leftovers_of(path: Path) -> list[Path]:
    """The temporary files and folders of ``path`` in its folder, whoever left them."""
    starts = leftover_prefixes(path)
    try:
        names = os.listdir(path.parent)
    except OSError:  # a folder not made yet holds nothing
        return []
    return [path.parent / n for n in sorted(names) if n.startswith(starts) and LEFTOVER.match(n)]


def remove_leftover(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale(path: Path, keep: Sequence[str | Path]) -> None:
    """After ``path`` is written: delete its temporaries that a killed earlier write left beside
    it (``mrct translate`` killed by the OOM killer left a hidden, half-written volume for good).
    Only those untouched for :data:`STALE_AFTER_S`, so a concurrent write of the same output
    keeps its own, and never one that is or holds a path in ``keep`` (the input: an earlier
    output moved aside by a killed overwrite may be what this command read). Best effort: the
    output is in place whatever happens here."""
    now = time.time()
    inputs = [os.path.realpath(k) for k in keep if k]
    for entry in leftovers_of(path):
        where = os.path.realpath(entry)
        if any(k == where or k.startswith(where + os.sep) for k in inputs):
            continue
        try:  # ctime: a rename sets it, and an earlier output moved aside keeps its old mtime
            if now - entry.lstat().st_ctime < STALE_AFTER_S:
                continue
            remove_leftover(entry)
        except OSError as err:  # another user's, in a shared folder: theirs to remove
            log.debug("%s: not removed (%s)", entry, err.strerror)
            continue
        log.debug("removed %s, left by an interrupted write", entry)
