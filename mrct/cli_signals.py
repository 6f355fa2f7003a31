"""How the ``mrct`` command ends on a signal, and what it checks in its environment first.

Kept apart from :mod:`mrct.cli` (which is about the commands) and light to import: ``mrct --help``
imports it and must stay fast.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import time


def _unwind_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM (``kill``, ``timeout``, a batch scheduler) by default ends Python at once, leaving
    a half-written output's hidden temporary files behind; unwind like Ctrl-C instead, so they
    are removed, and exit with the shell's code for it (143), saying why in one line."""
    _stop_at_once_from_now()
    _say(b"error: terminated (SIGTERM); unfinished outputs are removed\n")
    raise SystemExit(128 + signum)


def _interrupt(_signum: int, _frame: object) -> None:
    """The first Ctrl-C unwinds (KeyboardInterrupt), so that outputs being written are finished
    or removed and manifests record what was done; that can take a few seconds. A second one
    meanwhile stops at once: raised again inside that clean-up, it aborted the process in native
    threads (SIGABRT, a core dump). Outputs are renamed into place whole, so none is half written,
    and the next run removes the temporary files."""
    _stop_at_once_from_now()
    raise KeyboardInterrupt


# A second signal this soon after the first is the same request: GNU ``timeout`` sends its signal
# to mrct and again to mrct's process group, which stopped a batch without its clean-up (1 run in
# 8 left rows "pending") when the first had been handled in between.
SAME_REQUEST_S = 1.0


def _stop_at_once_from_now() -> None:
    """A second signal, either one, during the clean-up of the first: raised inside it, the clean-up
    stopped half-way and printed a second error line."""
    first = time.monotonic()

    def _stop_at_once(signum: int, _frame: object) -> None:
        if time.monotonic() - first < SAME_REQUEST_S:
            return
        _say(b"error: interrupted again; stopped at once (the next run removes temporary files)\n")
        os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) not in (signal.SIG_IGN, None):
            signal.signal(sig, _stop_at_once)


def _say(line: bytes) -> None:
    """Write on the real stderr, even while a DICOM decode holds file descriptor 2 (nothing is
    imported here: without the module loaded, no decode holds it)."""
    capture = sys.modules.get("mrct.io.native_stderr")
    os.write(capture.real_stderr() if capture is not None else 2, _end_progress_bars() + line)


def _end_progress_bars() -> bytes:
    """A line break when a progress bar is on screen: the signal's line was glued to the bar
    (``40%|####  | 2/5 [00:09<00:13]error: terminated``). The bars then stop drawing: closed
    while the process unwinds, they were drawn again below the line, which must stay last."""
    std = sys.modules.get("tqdm.std")
    # Shown bars: a disabled one is not listed, but one this function disabled stays listed.
    bars = [b for b in getattr(std.tqdm, "_instances", ()) if not b.disable] if std is not None else []
    for bar in bars:
        bar.disable = True
    return b"\n" if bars else b""


def install_signal_handlers() -> None:
    """Ctrl-C and SIGTERM unwind (see :func:`_interrupt`, :func:`_unwind_on_sigterm`). A signal
    the caller ignores stays ignored; mrct train's stop flag takes both over while it runs."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _unwind_on_sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)


def end_quietly_with(code: int) -> None:
    """Once a command's work is done, a signal ends the process at once with the command's exit
    code, and from the interpreter's exit callbacks on it is ignored: raised during the shutdown
    (torch's exit callbacks), Ctrl-C printed a traceback ("Exception ignored in atexit callback")
    and the run still exited 0."""

    def _end(_signum: int, _frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or None
                stream.flush()
        os._exit(code)

    ours = [
        s
        for s in (signal.SIGINT, signal.SIGTERM)
        if getattr(signal.getsignal(s), "__module__", None) == __name__
    ]
    # Only where mrct's own handlers are: a program running the commands in-process (a test
    # runner, an embedding application) keeps its own, or would be ended with os._exit.
    for sig in ours:
        signal.signal(sig, _end)

    def _ignore_from_now() -> None:
        # The interpreter's shutdown puts a handler written in Python back to the default, which
        # killed the process (exit 130 after "wrote ...") while torch and the modules were torn
        # down, up to a second; an ignored signal stays ignored. Registered last, run first.
        for sig in ours:
            if signal.getsignal(sig) is _end:  # a host that took its own back keeps it
                signal.signal(sig, signal.SIG_IGN)

    if ours:
        atexit.register(_ignore_from_now)


def environment_problem(args: list[str]) -> str | None:
    """What is wrong with mrct's environment variables for the command line ``args``, or None.
    ``MRCT_MAX_MEMORY`` is read by every command (and by prepare's workers); a bad value failed
    differently in each, and in prepare once per scan. Help and version need no limit, and
    ``--max-memory`` replaces the variable."""
    from mrct.errors import MrctError
    from mrct.io.limits import environment_limit

    if {a.split("=", 1)[0] for a in args} & {"--help", "-h", "--version", "--max-memory"}:
        return None
    try:
        environment_limit()
    except MrctError as err:
        return str(err)
    return None
