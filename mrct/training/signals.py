"""Signals during training: the first Ctrl-C (or SIGTERM) asks the trainer to stop after the
current iteration and save a checkpoint; data-loader workers leave signals to the main process."""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import Any

import torch

from mrct.cli_signals import SAME_REQUEST_S
from mrct.errors import StoppedBySignal

log = logging.getLogger(__name__)


def worker_init(_: int) -> None:
    """In each data-loader worker: one thread, and stop signals left to the main process."""
    torch.set_num_threads(1)  # workers read and augment; the cores belong to the model
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


class StopFlag:
    """Turns the first SIGINT/SIGTERM into a request to stop after this iteration."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = signal.SIGINT  # which one: mrct train exits 128 + it, as the shell reports
        self._old: dict[int, Any] = {}
        self._first = 0.0  # when the first signal was handled

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:  # a second signal stops at once (exit 130 or 143, as the signal says)
            if time.monotonic() - self._first < SAME_REQUEST_S:  # GNU timeout sends it twice
                return
            raise StoppedBySignal(signum)
        self.requested, self._first = True, time.monotonic()
        self.signum = signal.Signals(signum)
        again = " (Ctrl-C again to abort)" if signum == signal.SIGINT else ""
        log.warning("stopping: saving a checkpoint after this iteration%s", again)

    def __enter__(self) -> StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
