"""Zip inputs: unpacked safely into a temporary folder, which is then read as a DICOM folder."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from mrct.errors import InputNotFoundError, MrctError, ReadError, TooLargeError
from mrct.io.dicom_scan import MAX_FILES
from mrct.io.limits import check_bytes, format_size

# Refuse archives that would expand past the memory limit or this (zip bombs), or that hold
# more files than a study could. Above 100 MB, a ratio over 200 is a bomb's, not DICOM's.
MAX_ZIP_BYTES = 8 * 1024**3
MAX_ZIP_RATIO = 200
# zip compression methods Python's zipfile cannot unpack, named for the message.
_ZIP_METHODS = {9: "Deflate64", 93: "Zstandard", 95: "XZ", 97: "WavPack", 98: "PPMd", 99: "AES encryption"}


def extract_zip(path: Path, dest: Path) -> Path:
    """Unpack a zip safely (no absolute or ``..`` members, bounded size) into ``dest``.

    Sizes come from the zip's directory, checked before anything is unpacked;
    a member holding more than its directory entry says stops there and fails
    its CRC check, so the directory cannot under-state the content.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not any(not i.is_dir() for i in infos):
                raise InputNotFoundError("zip is empty (no files in it)", path)
            if len(infos) > MAX_FILES:
                raise ReadError(f"zip holds {len(infos)} files, more than {MAX_FILES}", path)
            total = sum(i.file_size for i in infos)
            packed = max(1, sum(i.compress_size for i in infos))
            if total > MAX_ZIP_BYTES or (total / packed > MAX_ZIP_RATIO and total > 10**8):
                raise TooLargeError(
                    f"zip expands to {format_size(total)} from {format_size(packed)} (refused as a zip bomb)",
                    path,
                )
            check_bytes(total, "the zip's content", path)
            if any(i.flag_bits & 0x1 for i in infos):
                raise ReadError("the zip is encrypted (password-protected); unzip it first", path)
            methods = {i.compress_type for i in infos} - {
                zipfile.ZIP_STORED,
                zipfile.ZIP_DEFLATED,
                zipfile.ZIP_BZIP2,
                zipfile.ZIP_LZMA,
            }
            if methods:
                name = ", ".join(_ZIP_METHODS.get(m, f"method {m}") for m in sorted(methods))
                raise ReadError(
                    f"the zip uses compression Python cannot unpack ({name}); unzip it with another "
                    "tool, or re-zip it with standard deflate",
                    path,
                )
            root = dest.resolve()
            for info in infos:
                target = (dest / info.filename).resolve()
                if not target.is_relative_to(root):
                    raise ReadError(f"zip member escapes the archive: {info.filename!r}", path)
            zf.extractall(dest)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ReadError(f"not a readable zip file ({err})", path) from err
    except (NotImplementedError, RuntimeError) as err:  # unknown compression method, encryption
        raise ReadError(f"cannot unpack the zip file ({str(err).splitlines()[0][:160]})", path) from err
    except OSError as err:
        raise ReadError(f"cannot unpack the zip file: {err.strerror or err}", path) from err
    return dest


def is_zip(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".zip"


# Unpacked copies are named after the process, so one left by a killed process (the OOM killer,
# a SIGKILL from a job scheduler) can be told from one in use and removed by a later run.
_COPY = re.compile(r"^mrct-zip-(\d+)-[a-z0-9_]{8}$")
_STALE_S = 3600  # a copy lives while one series is read: minutes, never an hour


def _remove_stale_copies(tmp_root: Path) -> None:
    """Remove this user's unpacked copies whose process is gone and that are over an hour old
    (the age guards a process of another PID namespace sharing this folder). Never raises."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(tmp_root):
            match = _COPY.match(entry.name)
            if match is None or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError, OverflowError, ValueError):  # a PID no process has
                info = entry.stat(follow_symlinks=False)
                if info.st_uid != os.getuid() or time.time() - info.st_mtime < _STALE_S:
                    continue  # another user's (a shared /tmp), or in use
                try:
                    os.kill(int(match[1]), 0)
                    continue  # that process still runs
                except ProcessLookupError:
                    shutil.rmtree(entry.path, ignore_errors=True)


@contextlib.contextmanager
def unzipped(path: Path) -> Iterator[Path]:
    """The zip unpacked into a temporary folder for the block; errors raised reading it name
    the zip (and the member) instead of that folder."""
    _remove_stale_copies(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"mrct-zip-{os.getpid()}-") as tmp:
        folder = extract_zip(path, Path(tmp))
        try:
            yield folder
        except MrctError as err:
            raise _inside_zip(err, path, folder) from err


def _inside_zip(err: MrctError, zip_path: Path, tmp: Path) -> MrctError:
    """The same error, naming the zip (and the member) instead of the temporary folder."""
    inner = Path(err.path) if err.path else tmp
    # A file of the temporary copy, or a series named "the.zip/its/folder" by the reader.
    root = next((r for r in (tmp, zip_path) if inner.is_relative_to(r)), None)
    member = inner.relative_to(root).as_posix() if root is not None else ""
    message = f"{member}: {err.message}" if member not in ("", ".") else err.message
    return type(err)(message.replace(str(tmp), zip_path.name), zip_path)
