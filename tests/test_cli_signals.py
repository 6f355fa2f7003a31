"""How the mrct command ends when a signal comes after its work is done."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# An object torn down during the interpreter's shutdown (as torch's and the modules' are, for up
# to a second after "wrote ..."), which receives the signal meanwhile.
SCRIPT = """
import os, signal, time
from mrct.cli_signals import end_quietly_with, install_signal_handlers
install_signal_handlers()
class TornDownLate:
    def __del__(self):
        os.kill(os.getpid(), SIG)
        time.sleep(0.3)
        os.write(1, b"shut down\\n")
late = TornDownLate()
end_quietly_with(CODE)
print("wrote out.nii.gz", flush=True)
raise SystemExit(CODE)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("code", [0, 1])
def test_a_signal_during_the_shutdown_after_the_work_keeps_the_commands_exit_code(
    sig: signal.Signals, code: int
) -> None:
    """From a CLI walk: a Ctrl-C up to a second after ``wrote ...`` killed mrct (exit 130, outputs
    in place; a re-run then said "output exists"), as the README says it does not: the shutdown
    puts handlers written in Python back to the default before it ends."""
    script = f"SIG, CODE = {int(sig)}, {code}\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stdout == "wrote out.nii.gz\nshut down\n" and proc.stderr == ""


def test_a_host_that_takes_its_handlers_back_keeps_them_at_exit() -> None:
    """From review: a program running mrct's main() in-process, then putting its own handlers
    back (as tests/test_prepare.py does), had SIGTERM ignored in its own exit callbacks."""
    script = """
import atexit, os, signal, sys, time
def own_cleanup():
    os.kill(os.getpid(), signal.SIGTERM)  # `timeout` stopping a hung clean-up
    time.sleep(1)
    os.write(1, b"still running\\n")
atexit.register(own_cleanup)
saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
from mrct.cli import main
sys.argv = ["mrct", "--version"]
try:
    main()
except SystemExit:
    pass
for s, h in saved.items():
    signal.signal(s, h)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM and "still running" not in proc.stdout, proc
