"""How much memory one input may take, checked from its header before any voxel is read.

Every reader estimates the bytes an input's voxels will occupy (voxel count
times the larger of the stored sample size and 4 bytes, because mrct works in
float32) and refuses inputs above :func:`max_memory` with a
:class:`~mrct.errors.TooLargeError`. The same limit bounds what a gzip stream,
a deflated DICOM file or a zip may expand to, so a small hostile file cannot
exhaust memory or disk.

The default is a quarter of the machine's memory (or of the container's
cgroup limit, when lower), at least 1 GiB: translation holds a few working
copies of the volume besides the input itself. :func:`memory_limit` changes it
for a block; the CLI's ``--max-memory`` (environment variable
``MRCT_MAX_MEMORY``) sets it for one command. The setting is process-wide, so
that reader threads (``mrct batch``) see it too.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from mrct.errors import MrctError, TooLargeError

GIB = 1024**3
MIN_DEFAULT = 1 * GIB
FALLBACK_DEFAULT = 4 * GIB  # when the machine's memory cannot be found
DEFAULT_FRACTION = 0.25
# No header may claim more voxels than this, whatever the memory (2048^3, 8.6e9).
MAX_VOXELS = 2048**3
WORKING_ITEMSIZE = 4  # float32

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_override: int | None = None
_override_by = "--max-memory"  # what set it, for the messages: the CLI option or Python


def parse_size(text: str | int) -> int:
    """Bytes from ``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"2000000"`` (K, M, G, T are powers of 1024)."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
        if m is None:
            raise ValueError(f"not a size: {text!r} (use e.g. 8G, 512M or a number of bytes)")
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value <= 0:
        raise ValueError(f"a memory limit must be positive, got {text!r}")
    return value


def format_size(nbytes: float) -> str:
    """``1.5 GiB``, ``64.0 MiB``, ``512 B``."""
    for unit, size in (("TiB", 1024**4), ("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


@functools.cache  # fixed for the process; asked for on every file read
def system_memory() -> int | None:
    """Bytes of memory this process may use: physical memory, or a lower cgroup limit."""
    found: list[int] = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(ValueError, OSError):
            found.append(int(Path(cgroup).read_text().strip()))  # "max" (no limit) is skipped
    found = [f for f in found if 0 < f < 2**60]  # cgroup v1 writes a huge number for "no limit"
    return min(found) if found else None


ENV_VAR = "MRCT_MAX_MEMORY"


def environment_limit() -> int | None:
    """``MRCT_MAX_MEMORY`` in bytes, or None when unset; MrctError for a value that is no size."""
    if text := os.environ.get(ENV_VAR, "").strip():
        try:
            return parse_size(text)
        except ValueError as err:
            raise MrctError(f"{ENV_VAR}={text!r}: {err}") from None
    return None


def default_max_memory() -> int:
    """``MRCT_MAX_MEMORY`` when set (every command, and prepare's worker processes, read it; the
    commands with ``--max-memory`` only took it through that option), else a quarter of memory."""
    if (limit := environment_limit()) is not None:
        return limit
    total = system_memory()
    return FALLBACK_DEFAULT if total is None else max(MIN_DEFAULT, int(total * DEFAULT_FRACTION))


def max_memory() -> int:
    """The limit in force: the one set by :func:`memory_limit` / :func:`set_max_memory`, or the
    default; at least what :func:`own_data` allows in this thread."""
    limit = _override if _override is not None else default_max_memory()
    return max(limit, _own_data.get())


# Per thread (a context variable), unlike the limit itself: mrct batch reads users' scans in
# other threads while one of them loads mrct's own data.
_own_data: contextvars.ContextVar[int] = contextvars.ContextVar("mrct_own_data", default=0)


@contextlib.contextmanager
def own_data(nbytes: int) -> Iterator[None]:
    """Inside the block, in this thread only, accept inputs up to ``nbytes`` whatever the user's
    limit: for mrct's own data (its 5 MiB reference head), which ``MRCT_MAX_MEMORY=1K`` is not about."""
    token = _own_data.set(int(nbytes))
    try:
        yield
    finally:
        _own_data.reset(token)


def set_max_memory(limit: str | int | None) -> None:
    """Set the limit for the rest of the process (None: back to the default); the CLI's
    ``--max-memory``."""
    global _override, _override_by
    _override, _override_by = (None if limit is None else parse_size(limit)), "--max-memory"


def override_state() -> tuple[int | None, str]:
    """The limit set in this process (None: the default) and what set it, for a worker process
    to adopt with :func:`adopt_override`."""
    return _override, _override_by


def adopt_override(state: tuple[int | None, str]) -> None:
    global _override, _override_by
    _override, _override_by = state


@contextlib.contextmanager
def memory_limit(limit: str | int | None) -> Iterator[None]:
    """Use ``limit`` (bytes, or ``"8G"``) inside the block; None keeps the current one."""
    global _override, _override_by
    before = _override, _override_by
    if limit is not None:
        _override, _override_by = parse_size(limit), "mrct.io.limits.memory_limit"
    try:
        yield
    finally:
        _override, _override_by = before


# The commands that take --max-memory; the others read only the environment variable.
MAX_MEMORY_COMMANDS = ("info", "convert", "translate", "batch")


def limit_hint() -> str:
    """The end of a too-large message: the limit, and how to raise it, naming where the limit
    in force came from, so that a user of a command without ``--max-memory`` is not sent to it."""
    if _override is not None:
        how = _override_by
    elif environment_limit() is not None:
        how = ENV_VAR
    else:
        how = f"{ENV_VAR}, or --max-memory for {', '.join(MAX_MEMORY_COMMANDS)}"
    return f"the memory limit of {format_size(max_memory())} (raise it with {how})"


def check_voxels(shape: Sequence[int], itemsize: int, path: str | Path) -> None:
    """Refuse a header whose voxels would not fit: over :data:`MAX_VOXELS` or over the limit."""
    voxels = math.prod(int(d) for d in shape)
    dims = " x ".join(str(int(d)) for d in shape)
    if voxels > MAX_VOXELS:
        raise TooLargeError(f"the header claims {dims} voxels, more than mrct accepts (2048^3)", path)
    need = voxels * max(int(itemsize), WORKING_ITEMSIZE)
    if need > max_memory():
        raise TooLargeError(f"{dims} voxels need {format_size(need)}, above {limit_hint()}", path)


def check_bytes(nbytes: int, what: str, path: str | Path) -> None:
    """Refuse ``what`` (e.g. "the zip's content") when ``nbytes`` exceeds the limit."""
    if nbytes > max_memory():
        raise TooLargeError(f"{what} is {format_size(nbytes)}, above {limit_hint()}", path)
