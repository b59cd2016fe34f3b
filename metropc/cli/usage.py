"""What every metropc command line shares: a refused value is one line.

:class:`UsageError` is a value a tool refuses (one line naming it, exit
code 2, before anything starts); :class:`Parser` is argparse's parser
reporting its own errors the same way; :func:`shown` and :func:`one_line`
keep such a line one line whatever the value holds; and the number types
say what is allowed.
"""

from __future__ import annotations

import argparse
import re

from .logsafe import escaped

__all__ = ["Leave", "Parser", "UsageError", "non_negative_float", "non_negative_int", "one_line",
           "positive_float", "positive_int", "shown"]


class UsageError(Exception):
    """A command-line value a tool refuses: one line, exit 2."""


class Leave(Exception):
    """A tool cannot go on, and has said why: exit with `code`."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def shown(value) -> str:
    """`value` as it goes into a one-line message: as given when it is plain
    printable text, else quoted as Python quotes it (``'a\\n'``), so that a
    newline or a terminal escape in a command-line value neither splits the
    message nor acts on the terminal, and an empty value is seen (``''``)."""
    text = str(value)
    if text and text.isprintable() and text.strip() == text and "'" not in text:
        return text
    return repr(text)


def one_line(text) -> str:
    """`text` (a library's message, say) on one line: line breaks become
    spaces and other control characters escapes, for the same reasons as
    :func:`shown`."""
    return escaped(re.sub(r"\s*[\r\n]+\s*", " ", str(text)))


class Parser(argparse.ArgumentParser):
    """argparse's parser; an error is one line, not the usage block."""

    def error(self, message):
        # One line, not the usage block: the user sees what is wrong at once.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, minimum, what):
    """An argparse type: a `kind` of at least `minimum`, finite; `what` says
    what is allowed in the message."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"wants {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, "at least 1")
non_negative_int = _number(int, 0, "0 or more")
non_negative_float = _number(float, 0, "0 or more")
#: (A positive float far below this, such as 5e-324, is a typo, and adding it
#: to a clock changes nothing: so the message says the minimum.)
positive_float = _number(float, 1e-9, "a positive number of at least 1e-09")
