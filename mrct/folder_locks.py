"""Lock files that keep two runs of a command out of one folder (``mrct prepare``, ``mrct
train``, and the locks of ``mrct batch`` in :mod:`mrct.batch_folder`).

A run holds an ``fcntl.flock`` on a file in the folder for as long as it runs and writes its pid,
host and start time there, so that a refused run can name it. The kernel releases a flock when
its process dies, however it dies, so a killed run never blocks the next one; lock files are left
in place (deleting one would let two runs lock different files of the same name).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from mrct.errors import OutputBusyError, WriteError
from mrct.jsontext import parse_json

log = logging.getLogger(__name__)


def holder(path: Path) -> str:
    """Who holds the lock at ``path`` exclusively, from what it wrote there ("" if unknown)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        info = parse_json(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    return ""


def flock_file(path: Path, exclusive: bool) -> IO[str] | None:
    """The open lock file, locked; None when another process holds a conflicting lock."""
    import fcntl

    try:
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run
    except OSError as err:  # a read-only folder or disk
        raise WriteError(f"cannot create the lock file: {err.strerror}", path) from err
    try:
        fcntl.flock(fh, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    except OSError as err:  # a file system without locks (some FUSE mounts): run, but say so
        log.warning("%s: cannot lock (%s); a second run here would not be refused", path, err.strerror)
        return fh
    # Say who holds it exclusively, for the message of a refused run; a shared holder erases what
    # an earlier, killed exclusive holder wrote.
    fh.seek(0)
    fh.truncate()
    if exclusive:
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )
            + "\n"
        )
    fh.flush()
    return fh


@contextlib.contextmanager
def folder_lock(out: Path, name: str, what: str) -> Iterator[None]:
    """Hold the lock file ``out/name`` for one run of ``what`` (``mrct prepare``); raise
    OutputBusyError, naming the holder, when another run holds it. ``out`` must exist."""
    fh = flock_file(out / name, exclusive=True)
    if fh is None:
        who = holder(out / name)
        raise OutputBusyError(
            f"in use by another {what} ({who}); wait for it to end or use another folder", out
        )
    try:
        yield
    finally:
        release(fh)


def release(fh: IO[str]) -> None:
    """Let go of a lock file taken by :func:`flock_file`."""
    with contextlib.suppress(OSError):
        fh.truncate(0)  # a holder that has ended names nobody
    fh.close()  # releases the lock
