"""Log lines that cannot take over the terminal they are printed on.

Error text often carries data from elsewhere: an exception message built
from a source's values, a view's ``ValueError`` with whatever it was given,
a stage's report.  Printed raw, an escape sequence in it clears the screen
or writes fake text, and a megabyte-long message becomes one megabyte-long
line.  The CLIs format their log lines with :class:`SafeFormatter`, which
escapes control characters (keeping newlines and tabs) and cuts a line to
MAX_LOG_CHARS.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["MAX_LOG_CHARS", "SafeFormatter", "escaped", "log_to_stderr", "terminal_safe"]

#: A log line (with its traceback, if any) is cut after this many characters.
MAX_LOG_CHARS = 10_000


def terminal_safe(text: str, limit: int = MAX_LOG_CHARS) -> str:
    """`text` with control characters escaped (``\\x1b`` for ESC; newlines
    and tabs kept) and cut to `limit` characters, saying how many more."""
    if len(text) > limit:
        text = f"{text[:limit]} ... [{len(text) - limit} more characters]"
    return escaped(text, keep="\n\t")


def escaped(text: str, keep: str = "") -> str:
    """`text` with every unprintable character but those in `keep` written
    as Python escapes it (``\\x1b``, ``\\n``): a terminal shows it, not obeys it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


class SafeFormatter(logging.Formatter):
    """A logging.Formatter whose lines are :func:`terminal_safe`."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record))


def log_to_stderr(level: int, fmt: str = "%(asctime)s %(name)s %(levelname)s: %(message)s",
                  datefmt: str | None = "%H:%M:%S") -> None:
    """``logging.basicConfig`` for a CLI: lines on stderr, made :func:`terminal_safe`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(fmt, datefmt=datefmt))
    logging.basicConfig(level=level, handlers=[handler])
