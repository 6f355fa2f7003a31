"""Write outputs so that a crash never leaves a half-written file under the final name.

Files are written to a hidden temporary name in the destination folder (same
file system, so the final ``os.replace`` is atomic) and renamed at the end.
An existing output is replaced only with ``overwrite=True``, and an existing folder only
when it holds nothing but what mrct writes there (``owned``): ``-o ~/data --overwrite``
must never delete a user's folder. No output may replace its input (:func:`check_apart`).
A write killed outright leaves its temporary behind; the next write of the same output
removes it once nobody has touched it for an hour (:func:`~mrct.io.leftovers.remove_stale`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mrct.errors import OutputExistsError, WriteError
from mrct.io.leftovers import TMP_MARK, compound_suffix, remove_leftover, remove_stale
from mrct.io.published import about_to_publish

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp (and safetensors, through one) create private (0600/0700) entries: give
    outputs the mode ``open()`` and ``mkdir()`` give, so the group can read them."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@dataclass(frozen=True)
class Owned:
    """What mrct writes into an output folder: files named like ``names``, and ``marker`` among
    them when set. ``--overwrite`` replaces a folder only when it holds nothing else."""

    names: re.Pattern[str]
    marker: str | None = None


# Files the desktop drops into any folder it shows; they do not make a folder the user's.
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# A folder output is renamed onto its path, which a mount point cannot be replaced by.
MOUNT_POINT = "is a mount point, which mrct cannot replace with its output folder; give a folder inside it"


def occupied(path: Path) -> bool:
    """Whether anything is at ``path``, a link that leads nowhere included: ``exists()`` is False
    for one, and writing replaced the user's link without ``--overwrite``. A name too long for
    the file system raises OSError (ENAMETOOLONG) as everywhere a path is looked at; the CLI
    reports it as a bad argument (exit 2), whichever check meets it first."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise
        raise WriteError(f"cannot write here ({err.strerror})", path) from None
    return True


def empty_folder(path: Path) -> bool:
    """Whether ``path`` is a real folder holding nothing (OS litter aside): where a folder output
    (a DICOM series, a model package) may go without ``--overwrite``, as into a folder the user
    made for it (``mkdir out && mrct translate ... -o out/``). The output takes its place, with
    its permissions and group (:func:`_take_place_of_empty`)."""
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        with os.scandir(path) as entries:
            return all(e.name in OS_LITTER and e.is_file(follow_symlinks=False) for e in entries)
    except OSError:
        return False


def check_output(path: Path, overwrite: bool, owned: Owned | None = None) -> None:
    """Fail early when ``path`` exists and must not be replaced, or cannot be created.

    ``owned``: ``path`` is an output folder; an existing one is replaced only when it holds
    nothing but what mrct writes there (see :func:`check_replaceable`).
    """
    if occupied(path) and not overwrite and not (owned is not None and empty_folder(path)):
        raise OutputExistsError("output exists; pass --overwrite to replace it", path)
    if owned is not None:
        check_replaceable(path, owned)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"cannot create output folder: {err.strerror}", parent) from err
    if not os.access(parent, os.W_OK):
        raise WriteError("output folder is not writable", parent)


@contextlib.contextmanager
def _creating(path: Path) -> Iterator[None]:
    """OSError while creating a temporary name beside ``path`` (/proc, a read-only mount, a full
    disk) as a WriteError naming ``path``."""
    try:
        yield
    except OSError as err:
        raise WriteError(f"cannot write here ({err.strerror})", path) from err


# A write that fails for these is the output's problem whatever file the error names.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


@contextlib.contextmanager
def _writing(path: Path, tmp: Path) -> Iterator[None]:
    """OSError while writing into ``tmp`` (a full disk, a quota) as a WriteError naming ``path``:
    it was "unexpected OSError: [Errno 28] No space left on device", exit 70, naming no file.
    An error naming another file (an input read on the way) is left as it is."""
    try:
        yield
    except OSError as err:
        name = "" if err.filename is None else os.fsdecode(err.filename)
        if err.errno in _WRITE_ERRNOS or not name or name.startswith(str(tmp)):
            # Drop the failed writer's frames now: nibabel's open gzip stream on the deleted
            # temporary file would otherwise keep the disk full while the error is reported.
            err.__traceback__ = None
            raise WriteError(f"cannot write ({err.strerror or err})", path) from None
        raise


