"""How the scripts in pipelines/ and benchmarks/ fail: one line on stderr, ``error: <file or
argument>: <problem>``, a non-zero exit code and no traceback, as mrct's own CLI does.

Only errors that describe bad input or a failed step become one line: mrct's typed errors (each
carries its exit code), a script's own :class:`ScriptError`, a file the system refused, and a
child command that failed (it has printed its own message already). Anything else keeps its
traceback: that is a bug in the script, and the traceback is what finds it.
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
from collections.abc import Callable
from typing import NoReturn

from mrct.errors import MrctError

USAGE = 2  # argparse's exit code for a bad argument; ScriptError uses it for the same kind of mistake


class ScriptError(Exception):
    """A script's own check failed: ``str(err)`` is the line shown after ``error: ``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def os_error_line(err: OSError) -> str:
    """``path: reason`` for an OSError (its str() puts the path last, quoted, after ``[Errno N]``)."""
    if err.filename is None:
        return str(err)
    where = str(err.filename) + (f" -> {err.filename2}" if err.filename2 is not None else "")
    return f"{where}: {err.strerror or err}"


def fail(message: str, exit_code: int = 1) -> NoReturn:
    """Print ``error: message`` (its first line only) on stderr and exit with ``exit_code``."""
    print(f"error: {message}".splitlines()[0], file=sys.stderr, flush=True)
    sys.exit(exit_code)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's ``main``; exit with what it returns (None: 0), or one line for a failure."""
    try:
        code = main()
    except (MrctError, ScriptError) as err:
        fail(str(err), err.exit_code)
    except subprocess.CalledProcessError as err:
        command = err.cmd if isinstance(err.cmd, str) else shlex.join(str(c) for c in err.cmd)
        fail(f"{command}: failed (exit {err.returncode})", 1)
    except OSError as err:
        # A path that is not there is an input not found (mrct's exit code 2); other refusals, 1.
        missing = isinstance(err, (FileNotFoundError, NotADirectoryError))
        fail(os_error_line(err), 2 if missing else 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    sys.exit(code or 0)


def _parse(kind: Callable[[str], float], text: str, ok: Callable[[float], bool], what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        value = math.nan  # refused below, with the same message
    if not ok(value):  # nan fails every comparison, so it is refused too
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1 (argparse names the option in its message)."""
    return int(_parse(int, text, lambda v: v >= 1, "positive integer"))


def non_negative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    return int(_parse(int, text, lambda v: v >= 0, "non-negative integer"))


def positive_float(text: str) -> float:
    """argparse ``type=``: a finite number > 0."""
    return _parse(float, text, lambda v: 0 < v < math.inf, "positive number")
