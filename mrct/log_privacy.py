"""Keep patient data out of what the command line logs.

mrct's own messages name paths and UIDs, never header values. pydicom's do not: a header value
it finds invalid is quoted in its message (``Invalid value for VR DA: '1971-02-03'``), and that
value may be a patient's name, ID or birth date. pydicom sends each such message both to its
logger and as a Python warning (``pydicom.misc.warn_and_log``, its only way of warning), so
:func:`redact_header_values` silences the warnings and has the CLI's log handlers blank every
quoted text in records from pydicom. Importing this module does not import pydicom.
"""

from __future__ import annotations

import logging
import re
import warnings

QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
HIDDEN = "'…'"


class HeaderValueFilter(logging.Filter):
    """Rewrites records of the ``pydicom`` loggers (and pydicom's warnings, should they reach
    logging through ``logging.captureWarnings``) with every quoted text blanked."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "py.warnings" and "pydicom" in record.getMessage()
        if ours or record.name.split(".")[0] == "pydicom":
            record.msg, record.args = QUOTED.sub(HIDDEN, record.getMessage()), None
        return True


class LibraryNoiseFilter(logging.Filter):
    """Drops records below ``level`` from the readers' loggers (pydicom, nibabel) and from Python
    warnings. A filter on the CLI's handlers, because a logger's level does not hold: importing
    pydicom resets its logger to WARNING (``pydicom.config.debug(False)``), after which each
    tolerated header oddity printed a line, and a decoder failure a whole traceback."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = record.name == "py.warnings" or record.name.split(".")[0] in ("pydicom", "nibabel")
        return not noisy or record.levelno >= self.level


def quiet_libraries(handlers: list[logging.Handler], level: int) -> None:
    """Filter ``handlers`` with :class:`LibraryNoiseFilter` at ``level`` (replacing an earlier one)."""
    for handler in handlers:
        for old in [f for f in handler.filters if isinstance(f, LibraryNoiseFilter)]:
            handler.removeFilter(old)
        handler.addFilter(LibraryNoiseFilter(level))


def redact_header_values(handlers: list[logging.Handler]) -> None:
    """Filter ``handlers`` (the CLI's) with :class:`HeaderValueFilter`; drop pydicom's warnings,
    which repeat its log records unfiltered."""
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    for handler in handlers:
        if not any(isinstance(f, HeaderValueFilter) for f in handler.filters):
            handler.addFilter(HeaderValueFilter())