def check_writable(path: Path) -> None:
    """Before any slow work: a file or folder can be created at ``path``. Tried for real (a
    probe file in the nearest existing folder, removed at once), as permissions do not tell:
    root may write anywhere by mode, yet not under /proc or on a read-only mount."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise WriteError(f"cannot create the output's folder: {folder} is not a folder", path)
    with _creating(path):
        fd, probe = tempfile.mkstemp(prefix=".mrct-probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def check_replaceable(path: Path, owned: Owned) -> None:
    """Refuse to replace a file, or a folder holding anything but what ``owned`` describes.

    ``--overwrite`` means "replace the output of an earlier run", not "empty this folder": a
    wrong ``-o`` (a data folder, a home folder, a file) must fail instead of deleting what is there.
    """
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise OutputExistsError(
            "is not a folder (a file or a link), and mrct writes a folder here; choose another output path",
            path,
        )
    # The new folder is renamed onto this one: that cannot replace a mount point (a container's
    # output volume), and would leave a shell started inside it in a deleted folder.
    if os.path.ismount(path):
        raise WriteError(MOUNT_POINT, path)
    with contextlib.suppress(OSError):
        here, where = os.path.realpath(os.getcwd()), os.path.realpath(path)
        if here == where or here.startswith(where + os.sep):
            raise OutputExistsError(
                "is the current folder (or holds it), which mrct would replace with its output folder; "
                "give another folder, or run mrct from elsewhere",
                path,
            )
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as err:
        raise WriteError(f"cannot list the output folder: {err.strerror}", path) from err
    kept = [e for e in entries if not (e.name in OS_LITTER and e.is_file() and not e.is_symlink())]
    for entry in kept:
        if entry.is_symlink() or not entry.is_file() or not owned.names.fullmatch(entry.name):
            raise OutputExistsError(
                f"is a folder holding {entry.name!r}, which mrct does not write there; "
                "--overwrite replaces only an earlier mrct output (choose another output path)",
                path,
            )
    if kept and owned.marker is not None and owned.marker not in {e.name for e in kept}:
        raise OutputExistsError(
            f"is a folder without {owned.marker}, so not an earlier mrct output; "
            "--overwrite does not replace it (choose another output path)",
            path,
        )


def check_apart(src: Path, dst: Path) -> None:
    """Refuse an output that is the input or a folder holding it: writing it would delete the input."""
    if not (src.exists() and dst.exists()):
        return
    source, target = src.resolve(), dst.resolve()
    if source == target:
        raise OutputExistsError("output would replace the input; choose another output path", dst)
    if target.is_dir() and source.is_relative_to(target):
        raise OutputExistsError(f"output folder holds the input {src}; choose another output path", dst)


def check_outside(src: Path, dst: Path, option: str = "-o") -> None:
    """Refuse an output inside an input folder (a DICOMDIR stands for its folder): inputs are
    never modified, and a file or series added to a DICOM folder joins its next read (one
    series became two)."""
    folder = src.parent if src.name.upper() == "DICOMDIR" and src.is_file() else src
    if folder.is_dir() and Path(os.path.realpath(dst)).is_relative_to(os.path.realpath(folder)):
        raise OutputExistsError(f"{option} inside the input folder {folder}; write it elsewhere", dst)


def utf8_bytes(text: str) -> bytes:
    """UTF-8 for a text file (a CSV) whose paths may hold bytes that are not UTF-8: a Latin-1
    folder name from an old CD, which Python names with surrogates. Those bytes are written as
    ``\\xNN``, as Python shows them, so the file stays valid UTF-8 for spreadsheets and pandas.
    (``json.dumps`` escapes such names itself.)"""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode("utf-8")


@contextlib.contextmanager
def atomic_file(path: Path, overwrite: bool = False, keep: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success. ``keep``: the
    paths the output was made from, never removed as leftovers (:func:`~mrct.io.leftovers.remove_stale`)."""
    path = Path(path)
    check_output(path, overwrite)
    suffix = compound_suffix(path)
    with _creating(path):
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name[: len(path.name) - len(suffix)]}{TMP_MARK}",
            suffix=suffix,
            dir=path.parent,
        )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _writing(path, tmp):
            yield tmp
        if occupied(path) and not overwrite:  # appeared while we were writing
            raise OutputExistsError("output appeared while writing; not replaced", path)
        with _creating(path):  # a read-only or immutable folder: one error naming the output
            publish_mode(tmp, directory=False)
            about_to_publish(tmp, path)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remove_stale(path, keep)


