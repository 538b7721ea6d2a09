"""Logging for journald: one line per event, level as a syslog prefix under systemd."""

from __future__ import annotations

import logging
import os
import sys

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                    logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    """`<6>fabd.hsms: tool ETCH01 selected` — journald reads the priority prefix, adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record).replace("\n", " | ")  # one line per event, even tracebacks
        return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{msg}"


def setup(level: str = "INFO") -> None:
    """Send logs to stderr: journald-friendly under systemd, timestamped on a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncua", "secsgem", "numba", "aiomqtt"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def stderr_is_journal() -> bool:
    """True when stderr itself is the journal stream systemd named in $JOURNAL_STREAM.

    systemd sets JOURNAL_STREAM when stdout *or* stderr goes to the journal (and children
    inherit it), so a StandardError=append:FILE drop-in or a shell started from a unit would
    otherwise get priority prefixes and no timestamps; systemd.exec(5) says to compare.
    """
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"
