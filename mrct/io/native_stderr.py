"""What C decoders print on the process's stderr while pydicom decodes pixel data.

GDCM's copy of libjpeg writes its warnings and errors there itself ("Corrupt JPEG data: premature
end of data segment"), above mrct's own one-line error. :func:`caught` takes the process's stderr
for the decode; :func:`decoder_lines` tells libjpeg's lines from whatever else was written
meanwhile (stderr is the whole process's: a batch's progress bar, another thread's log line),
which :func:`echo` prints after all, so nothing but the decoder's lines is held back.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

# libjpeg's own messages (jerror.h), as GDCM's copy prints them.
LIBJPEG_LINE = re.compile(
    r"Corrupt JPEG data|Premature end of JPEG file|Unsupported marker type|Invalid JPEG file structure"
    r"|Not a JPEG file|Bogus (marker|Huffman)|Huffman table",
    re.IGNORECASE,
)
# What libjpeg says of a stream that ends early or holds garbage (its warnings JWRN_HIT_MARKER,
# JWRN_JPEG_EOF, JWRN_HUFF_BAD_CODE, JWRN_MUST_RESYNC): it decodes on, with grey where the data
# ran out. Not its "extraneous bytes before marker", which DICOM's even-length padding causes.
DAMAGED_STREAM = re.compile(
    r"premature end of (data segment|JPEG file)|bad Huffman code|instead of RST", re.IGNORECASE
)
# The process has one stderr: one capture at a time (batch decodes in several threads).
_ONE_AT_A_TIME = threading.Lock()
# While a capture runs, the descriptor that holds the real stderr (the process's, like fd 2 itself).
_SAVED: int | None = None


@contextlib.contextmanager
def caught(into: list[str]) -> Iterator[None]:
    """Take the process's stderr (file descriptor 2) for the block; what was written to it goes
    into ``into`` afterwards, whether the block raised or not. Without a temporary file or a usable
    stderr, nothing is taken: the decoder prints where it would have, and :func:`decode` cannot
    tell a damaged stream that a decoder filled in (see the README's DICOM input section)."""
    global _SAVED
    with _ONE_AT_A_TIME, contextlib.ExitStack() as stack:
        try:
            sink = stack.enter_context(tempfile.TemporaryFile())
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no temporary folder, no stderr, or a closed one
            saved = -1
        if saved < 0:
            yield  # outside the handler: the decoder's exceptions keep their own chain
            return
        os.dup2(sink.fileno(), 2)
        _SAVED = saved
        try:
            yield
        finally:
            _SAVED = None
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            into.append(sink.read().decode(errors="replace"))


def real_stderr() -> int:
    """The file descriptor of the process's stderr as it was before any capture: a signal handler
    writes its last line there, which a capture under way would otherwise swallow."""
    return _SAVED if _SAVED is not None else 2


def decoder_lines(text: str) -> tuple[list[str], str]:
    """libjpeg's lines in ``text`` (stripped), and the rest as it was written. A progress bar's
    "\r" update has no line break: what comes before libjpeg's words on a line is the rest's."""
    said: list[str] = []
    rest: list[str] = []
    for line in text.splitlines(keepends=True):
        found = LIBJPEG_LINE.search(line)
        if found is None:
            rest.append(line)
        else:
            rest.append(line[: found.start()])
            said.append(line[found.start() :].strip())
    return said, "".join(rest)


def echo(text: str) -> None:
    """Print caught text after all; a closed or broken stderr is no reason to fail a decode."""
    if text:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(text)
            sys.stderr.flush()