def _take_place_of_empty(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto the empty folder ``path``. The rename is atomic and fails if anything
    appeared in ``path`` meanwhile, which is then left as it is."""
    for name in OS_LITTER:  # what a file manager left; the rename needs the folder empty
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            (path / name).unlink()
    try:
        os.rename(tmp, path)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise OutputExistsError("output appeared while writing; not replaced", path) from None
        raise


def folder_mode(path: Path) -> tuple[int, int] | None:
    """The permissions and group of the real folder ``path`` (not a link to one), or None."""
    try:
        if path.is_symlink() or not path.is_dir():
            return None
        made = path.stat()
    except OSError:
        return None
    return stat.S_IMODE(made.st_mode), made.st_gid


def give_folder_mode(folder: Path, mode: tuple[int, int]) -> None:
    """Give ``folder`` the permissions and group of :func:`folder_mode`; the group first, as
    changing it may clear the setgid bit."""
    with contextlib.suppress(OSError):  # another group: only its members or root may give it
        os.chown(folder, -1, mode[1])
    os.chmod(folder, mode[0])


def _mount_point_error(err: OSError, path: Path) -> WriteError:
    """EBUSY from renaming onto ``path``: a mount point that :func:`os.path.ismount` does not see
    (a bind mount within one file system)."""
    if err.errno == errno.EBUSY:
        return WriteError(MOUNT_POINT, path)
    return WriteError(f"cannot write here ({err.strerror})", path)


@contextlib.contextmanager
def atomic_dir(
    path: Path, owned: Owned, overwrite: bool = False, keep: Sequence[str | Path] = ()
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it onto ``path`` on success.

    With ``overwrite``, an existing folder is moved aside first and deleted only
    after the new one is in place, so an interruption never loses both. It must hold only
    what ``owned`` describes (what the caller writes there), or nothing is replaced.
    """
    path = Path(path)
    check_output(path, overwrite, owned)
    with _creating(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent))
    old: Path | None = None
    try:
        with _creating(path):
            # The permissions and group of the folder it replaces (an empty one made for the output,
            # or an earlier output), before anything is written in it: a folder made private for
            # patient data stays private, and with its setgid bit the files inside take its group.
            replaced = folder_mode(path)
            if replaced is not None:
                give_folder_mode(tmp, replaced)
        with _writing(path, tmp):
            yield tmp
        into_empty = empty_folder(path)
        if path.exists() and not into_empty:
            if not overwrite:
                raise OutputExistsError("output appeared while writing; not replaced", path)
            check_replaceable(path, owned)
            with _creating(path):  # a read-only or immutable folder: one error naming the output
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.mrct-old-", dir=path.parent))
                old.rmdir()
                os.replace(path, old)
        if replaced is None:
            with _creating(path):
                publish_mode(tmp, directory=True)
        try:
            about_to_publish(tmp, path)
            if into_empty:
                check_replaceable(path, owned)  # the current folder or a mount point by now
                _take_place_of_empty(tmp, path)
            else:
                os.replace(tmp, path)
        except OSError as err:  # a read-only or immutable folder: one error naming the output
            raise _mount_point_error(err, path) from err
        if old is not None:
            remove_leftover(old)  # a link to a folder: drops the link only
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists() and (old.exists() or old.is_symlink()):
            try:  # the new one could not be put in place: the old one goes back
                os.replace(old, path)
            except OSError:  # say where it is; the original error is the one to report
                log.error("%s: the earlier output could not be put back; it is in %s", path, old)
        raise
    remove_stale(path, keep)
