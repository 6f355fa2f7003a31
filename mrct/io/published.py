"""What a command has put in place: the outputs its atomic writers renamed onto their final names.

``mrct translate`` writes an image, then a preview and a report; stopped in between (Ctrl-C,
SIGTERM, a full disk), it takes back exactly what it put in place, and nothing another process
wrote at those paths meanwhile. The writers note the identity (device, inode) of a temporary just
before renaming it, which the rename keeps: a path holding that identity afterwards holds this
command's output. The log is a context variable, set only inside :func:`recording`; a writer
outside one (``mrct batch``'s threads, a library caller) notes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

Identity = tuple[int, int]

_LOG: ContextVar[list[tuple[Path, Identity]] | None] = ContextVar("mrct_published", default=None)


def identity(path: Path) -> Identity | None:
    """The device and inode of what ``path`` names (a link itself, not its target), or None."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[Path, Identity]]]:
    """Within the block, every output an atomic writer renames into place is listed, in order."""
    log: list[tuple[Path, Identity]] = []
    token = _LOG.set(log)
    try:
        yield log
    finally:
        _LOG.reset(token)


def about_to_publish(tmp: Path, path: Path) -> None:
    """Called by the atomic writers just before ``tmp`` is renamed onto ``path``."""
    log = _LOG.get()
    if log is not None and (held := identity(tmp)) is not None:
        log.append((path, held))
