"""Errors a user can cause (bad option, missing file, unknown name).

The command line turns a :class:`UserError` into one line on stderr and exit code 2; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: reported as one line, exit code 2, no traceback."""
